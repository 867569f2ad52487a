"""What a failed run leaves and says (issue #12 items 4 and 7), on FakePlatform: no guest boots.

* the work VHD (``<run>/image.vhd``) is gone after every failure after the conversion;
* the VHD distributor turns OSError (read-only, not a directory, disk full) into a DistributeError with
  a hint, and leaves no partial file;
* a distribution error is said once;
* ``build --resume`` keeps the run's start time;
* ``localbuilder cancel`` of a kept guest leaves only the serial log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localbuilder.__main__ import main
from localbuilder.communicator.fake import FakeCommunicator
from localbuilder.errors import Canceled, DistributeError, InspectionError
from localbuilder.guest import Inspection
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.state import KeptGuest, RunDir, RunRecord, RunState
from localbuilder.template import model
from localbuilder.template.model import OnBuildError
from tests.build.fakes import FakePlatform
from tests.build.mounts import tmpfs
from tests.build.test_build import shell, template, validation

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_build(tpl: model.Template, platform: FakePlatform, tmp_path: Path, **opts: Any) -> RunRecord:
    return Build(tpl, tmp_path / "t.json", platform, BuildOptions(**opts)).execute()


def work_vhd(record: RunRecord, home: Path) -> Path:
    return home / "runs" / record.template_name / record.run_id / "image.vhd"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith((".vhd", ".partial")))


# -- the work VHD ----------------------------------------------------------------------------------------


def test_the_work_vhd_is_gone_after_success(tmp_path: Path, home: Path) -> None:
    record = run_build(template(), FakePlatform(tmp_path), tmp_path)
    assert record.run_state is RunState.Succeeded
    assert not work_vhd(record, home).exists()


def test_the_work_vhd_is_gone_when_validation_fails(tmp_path: Path, home: Path) -> None:
    def comm_for(purpose: str) -> FakeCommunicator:
        return FakeCommunicator({re.compile("validate-0-"): 1} if purpose == "validation" else {})

    platform = FakePlatform(tmp_path, comm_for=comm_for)
    record = run_build(template(validate=validation(shell("check", "false"))), platform, tmp_path)
    assert record.run_state is RunState.Failed and "nothing was distributed" in record.last_run_status.message
    assert "convert qcow2 size=None" in platform.events  # it was converted
    assert not work_vhd(record, home).exists()


def test_the_work_vhd_is_gone_when_inspection_raises(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inspect(vhd: Path, build_user: str) -> Inspection:
        assert vhd.is_file()
        raise InspectionError("cannot read the image")

    platform = FakePlatform(tmp_path)
    monkeypatch.setattr(platform, "inspect", inspect)
    record = run_build(template(), platform, tmp_path)
    assert record.run_state is RunState.Failed and "cannot read the image" in record.last_run_status.message
    assert not work_vhd(record, home).exists()


def test_the_work_vhd_is_gone_when_the_build_is_canceled_while_distributing(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def canceled(self: Any, ctx: Any) -> Any:
        assert ctx.vhd.is_file()
        raise Canceled("the build was canceled")

    monkeypatch.setattr("localbuilder.distributors.vhd.Vhd.distribute", canceled)
    record = run_build(template(), FakePlatform(tmp_path), tmp_path)
    assert record.run_state is RunState.Canceled
    assert not work_vhd(record, home).exists()


def test_the_work_vhd_stays_under_a_kept_validation_guest_until_cancel(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def comm_for(purpose: str) -> FakeCommunicator:
        return FakeCommunicator({re.compile("validate-0-"): 1} if purpose == "validation" else {})

    platform = FakePlatform(tmp_path, comm_for=comm_for)
    record = run_build(template(validate=validation(shell("check", "false"))), platform, tmp_path,
                       on_error=OnBuildError.abort)  # fmt: skip
    assert record.kept_guest is not None
    vhd = work_vhd(record, home)
    assert vhd.is_file()  # the kept guest's overlay is backed by it
    assert main(["cancel", record.run_id]) == 0
    assert not vhd.exists()
    assert RunDir(vhd.parent).read().kept_guest is None


# -- the VHD distributor and OSError ---------------------------------------------------------------------


def test_output_dir_under_a_file_is_a_distribute_error(tmp_path: Path, home: Path) -> None:
    (tmp_path / "f").write_text("x")
    record = run_build(template(), FakePlatform(tmp_path), tmp_path, output_dir=tmp_path / "f" / "out")
    assert record.run_state is RunState.Failed
    (out,) = record.run_outputs
    assert out.provisioning_state == "Failed"
    assert (
        out.note == f"cannot write {tmp_path / 'f' / 'out' / 'out.vhd'}: {tmp_path / 'f' / 'out'} (or a "
        "parent) is not a directory"
    )
    assert "internal error" not in record.last_run_status.message
    assert "\nhint: Remove the file that is in the way, or choose another --output-dir." in (
        record.last_run_status.message
    )
    assert leftovers(home) == [] and (tmp_path / "f").read_text() == "x"


def test_output_dir_that_is_a_file_is_a_distribute_error(tmp_path: Path, home: Path) -> None:
    (tmp_path / "out").write_text("x")
    record = run_build(template(), FakePlatform(tmp_path), tmp_path, output_dir=tmp_path / "out")
    (out,) = record.run_outputs
    assert "is not a directory" in out.note and out.provisioning_state == "Failed"


@needs_root
def test_read_only_output_dir_is_a_distribute_error(tmp_path: Path, home: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        record = run_build(template(), FakePlatform(tmp_path), tmp_path, output_dir=mnt / "out")
        (out,) = record.run_outputs
        assert out.note == f"cannot write {mnt / 'out' / 'out.vhd'}: read-only file system"
        assert f"hint: Remount {mnt / 'out'} read-write" in record.last_run_status.message
        assert list(mnt.iterdir()) == []
    assert leftovers(home) == []


@needs_root
def test_full_output_dir_is_a_distribute_error_without_partial_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = FakePlatform(tmp_path)

    def convert(src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        dst.write_bytes(os.urandom(3 * 1024**2))  # more data than the 1 MiB output filesystem holds
        return 4 * 1024**2

    monkeypatch.setattr(platform, "convert", convert)
    with tmpfs(tmp_path / "small", "size=1m") as mnt:
        record = run_build(template(), platform, tmp_path, output_dir=mnt)
        (out,) = record.run_outputs
        assert out.note.startswith(f"disk full while writing {mnt / 'out.vhd'} (No space left on device)")
        assert list(mnt.iterdir()) == []
    assert leftovers(home) == []


def test_other_os_errors_are_translated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localbuilder.distributors import place

    src = tmp_path / "src.vhd"
    src.write_bytes(b"vhd")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DistributeError) as err:
        place(src, tmp_path / "out" / "x.vhd", force=False)
    assert err.value.message == f"cannot write {tmp_path / 'out' / 'x.vhd'}: Input/output error"
    assert err.value.hint and "--output-dir" in err.value.hint
    assert list((tmp_path / "out").iterdir()) == []  # no .x.vhd.partial


# -- said once -------------------------------------------------------------------------------------------


def console(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the console shows: INFO and up (DEBUG is build.log only, with customization.log's lines)."""
    return [r for r in caplog.records if r.levelno >= logging.INFO]


def test_a_distribution_error_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(src: Path, dst: Path, *, force: bool) -> None:
        raise DistributeError("cannot write X: the disk is haunted", hint="Call a priest.")

    monkeypatch.setattr("localbuilder.distributors.vhd.place", bad)
    caplog.set_level(logging.DEBUG, logger="localbuilder")
    record = run_build(template(), FakePlatform(tmp_path), tmp_path)
    assert record.last_run_status.message == "out: cannot write X: the disk is haunted\nhint: Call a priest."
    said = [r.getMessage() for r in console(caplog) if "haunted" in r.getMessage()]
    assert said == [f"hello Failed: {record.last_run_status.message}"]
    assert any(r.getMessage().startswith("runOutput out: Failed") for r in caplog.records)


def test_a_failed_target_before_others_is_announced_without_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from localbuilder.distributors import vhd as vhd_module

    real = vhd_module.place

    def first_fails(src: Path, dst: Path, *, force: bool) -> None:
        if dst.name == "a.vhd":
            raise DistributeError("haunted")
        real(src, dst, force=force)

    monkeypatch.setattr(vhd_module, "place", first_fails)
    caplog.set_level(logging.DEBUG, logger="localbuilder")
    tpl = template(
        distribute=(model.VhdDistributor(run_output_name="a"), model.VhdDistributor(run_output_name="b"))
    )
    record = run_build(tpl, FakePlatform(tmp_path), tmp_path)
    assert record.run_state is RunState.PartiallySucceeded
    assert [r.getMessage() for r in console(caplog) if "haunted" in r.getMessage()] == [
        "hello PartiallySucceeded: a: haunted"
    ]
    assert "distribute[0] VHD 'a' failed; the other targets still run (the reason is in the summary)" in [
        r.getMessage() for r in caplog.records
    ]


def test_abort_says_how_to_stop_the_guest_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="localbuilder")
    platform = FakePlatform(tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): 1}))
    record = run_build(template(customize=(shell("s", "false"),)), platform, tmp_path,
                       on_error=OnBuildError.abort)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"localbuilder cancel {record.run_id}" in text
    assert "virsh destroy" not in text and "kill/" not in text


# -- resume keeps the start time -------------------------------------------------------------------------


def test_resume_keeps_the_start_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    platform = FakePlatform(tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): 1}))
    tpl = template(customize=(shell("s", "false"),))
    first = run_build(tpl, platform, tmp_path)
    assert first.run_state is RunState.Failed and first.resume_times == ()
    run_path = tmp_path / "home" / "runs" / "hello" / first.run_id
    monkeypatch.setattr("localbuilder.orchestrator.rundir.now_iso", lambda: "2099-01-01T00:00:00Z")
    again = run_build(tpl, FakePlatform(tmp_path), tmp_path, resume_run=run_path)
    assert again.run_state is RunState.Succeeded
    assert again.last_run_status.start_time == first.last_run_status.start_time
    assert again.resume_times == ("2099-01-01T00:00:00Z",)
    assert RunDir(run_path).read().resume_times == ("2099-01-01T00:00:00Z",)  # in state.json


# -- cancel of a kept guest ------------------------------------------------------------------------------


def test_cancel_leaves_only_the_serial_log(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir.create("tpl", Path("/t.json"))
    guest_dir = run.path / "vm-build" / "lb-0123456789"
    guest_dir.mkdir(parents=True)
    for name in ("disk.qcow2", "disk-1.qcow2", "disk-2.qcow2", "qemu.stderr", "serial.log", "build-key"):
        (guest_dir / name).write_text(name)
    (guest_dir / "seed").mkdir()
    (guest_dir / "seed" / "seed.iso").write_text("iso")
    (run.path / "image.vhd").write_text("vhd")
    guest = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for qemu
    try:
        kept = KeptGuest("127.0.0.1", 2222, "packer", str(guest_dir / "build-key"), "qemu", pid=guest.pid)
        record = run.read().with_status(
            run_state=RunState.Failed, message="x", end_time="2026-01-01T00:00:00Z"
        )
        run.write(dataclasses.replace(record, kept_guest=kept))
        assert main(["cancel", run.run_id]) == 0
        assert guest.wait(timeout=10) != 0
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.wait()
    assert sorted(p.name for p in guest_dir.iterdir()) == ["serial.log"]
    assert not (run.path / "image.vhd").exists()
    assert "stopped the guest" in capsys.readouterr().out
