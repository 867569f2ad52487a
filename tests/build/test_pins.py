"""Pins and staging directories, without a VM: prune keeps what finished runs still need (a kept guest, a
resumable run), drops stale pins, ``--force`` stops kept guests first; staging dirs are owned by a pid,
listed, private, and removed as soon as their owner is dead."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbuilder import pins
from localbuilder.__main__ import main
from localbuilder.checkpoints import CheckpointCache, EntryMeta, StagingDir
from localbuilder.communicator.fake import FakeCommunicator, FakeReply
from localbuilder.state import KeptGuest, RunDir, RunState, _start_ticks
from localbuilder.template.model import OnBuildError
from tests.build.fakes import FakePlatform
from tests.build.test_checkpoints import k, make_entry, run_build, shell, template


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def guest() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a kept qemu: a live process that dies on SIGTERM (reaped at once by a thread, so
    ``cancel``'s liveness poll does not wait on a zombie)."""
    proc = subprocess.Popen(["sleep", "600"])
    threading.Thread(target=proc.wait, daemon=True).start()
    yield proc
    proc.kill()


def chains(cache: CheckpointCache) -> None:
    """Chain A: 1→2→3; chain B: 5→6."""
    for key, parent, depth in ((1, None, 0), (2, 1, 1), (3, 2, 2), (5, None, 0), (6, 5, 1)):
        make_entry(cache, k(key), k(parent) if parent else None, depth)


def finished_run(state: RunState, kept_pid: int | None = None, name: str = "hello") -> RunDir:
    run = RunDir.create(name, Path("/t.json"))
    record = run.read().with_status(run_state=state, message="customize[2] failed")
    if kept_pid is not None:
        record = dataclasses.replace(
            record, kept_guest=KeptGuest("127.0.0.1", 2222, "packer", "/key", "qemu", pid=kept_pid)
        )
    run.write(record)
    return run


def pin(cache: CheckpointCache, run: RunDir, *keys: str) -> pins.Pin | None:
    return pins.record_run(cache.root, run.path, run.read(), list(keys))


def left(cache: CheckpointCache) -> set[str]:
    return {e.key for e in cache.entries()}


# ---- pins ------------------------------------------------------------------------------------------------


def test_a_kept_guest_pins_its_chain_and_its_ancestors(guest: subprocess.Popen[bytes]) -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed, kept_pid=guest.pid)
    written = pin(cache, run, k(3))  # the deepest point only: its ancestors are its backing files
    assert written is not None and written.guest_start_ticks == _start_ticks(guest.pid)
    pin_file = cache.root.parent / "pins" / f"{run.run_id}.json"
    assert oct(pin_file.stat().st_mode & 0o777) == "0o600"
    assert oct(pin_file.parent.stat().st_mode & 0o777) == "0o700"

    result = cache.prune(0, everything=True)
    assert left(cache) == {k(1), k(2), k(3)}
    assert {e.key for e, _ in result.pinned} == {k(1), k(2), k(3)}
    why = result.pinned[0][1]
    assert f"run hello/{run.run_id} keeps its failed guest running (qemu pid {guest.pid}" in why
    assert f"localbuilder cancel {run.run_id}" in why


def test_a_dead_kept_guest_still_leaves_a_resumable_run(guest: subprocess.Popen[bytes]) -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed, kept_pid=guest.pid)
    pin(cache, run, k(1), k(2))
    guest.kill()
    guest.wait()
    [active] = pins.load(cache.root)
    assert not active.guest_alive and active.kind == "resumable"
    result = cache.prune(0, everything=True)
    assert left(cache) == {k(1), k(2)}  # k(3) was not this run's: it goes
    assert all(f"ended Failed: 'localbuilder build --resume {run.run_id}'" in w for _, w in result.pinned)


def test_a_reused_pid_is_not_the_kept_guest(guest: subprocess.Popen[bytes]) -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed, kept_pid=guest.pid)
    pin(cache, run, k(3))
    pin_file = cache.root.parent / "pins" / f"{run.run_id}.json"
    data = json.loads(pin_file.read_text())
    pin_file.write_text(json.dumps({**data, "guestStartTicks": data["guestStartTicks"] - 1}))
    [active] = pins.load(cache.root)
    assert not active.guest_alive
    assert pins.stop_kept_guests([active]) == []
    assert guest.poll() is None  # never signalled


@pytest.mark.parametrize("state", [RunState.Failed, RunState.Canceled, RunState.PartiallySucceeded])
def test_a_resumable_run_pins_its_chain(state: RunState) -> None:
    cache = CheckpointCache()
    chains(cache)
    pin(cache, finished_run(state), k(5), k(6))
    cache.prune(0, everything=True)
    assert left(cache) == {k(5), k(6)}


def test_a_run_resumed_right_now_stays_pinned() -> None:
    """``build --resume RUN`` puts the run back to Running: its old pin holds until the resume ends (the
    resumed build's flocks cover only the entries it restores)."""
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed)
    pin(cache, run, k(6))
    run.write(run.read().with_status(run_state=RunState.Running))
    result = cache.prune(0, everything=True)
    assert left(cache) == {k(5), k(6)}
    assert all(f"run hello/{run.run_id} is running again (--resume)" == why for _, why in result.pinned)


def test_stale_pins_are_dropped(tmp_path: Path) -> None:
    cache = CheckpointCache()
    chains(cache)
    succeeded = finished_run(RunState.Failed, name="a")
    pin(cache, succeeded, k(1))
    succeeded.write(succeeded.read().with_status(run_state=RunState.Succeeded))  # resumed meanwhile
    removed = finished_run(RunState.Failed, name="b")
    pin(cache, removed, k(2))
    shutil.rmtree(removed.path)
    foreign = finished_run(RunState.Failed, name="c")
    pin(cache, foreign, "f" * 64)  # none of its keys is cached
    (cache.root.parent / "pins" / "garbage.json").write_text("{not json")
    assert pins.load(cache.root, [e.key for e in cache.entries()]) == []
    assert not list((cache.root.parent / "pins").iterdir())
    cache.prune(0, everything=True)
    assert left(cache) == set()


def test_a_succeeded_run_unpins() -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed)
    assert pin(cache, run, k(1)) is not None
    run.write(run.read().with_status(run_state=RunState.Succeeded))
    assert pin(cache, run, k(1)) is None
    assert not (cache.root.parent / "pins" / f"{run.run_id}.json").exists()


def test_force_stops_the_kept_guest_and_removes(guest: subprocess.Popen[bytes]) -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed, kept_pid=guest.pid)
    pin(cache, run, k(3))
    result = cache.prune(0, everything=True, force=True)
    assert result.stopped == (f"stopped the guest kept by run {run.run_id} (qemu pid {guest.pid})",)
    assert guest.wait(timeout=10) is not None
    assert left(cache) == set() and result.pinned == ()
    assert run.read().kept_guest is None and run.read().run_state is RunState.Failed
    assert pins.load(cache.root) == [] or all(not ap.guest_alive for ap in pins.load(cache.root))


def test_force_leaves_guests_whose_chain_stays(guest: subprocess.Popen[bytes]) -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed, kept_pid=guest.pid)
    pin(cache, run, k(6))
    for key in (1, 2, 3):  # chain A is older: a size bound removes it and keeps B
        os.utime(cache.root / k(key) / "lock", (1, 1))
    one = max(e.size() for e in cache.entries())
    result = cache.prune(2 * one, force=True)
    assert result.stopped == () and guest.poll() is None
    assert left(cache) == {k(5), k(6)}


def test_cache_commands_say_what_pins_and_force_overrides(
    guest: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    cache = CheckpointCache()
    chains(cache)
    run = finished_run(RunState.Failed, kept_pid=guest.pid)
    pin(cache, run, k(2))
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-2:] == ["PINNED", "BY"]
    pinned_rows = [line for line in out.splitlines() if f"{run.run_id} (kept guest)" in line]
    assert {line.split()[0] for line in pinned_rows} == {k(1)[:12], k(2)[:12]}
    assert "2 pinned" in out.splitlines()[-1]
    assert main(["cache", "list", "--json"]) == 0
    data = {d["key"]: d for d in json.loads(capsys.readouterr().out)["checkpoints"]}
    by = data[k(1)]["pinnedBy"][0]
    assert by["runId"] == run.run_id and by["kind"] == "kept guest" and by["runDir"] == str(run.path)
    assert data[k(3)]["pinnedBy"] == []

    assert main(["cache", "prune", "--all"]) == 0
    captured = capsys.readouterr()
    assert f"{k(1)[:12]} {k(2)[:12]}  pinned: run hello/{run.run_id} keeps its failed guest" in captured.err
    assert "--force" in captured.err and "removed 3 checkpoints" in captured.out
    assert left(cache) == {k(1), k(2)} and guest.poll() is None

    assert main(["cache", "prune", "--all", "--force", "--json"]) == 0
    out_json = json.loads(capsys.readouterr().out)
    assert sorted(out_json["removed"]) == [k(1), k(2)] and out_json["pinned"] == []
    assert out_json["stoppedGuests"] == [f"stopped the guest kept by run {run.run_id} (qemu pid {guest.pid})"]
    assert left(cache) == set() and guest.wait(timeout=10) is not None


def test_a_failed_build_pins_its_chain_until_it_is_resumed(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1"), shell("two", "exit 1")]
    failing = FakeCommunicator({re.compile("customize-1-"): FakeReply(exit_status=1, stderr="E: broken")})
    platform = FakePlatform(tmp_path, checkpoints=True, comm_for=lambda purpose: failing)
    failed = run_build(template(*steps), platform, tmp_path, on_error=OnBuildError.abort)
    assert failed.run_state is RunState.Failed and failed.kept_guest is not None
    cache = CheckpointCache()
    [active] = pins.load(cache.root)
    assert active.run_id == failed.run_id and len(active.pin.keys) == 2  # booted source + step one
    assert cache.prune(0, everything=True).removed == ()  # the build's own end-of-run prune agrees
    assert len(cache.entries()) == 2

    # `cancel` forgets the kept guest; the run is still resumable, and resuming it to success unpins.
    run_dir = Path(failed.output_dir or "").parent
    RunDir(run_dir).write(dataclasses.replace(RunDir(run_dir).read(), kept_guest=None))
    fixed = template(steps[0], shell("two", "echo fixed"))
    resumed = run_build(fixed, FakePlatform(tmp_path, checkpoints=True), tmp_path, resume_run=run_dir)
    assert resumed.run_state is RunState.Succeeded
    assert pins.load(cache.root) == []
    assert not (cache.root.parent / "pins" / f"{failed.run_id}.json").exists()


# ---- staging directories ----------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_staging_dirs_are_owned_listed_and_removed_when_their_owner_dies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = CheckpointCache()
    make_entry(cache, k(1), None, 0)
    me = os.getpid()
    with cache.staging(k(2)) as mine:
        (mine / "disk.qcow2").write_bytes(b"x" * 8192)
        assert oct(mine.stat().st_mode & 0o777) == "0o700"
        staged = StagingDir.parse(mine)
        assert (staged.pid, staged.start_ticks, staged.key_prefix) == (me, _start_ticks(me), k(2)[:12])
        dead = cache.root / f".tmp-{k(3)[:12]}-{dead_pid()}-12345-abcd"
        dead.mkdir()
        reused = cache.root / f".tmp-{k(4)[:12]}-{me}-{(_start_ticks(me) or 0) + 1}-abcd"  # pid reused
        reused.mkdir()

        assert main(["cache", "list"]) == 0
        out = capsys.readouterr().out
        assert "being written (staging directories):" in out
        row = next(line for line in out.splitlines() if line.startswith(mine.name))
        assert f"pid {me} (writing)" in row and "8.0K" in row
        assert "dead: removed by the next prune" in next(
            line for line in out.splitlines() if line.startswith(dead.name)
        )
        assert "; 3 being written" in out.splitlines()[-1]
        assert main(["cache", "list", "--json"]) == 0
        listed = {d["path"]: d for d in json.loads(capsys.readouterr().out)["staging"]}
        assert listed[str(mine)]["ownerPid"] == me and listed[str(mine)]["ownerAlive"] is True
        assert listed[str(mine)]["bytes"] >= 8192 and listed[str(dead)]["ownerAlive"] is False

        cache.prune(10**9)  # not an hour later: at once
        assert mine.is_dir() and not dead.exists() and not reused.exists()
    assert not mine.exists()


def test_committed_entries_are_private_whatever_wrote_them() -> None:
    cache = CheckpointCache()
    with cache.staging(k(1)) as tmp:
        for name in ("disk.qcow2", "vmstate"):
            (tmp / name).write_bytes(b"x")
            os.chmod(tmp / name, 0o644)  # as qemu-img / qemu create them under umask 022
        cache.commit(
            tmp,
            EntryMeta(
                key=k(1),
                parent=None,
                depth=0,
                title="d0",
                template="t",
                run_id="r",
                created="now",
                backing="/src",
                backing_format="qcow2",
            ),
        )
    entry = cache.root / k(1)
    assert oct(entry.stat().st_mode & 0o777) == "0o700"
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in entry.iterdir()} == {
        "disk.qcow2": "0o600",
        "vmstate": "0o600",
        "meta.json": "0o600",
        "lock": "0o600",
    }
    assert oct(cache.root.stat().st_mode & 0o777) == "0o700"
