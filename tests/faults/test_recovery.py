"""Recovery after a SIGKILLed build, with real short-lived processes standing in for qemu.

A stand-in is a Python interpreter sleeping with qemu-like arguments (``-name <guest>``, a serial log
in the guest directory), in a session of its own as ``run.spawn`` starts qemu. Checked: the recorded
guest is stopped and its files removed (serial log kept), the run is marked Failed with the message
naming both pids; a recorded pid whose start time or command line differs (pid reuse) is never
signalled; a guest kept by --on-error abort and the guest of a live build are left alone; a guest still
booting (not yet recorded) is found through its directory; the /var/tmp guest directory of a deep run
path is removed with its serial log brought home; the orchestrator records and clears the guest.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbuilder import recovery
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.state import (
    ActiveGuest,
    KeptGuest,
    ProcessInfo,
    RunDir,
    RunRecord,
    RunState,
    RunSubState,
    _start_ticks,
)
from localbuilder.template import model
from tests.build.fakes import FakePlatform

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "runs"


Procs = list[subprocess.Popen[bytes]]


@pytest.fixture
def procs() -> Iterator[Procs]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def stand_in(procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    """A process that looks like our qemu to /proc: sleeps, with ``args`` on its command line."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args],
                         start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{p.pid}/cmdline").read_bytes().count(b"time.sleep"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    procs.append(p)
    return p


def dead_process() -> ProcessInfo:
    """The ProcessInfo of a build process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    info = ProcessInfo(pid=p.pid, host=socket.gethostname(), start_ticks=_start_ticks(p.pid))
    p.wait()
    return info


def is_running(p: subprocess.Popen[bytes]) -> bool:
    return p.poll() is None


def make_run(runs: Path, *, process: ProcessInfo, name: str = "lb-0123456789") -> tuple[RunDir, Path]:
    run = RunDir.create("tpl", Path("/t.json"), root=runs)
    guest_dir = run.path / "vm-build" / name
    (guest_dir / "seed").mkdir(parents=True)
    (guest_dir / "seed" / "id_ed25519").write_text("key")
    (guest_dir / "disk.qcow2").write_bytes(b"overlay")
    (guest_dir / "qemu.stderr").write_text("")
    (guest_dir / "serial.log").write_text("console output\n")
    (run.path / "image.vhd.partial").write_bytes(b"half")
    record = run.read()
    record = dataclasses.replace(record, process=process).with_status(run_sub_state=RunSubState.Customizing)
    run.write(record)
    return run, guest_dir


def record_guest(run: RunDir, guest_dir: Path, pid: int, ticks: int | None) -> None:
    guest = ActiveGuest("qemu", guest_dir.name, str(guest_dir), "build", pid, ticks)
    run.write(dataclasses.replace(run.read(), guest=guest))


def qemu_args(guest_dir: Path) -> list[str]:
    return ["-name", guest_dir.name, "-serial", f"file:{guest_dir}/serial.log"]


def test_recorded_guest_is_stopped_files_removed_run_failed(runs: Path, procs: Procs) -> None:
    build = dead_process()
    run, guest_dir = make_run(runs, process=build)
    qemu = stand_in(procs, *qemu_args(guest_dir))
    record_guest(run, guest_dir, qemu.pid, _start_ticks(qemu.pid))

    recovered = recovery.recover_stale_runs()

    assert qemu.wait(timeout=5) is not None
    assert [r.run_id for r in recovered] == [run.run_id]
    record = run.read()
    assert record.run_state is RunState.Failed
    assert record.guest is None and record.last_run_status.end_time
    assert record.last_run_status.message == (
        f"localbuilder was killed (pid {build.pid}) during Customizing; its guest (qemu pid {qemu.pid}) "
        "was stopped on the next start"
    )
    assert sorted(p.name for p in guest_dir.iterdir()) == ["serial.log"]
    assert not (run.path / "image.vhd.partial").exists()
    # Recovered once: a second pass has nothing to do and does not rewrite the message.
    assert recovery.recover_stale_runs() == []
    assert run.read() == record


def test_reused_pid_is_never_signalled(runs: Path, procs: Procs) -> None:
    run, guest_dir = make_run(runs, process=dead_process())
    other = stand_in(procs, *qemu_args(guest_dir))
    ticks = _start_ticks(other.pid)
    assert ticks is not None
    # Same pid and name, but another start time: the recorded qemu died and its pid was reused.
    record_guest(run, guest_dir, other.pid, ticks - 1)
    unrelated = stand_in(procs, "no-guest-name-here")
    run2, guest_dir2 = make_run(runs, process=dead_process(), name="lb-abcdefabcd")
    # Same pid and start time, but the command line does not name the guest.
    record_guest(run2, guest_dir2, unrelated.pid, _start_ticks(unrelated.pid))

    recovered = recovery.recover_stale_runs()

    time.sleep(0.3)
    assert is_running(other) and is_running(unrelated)
    assert {r.run_id for r in recovered} == {run.run_id, run2.run_id}
    for r in (run, run2):
        record = r.read()
        assert record.run_state is RunState.Failed
        assert record.last_run_status.message.endswith("its guest had already stopped")


def test_kept_guest_and_live_build_are_left_alone(runs: Path, procs: Procs) -> None:
    run, guest_dir = make_run(runs, process=dead_process())
    kept = stand_in(procs, *qemu_args(guest_dir))
    record = run.read()
    kept_guest = KeptGuest("127.0.0.1", 2222, "packer", str(guest_dir / "key"), "qemu", pid=kept.pid)
    record = dataclasses.replace(record, kept_guest=kept_guest).with_status(run_state=RunState.Failed)
    run.write(record)

    live_run, live_dir = make_run(runs, process=ProcessInfo.current(), name="lb-1111111111")
    live_guest = stand_in(procs, *qemu_args(live_dir))
    record_guest(live_run, live_dir, live_guest.pid, _start_ticks(live_guest.pid))
    live_before = live_run.read()

    assert recovery.recover_stale_runs() == []
    time.sleep(0.3)
    assert is_running(kept) and is_running(live_guest)
    assert run.read() == record
    assert live_run.read() == live_before
    assert (guest_dir / "disk.qcow2").exists() and (live_dir / "disk.qcow2").exists()


def test_guest_killed_before_it_was_recorded_is_found_by_its_directory(
    runs: Path, procs: Procs
) -> None:
    build = dead_process()
    run, guest_dir = make_run(runs, process=build)
    booting = stand_in(procs, *qemu_args(guest_dir))
    # Names the directory but is not a qemu of ours (no -name): a user's `tail -f` of the serial log.
    reader = stand_in(procs, "tail", "-f", str(guest_dir / "serial.log"))

    (recovered,) = recovery.recover_stale_runs()

    assert booting.wait(timeout=5) is not None
    time.sleep(0.3)
    assert is_running(reader)
    assert recovered.stopped == (f"qemu pid {booting.pid}",)
    assert f"its guest (qemu pid {booting.pid}) was stopped" in run.read().last_run_status.message
    assert sorted(p.name for p in guest_dir.iterdir()) == ["serial.log"]


def test_dead_run_without_guest_is_marked_and_cancel_request_kept(runs: Path) -> None:
    build = dead_process()
    run, _ = make_run(runs, process=build)
    run.request_cancel()
    (recovered,) = recovery.recover_stale_runs()
    assert recovered.state is RunState.Canceled
    assert run.read().last_run_status.message == (
        f"localbuilder was killed (pid {build.pid}) during Customizing; no guest was left running"
    )


def test_run_already_marked_failed_still_gets_its_guest_stopped(runs: Path, procs: Procs) -> None:
    """An older show-runs (reconcile) marked the run Failed but could not stop the guest."""
    build = dead_process()
    run, guest_dir = make_run(runs, process=build)
    qemu = stand_in(procs, *qemu_args(guest_dir))
    record_guest(run, guest_dir, qemu.pid, _start_ticks(qemu.pid))
    run.write(run.read().with_status(run_state=RunState.Failed, message="ended without recording a result"))

    recovery.recover_stale_runs()

    assert qemu.wait(timeout=5) is not None
    lines = run.read().last_run_status.message.splitlines()
    assert lines[0] == "ended without recording a result"
    assert lines[1].startswith(f"localbuilder was killed (pid {build.pid})")


def test_show_runs_recovers_and_warns(runs: Path, procs: Procs) -> None:
    run, guest_dir = make_run(runs, process=dead_process())
    qemu = stand_in(procs, *qemu_args(guest_dir))
    record_guest(run, guest_dir, qemu.pid, _start_ticks(qemu.pid))
    # A separate process, as a user runs it (and so the CLI's logging setup stays out of this one).
    shown = subprocess.run([sys.executable, "-m", "localbuilder", "show-runs"], capture_output=True,
                           text=True, timeout=60, env=dict(os.environ), cwd=REPO)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert qemu.wait(timeout=5) is not None
    warnings = [line for line in shown.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: run tpl/{run.run_id}: {run.read().last_run_status.message}"]
    assert "Failed" in shown.stdout


def test_release_short_workdir_moves_serial_logs_home(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    run_path.mkdir()
    short = Path(tempfile.mkdtemp(prefix="lb-", dir="/var/tmp"))
    try:
        (short / "lb-0123456789" / "seed").mkdir(parents=True)
        (short / "lb-0123456789" / "serial.log").write_text("boot\n")
        (run_path / "vm-build").symlink_to(short, target_is_directory=True)
        # A link that is not ours (not /var/tmp/lb-*) is never followed into an rmtree.
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (run_path / "vm-other").symlink_to(foreign, target_is_directory=True)

        recovery.release_short_workdirs(run_path)

        assert not short.exists()
        home = run_path / "vm-build"
        assert home.is_dir() and not home.is_symlink()
        assert (home / "lb-0123456789" / "serial.log").read_text() == "boot\n"
        assert foreign.is_dir() and (run_path / "vm-other").is_symlink()
    finally:
        if short.exists():
            shutil.rmtree(short)


def _template() -> model.Template:
    return model.Template(
        name="hello",
        api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        customize=(model.ShellCustomizer(name="a", inline=("echo a",)),),
        validate=model.Validate(in_vm_validations=(model.ShellCustomizer(name="v", inline=("true",)),)),
        distribute=(model.VhdDistributor(run_output_name="out"),),
    )


def test_build_records_the_guest_while_it_runs_and_clears_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ActiveGuest | None] = []
    original = RunDir.write

    def spy(self: RunDir, record: RunRecord) -> None:
        seen.append(record.guest)
        original(self, record)

    monkeypatch.setattr(RunDir, "write", spy)
    # A run path deep enough that the guest goes to /var/tmp (Build._guest_workdir).
    deep = tmp_path / ("d" * 80)
    platform = FakePlatform(tmp_path)
    record = Build(_template(), tmp_path / "t.json", platform, BuildOptions(runs_root=deep)).execute()
    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    guests = [g for g in seen if g is not None]
    assert guests and guests[0].name == "fake-build" and guests[0].purpose == "build"
    # Each guest is recorded while it runs and cleared once it is gone, the validation guest too.
    runs_of = [g.name if g else None for i, g in enumerate(seen) if i == 0 or g != seen[i - 1]]
    assert runs_of == [None, "fake-build", None, "fake-validation", None], runs_of
    assert [g.purpose for g in guests if g.name == "fake-validation"][0] == "validation"
    short = Path(guests[0].workdir)
    assert short.parent == Path("/var/tmp") and short.name.startswith("lb-")
    assert seen[-1] is None and record.guest is None
    run_path = deep / "hello" / record.run_id
    assert (run_path / "vm-build").is_dir() and not (run_path / "vm-build").is_symlink()
    assert not short.exists()



def test_qmp_socket_path_is_read_back_from_the_qemu_command_line() -> None:
    # qemu doubles a literal comma inside an option value (hypervisor/qemu.py _opt).
    argv = ["qemu-system-x86_64", "-qmp", "unix:/tmp/lb-qmp-a,,b/qmp.sock,server=on,wait=off"]
    assert recovery._qmp_socket(argv) == Path("/tmp/lb-qmp-a,b/qmp.sock")
    assert recovery._qmp_socket(["qemu-system-x86_64", "-qmp", "tcp:127.0.0.1:4444"]) is None
