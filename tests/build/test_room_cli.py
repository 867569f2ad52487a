"""`localbuilder build` with an unusable --output-dir: exit 2 before any guest starts, nothing written.

Through the real CLI and catalog, with a small qcow2 (16 MiB of data) as the Debian source; no guest
boots in these tests: ``LocalPlatform.boot`` is replaced by a recorder that refuses to boot.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from localbuilder.__main__ import main
from localbuilder.commands import build as build_command
from localbuilder.errors import BackendError
from localbuilder.guest.local import LocalPlatform
from localbuilder.invocation import Invocation
from localbuilder.state import RunDir, RunState, iter_runs, now_iso
from tests.build.mounts import tmpfs
from tests.build.test_build_integration import write_template

URN = "Debian:debian-12:12:0.1.0"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALBUILDER_HOME", str(home))
    image = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 16M", str(image)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    assert main(["image", "add", str(image), "--urn", URN]) == 0
    return home


@pytest.fixture(autouse=True)
def boots(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every guest a build asks for (none may start here: the stub refuses)."""
    asked: list[Any] = []

    def boot(self: LocalPlatform, request: Any) -> Any:
        asked.append(request)
        raise BackendError("stub: no guest boots in this test")

    monkeypatch.setattr(LocalPlatform, "boot", boot)
    monkeypatch.setattr(LocalPlatform, "checkpoint_traits", lambda self, image: None)
    return asked


def template(directory: Path, name: str = "roomy", **props: Any) -> Path:
    """A one-step Debian template (the shared writer of the real-build tests)."""
    return write_template(directory, name, [{"type": "Shell", "name": "x", "inline": ["true"]}], **props)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], boots: list[Any], home: Path) -> str:
    """Run ``argv``; it must exit 2 before any guest or run directory exists. Returns stderr."""
    assert main(argv) == 2
    assert boots == []
    runs = home / "runs"
    assert not runs.exists() or list(runs.rglob("state.json")) == []
    return capsys.readouterr().err


def test_output_dir_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any],
                              home: Path) -> None:  # fmt: skip
    out = tmp_path / "out"
    out.write_text("not a directory")
    err = refused(["build", str(template(tmp_path / "t")), "--output-dir", str(out)], capsys, boots, home)
    assert f"error: --output-dir {out}: {out} exists and is a file" in err
    assert "hint: Choose another --output-dir" in err
    assert out.read_text() == "not a directory"


def test_output_dir_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any],
                                 home: Path) -> None:  # fmt: skip
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "out"
    err = refused(["build", str(template(tmp_path / "t")), "--output-dir", str(out)], capsys, boots, home)
    assert f"{out} cannot be created: {tmp_path / 'f'} is a file, not a directory" in err


@needs_root
def test_output_dir_read_only(tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any],
                              home: Path) -> None:  # fmt: skip
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        err = refused(["build", str(template(tmp_path / "t")), "--output-dir", str(mnt / "out")],
                      capsys, boots, home)  # fmt: skip
        assert f"--output-dir {mnt / 'out'}: {mnt} is on a read-only filesystem" in err
        assert list(mnt.iterdir()) == []


@needs_root
def test_output_dir_too_small(tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any],
                              home: Path) -> None:  # fmt: skip
    with tmpfs(tmp_path / "small", "size=8m") as mnt:
        err = refused(["build", str(template(tmp_path / "t")), "--output-dir", str(mnt / "out")],
                      capsys, boots, home)  # fmt: skip
        assert (
            f"--output-dir {mnt / 'out'}: not enough room: the output VHD needs 16.3 MiB, 8 MiB free" in err
        )
        assert not (mnt / "out").exists()


@needs_root
def test_run_directory_too_small(tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any],
                                 home: Path) -> None:  # fmt: skip
    with tmpfs(home / "runs", "size=8m") as runs:
        err = refused(["build", str(template(tmp_path / "t"))], capsys, boots, home)
        assert f"run directory {runs / 'roomy'}: not enough room: the work VHD needs 16.3 MiB" in err
        assert "LOCALBUILDER_HOME" in err
        assert [p.name for p in runs.iterdir()] in ([], [".recovery.lock"])


def test_a_good_output_dir_passes_and_the_build_goes_on(tmp_path: Path, boots: list[Any]) -> None:
    out = tmp_path / "new" / "out"
    assert main(["build", str(template(tmp_path / "t")), "--output-dir", str(out)]) == 1  # the stub boot
    assert len(boots) == 1
    (run,) = iter_runs("roomy")
    assert "stub: no guest boots" in run.read().last_run_status.message


@needs_root
def test_parallel_builds_are_checked_together_before_any_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any], home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    started: list[Any] = []
    monkeypatch.setattr("localbuilder.parallel.run_jobs", lambda *a, **k: started.append(a))
    with tmpfs(tmp_path / "small", "size=24m") as mnt:
        # Each alone (16 MiB) would fit; the two VHDs do not.
        argv = ["build", str(template(tmp_path / "t", "a")), str(template(tmp_path / "t", "b")),
                "--output-dir", str(mnt), "--parallel", "2"]  # fmt: skip
        err = refused(argv, capsys, boots, home)
        assert (
            f"--output-dir {mnt}: not enough room: needs 32.6 MiB (the output VHD 16.3 MiB + the output VHD "
            "16.3 MiB), 24 MiB free" in err
        )
        assert started == [] and list(mnt.iterdir()) == []


@needs_root
def test_resume_checks_its_recorded_output_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], boots: list[Any], home: Path
) -> None:
    tpl = template(tmp_path / "t")
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        run = RunDir.create("roomy", tpl.absolute())
        run.write(run.read().with_status(run_state=RunState.Failed, message="x", end_time=now_iso()))
        inv = Invocation(template=tpl.absolute(), output_dir=mnt / "out")
        (run.path / "invocation.json").write_text(json.dumps(inv.as_dict()))
        before = run.state_file.read_bytes()
        assert main(["build", "--resume", run.run_id]) == 2
        assert boots == []
        assert "read-only filesystem" in capsys.readouterr().err
        assert run.state_file.read_bytes() == before  # the run was not reopened


def test_the_check_is_wired_into_single_builds() -> None:
    # A guard against a refactoring that drops the call: the CLI is the only caller.
    import inspect

    assert "room.check(" in inspect.getsource(build_command._build)
    assert "room.check(" in inspect.getsource(build_command._build_many)
