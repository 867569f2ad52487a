"""--boot-timeout: visible default, recorded for --resume, handed to every boot, bounded by the build."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from localbuilder.cli import build_parser
from localbuilder.errors import UsageError
from localbuilder.guest.bootwatch import DEFAULT_BOOT_TIMEOUT
from localbuilder.invocation import Invocation
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.template import model
from tests.build.fakes import FakePlatform


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_help_shows_the_option_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--boot-timeout SECONDS" in text
    assert f"default: {DEFAULT_BOOT_TIMEOUT} s" in text and DEFAULT_BOOT_TIMEOUT == 1200


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "inf"])
def test_nonsense_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="--boot-timeout: .* is not a number of seconds"):
        build_parser().parse_args(["build", "x.json", "--boot-timeout", bad])


def test_recorded_for_resume_and_passed_to_child_builds() -> None:
    args = build_parser().parse_args(["build", "x.json", "--boot-timeout", "300"])
    inv = Invocation.from_args(args, Path("x.json"))
    assert inv.boot_timeout == 300
    assert inv.as_dict()["bootTimeout"] == 300
    assert Invocation.from_dict(inv.as_dict()) == inv
    argv = inv.to_argv()
    assert argv[argv.index("--boot-timeout") + 1] == "300"
    # --resume: the recorded value unless given again
    again = argparse.Namespace(**{**vars(build_parser().parse_args(["build"])), "boot_timeout": None})
    assert inv.merge(again, run_ref="r").boot_timeout == 300
    again.boot_timeout = 90.0
    assert inv.merge(again, run_ref="r").boot_timeout == 90
    # An invocation.json written before the option existed
    old = inv.as_dict()
    del old["bootTimeout"]
    assert Invocation.from_dict(old).boot_timeout is None


def _build(tmp_path: Path, **options: object) -> FakePlatform:
    tpl = model.Template(
        name="hello", api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        customize=(model.ShellCustomizer(name="s", inline=("true",)),),
        distribute=(model.VhdDistributor(run_output_name="out"),),
    )  # fmt: skip
    tmp_path.mkdir()
    platform = FakePlatform(tmp_path)
    (tmp_path / "t.json").write_text("{}")
    Build(tpl, tmp_path / "t.json", platform, BuildOptions(**options)).execute()  # type: ignore[arg-type]
    return platform


def test_every_boot_gets_the_boot_timeout_bounded_by_the_build(tmp_path: Path) -> None:
    platform = _build(tmp_path / "a", boot_timeout=90.0)
    assert [r.timeout for r in platform.requests] == [90.0]
    platform = _build(tmp_path / "b")
    assert 1190 < platform.requests[0].timeout <= DEFAULT_BOOT_TIMEOUT
    platform = _build(tmp_path / "c", boot_timeout=3600.0, timeout_seconds=300.0)
    assert platform.requests[0].timeout <= 300
