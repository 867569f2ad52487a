"""A guest that will never answer is named in seconds (issue #21): real builds of broken sources.

Each source is the Debian test image broken offline (tests/build/broken_images.py): a kernel that panics,
a root filesystem that cannot be found, an sshd that fails to start, cloud-init that ignores the NoCloud
seed. Each build must end Failed within 3 minutes of starting (the SSH wait alone used to be 20), naming
the cause and quoting the console, with no qemu left. A slow but healthy boot (sshd starts 90 s late)
must still succeed. Builds run with --no-cache, so that no checkpoint can skip the boot.

The measured times are printed (run with -s, or read the "boot watch:" lines in the test output).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder.__main__ import main
from localbuilder.state import RunState, iter_runs
from tests.build.broken_images import make_variant
from tests.build.mounts import localbuilder_home
from tests.build.test_build_integration import processes_mentioning, write_template

pytestmark = pytest.mark.integration

# The bound: a broken source fails within 3 minutes of the build's start.
FAIL_WITHIN = 180.0


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with localbuilder_home(tmp_path_factory.mktemp("lbhome-boot")) as home:
        yield home


def build_variant(kind: str, debian_image: Any, tmp_path: Path, *extra: str, name: str = ""
                  ) -> tuple[int, float, Any]:
    """Make the ``kind`` variant, register it, build a one-step template from it: (exit, seconds, run).
    ``name`` (default ``kind``) names the catalog entry and the template: the module shares one home."""
    name = name or kind
    image = make_variant(kind, debian_image.path, tmp_path / f"{kind}.raw", tmp_path / "scratch")
    urn = f"LocalTest:debian-12-{name}:12:1.0.0"
    assert main(["image", "add", str(image), "--urn", urn]) == 0
    source = {"type": "PlatformImage", "publisher": "LocalTest", "offer": f"debian-12-{name}", "sku": "12",
              "version": "1.0.0"}  # fmt: skip
    tpl = write_template(tmp_path / "tpl", f"boot-{name}", [{"type": "Shell", "name": "hello",
                                                            "inline": ["echo hello"]}], source=source)
    start = time.monotonic()
    code = main(["build", str(tpl), "--no-cache", "--output-dir", str(tmp_path / "out"), *extra])
    seconds = time.monotonic() - start
    (rundir,) = list(iter_runs(f"boot-{name}"))
    return code, seconds, rundir


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\nboot watch: {text}")


@pytest.mark.parametrize(("kind", "cause", "console"), [
    ("panic", "the guest's kernel panicked", "Kernel panic - not syncing: VFS: Unable to mount root fs"),
    ("noroot", "the root filesystem was not found", "does not exist.  Dropping to a shell!"),
    ("badsshd", "the SSH server (sshd) failed to start", "Failed to start ssh.servic"),
    # Refused before boot by default (test below); booted anyway, the watch still names what the guest did.
    ("azureonly", "the guest ignored the build's NoCloud seed", "Generating public/private ed25519 key pair"),
])  # fmt: skip
def test_a_broken_source_fails_fast_naming_the_cause(
    home: Path, tmp_path: Path, debian_image: Any, capsys: pytest.CaptureFixture[str],
    kind: str, cause: str, console: str,
) -> None:  # fmt: skip
    extra = ("--provisioning", "nocloud") if kind == "azureonly" else ()
    code, seconds, rundir = build_variant(kind, debian_image, tmp_path, *extra)
    record = rundir.read()
    message = record.last_run_status.message
    report(capsys, f"{kind}: Failed after {seconds:.0f} s (was: the 20-minute SSH wait) — "
                   f"{message.splitlines()[0][:160]}")
    assert code == 1, message
    assert record.run_state is RunState.Failed
    assert seconds < FAIL_WITHIN, message
    assert cause in message, message
    assert console in message, message  # quoted from the console
    assert "serial.log" in message, message
    assert processes_mentioning(str(rundir.path)) == []
    assert list((tmp_path / "out").glob("*.vhd")) == []


def test_an_azure_only_source_is_refused_before_boot(
    home: Path, tmp_path: Path, debian_image: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # cloud-init limited to [ Azure ] (as in Debian's and Ubuntu's Azure images): the NoCloud seed would be
    # ignored. The source's own files say so before any guest boots.
    code, seconds, rundir = build_variant("azureonly", debian_image, tmp_path, name="azureonly-auto")
    record = rundir.read()
    message = record.last_run_status.message
    first = message.splitlines()[0][:140]
    report(capsys, f"azureonly (auto): Failed after {seconds:.0f} s, before boot — {first}")
    assert code == 1 and record.run_state is RunState.Failed, message
    assert "LocalTest:debian-12-azureonly-auto:12:1.0.0 provisions only the Azure way" in message, message
    assert seconds < 60, "decided from the source's files, not by booting it"
    assert "datasource_list [Azure] in /etc/cloud/cloud.cfg.d/90-localbuilder.cfg" in message, message
    assert "--provisioning nocloud" in message, message
    assert not list(rundir.path.rglob("serial.log")), "no guest may boot"
    assert record.provisioning is None


def test_a_slow_but_healthy_boot_is_not_failed_early(
    home: Path, tmp_path: Path, debian_image: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # sshd starts 90 s late (ExecStartPre=/bin/sleep 90): cloud-init finishes meanwhile, the port is shut
    # for a while — none of that is a failure. --boot-timeout bounds the wait (and is recorded for --resume).
    code, seconds, rundir = build_variant("slowssh", debian_image, tmp_path, "--boot-timeout", "600")
    record = rundir.read()
    report(capsys, f"slowssh: {record.run_state} after {seconds:.0f} s")
    assert code == 0, record.last_run_status.message
    assert record.run_state is RunState.Succeeded
    # No terminal here: signs of life in the build log while the SSH wait lasted.
    build_log = (rundir.path / "build.log").read_text()
    assert "still waiting for SSH on 127.0.0.1:" in build_log
    assert '"bootTimeout": 600' in (rundir.path / "invocation.json").read_text()
    # The source's cloud-init lists NoCloud: decided from its files, recorded in the run.
    assert record.provisioning is not None and record.provisioning["mode"] == "nocloud"
    assert record.provisioning["decidedBy"] == "source files"
    assert processes_mentioning(str(rundir.path)) == []
