"""Checkpoint integrity without a VM: digests recorded at commit and verified before use, damaged entries
discarded with everything stacked on them, the guest's own word (marker) checked after a resume, and the
quiesce protocol's host side. The same promises with real guests: test_checkpoint_integrity_integration."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbuilder import quiesce
from localbuilder.checkpoints import DISK, CheckpointCache, EntryMeta, FileDigest, chain_keys
from localbuilder.communicator.fake import FakeCommunicator, FakeReply
from localbuilder.errors import CheckpointError, CheckpointMismatch
from localbuilder.orchestrator.chain import BuildChain
from localbuilder.state import RunState
from tests.build.fakes import FakePlatform
from tests.build.mounts import tmpfs
from tests.build.test_checkpoints import k, ran_steps, restored_steps, run_build, shell, template


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def sound(_disk: Path) -> str | None:
    return None


def entry(cache: CheckpointCache, key: str, parent: str | None, depth: int, *, live: bool = False) -> None:
    with cache.staging(key) as tmp:
        (tmp / DISK).write_bytes(os.urandom(4096))
        if live:
            (tmp / "vmstate").write_bytes(os.urandom(8192))
        cache.commit(
            tmp,
            EntryMeta(
                key=key,
                parent=parent,
                depth=depth,
                title=f"d{depth}",
                template="t",
                run_id="r",
                created="now",
                backing="/src",
                backing_format="qcow2",
            ),
        )


def chain(cache: CheckpointCache, n: int) -> BuildChain:
    return BuildChain(
        cache,
        [k(i) for i in range(1, n + 1)],
        [f"d{i}" for i in range(n)],
        template="t",
        run_id="r",
        source=Path("/src"),
        source_format="qcow2",
        layer_check=sound,
    )


def flip(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_commit_records_a_digest_of_every_file(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0, live=True)
    got = cache.get(k(1))
    assert got is not None
    assert set(got.meta.files) == {DISK, "vmstate"}
    assert got.meta.files["vmstate"] == FileDigest.of(got.path / "vmstate")
    assert got.meta.files[DISK].size == 4096
    assert cache.verify(got, layer_check=sound) == (None, 4096 + 8192)


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "grow"])
def test_verify_names_the_damaged_file(tmp_path: Path, damage: str) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0, live=True)
    got = cache.get(k(1))
    assert got is not None
    state = got.path / "vmstate"
    if damage == "flip":
        flip(state)
    elif damage == "truncate":
        os.truncate(state, 0)
    elif damage == "remove":
        state.unlink()
    else:
        with open(state, "ab") as fh:
            fh.write(b"x")
    problem, _ = cache.verify(got, layer_check=sound)
    assert problem is not None and problem.startswith("vmstate ")
    # Only the disk asked for: the damaged memory state is not read.
    assert cache.verify(got, [DISK], layer_check=sound)[0] is None


def test_verify_runs_the_layer_check(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0)
    got = cache.get(k(1))
    assert got is not None
    problem, _ = cache.verify(got, layer_check=lambda disk: "Image is not in qcow2 format")
    assert problem == "disk.qcow2: Image is not in qcow2 format"
    # The real check: random bytes are no qcow2 image.
    assert "disk.qcow2" in (cache.verify(got)[0] or "")


def test_an_entry_without_digests_is_never_trusted(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0)
    meta = cache.root / k(1) / "meta.json"
    meta.write_text(meta.read_text().replace('"files"', '"filesX"'))
    got = cache.get(k(1))
    assert got is not None and cache.verify(got, layer_check=sound)[0] == "it has no recorded digests"


def test_a_damaged_layer_is_discarded_with_everything_stacked_on_it(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0)
    entry(cache, k(2), k(1), 1)
    entry(cache, k(3), k(2), 2, live=True)
    entry(cache, k(4), k(2), 2)  # another branch on the damaged entry: unusable too
    flip(cache.root / k(2) / DISK)
    c = chain(cache, 3)
    point = c.restore_point()
    assert point is not None and point.key == k(1)  # the deepest good ancestor
    assert [e.key for e, _ in c.rejected] == [k(2)]
    assert "does not match its digest" in c.rejected[0][1]
    assert sorted(e.key for e in cache.entries()) == [k(1)]
    assert c.saved == {0: point}
    c.close()


def test_a_damaged_memory_state_costs_only_its_own_entry(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0, live=True)
    entry(cache, k(2), k(1), 1, live=True)
    os.truncate(cache.root / k(2) / "vmstate", 10)
    c = chain(cache, 2)
    point = c.restore_point()
    assert point is not None and point.key == k(1)
    assert [e.key for e, _ in c.rejected] == [k(2)] and "bytes" in c.rejected[0][1]
    assert c.verified_bytes > 0 and c.verify_seconds >= 0
    c.close()


def test_a_damaged_entry_held_by_another_build_is_not_used_but_stays(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    entry(cache, k(1), None, 0)
    entry(cache, k(2), k(1), 1)
    other = chain(cache, 2)
    assert other.restore_point() is not None  # holds both (shared locks)
    flip(cache.root / k(2) / DISK)
    mine = chain(cache, 2)
    point = mine.restore_point()
    assert point is not None and point.key == k(1)
    assert cache.get(k(2)) is not None  # the other build still holds it
    other.close()
    mine.close()


def test_a_guest_that_disowns_its_checkpoint_sends_the_build_one_level_down(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1"), shell("two", "echo 2"), shell("three", "echo 3")]
    first = FakePlatform(tmp_path, checkpoints=True)
    assert run_build(template(*steps), first, tmp_path).run_state is RunState.Succeeded
    # Each checkpoint wrote its own key into the guest: the marker the resumed guest must show.
    assert len(first.marks) == 4 and len(set(first.marks)) == 4

    platform = FakePlatform(tmp_path, checkpoints=True, mismatch={3})
    record = run_build(template(*steps), platform, tmp_path)
    assert record.run_state is RunState.Succeeded
    assert platform.events[1:3] == ["boot build from checkpoint 3", "boot build from checkpoint 2"]
    assert ran_steps(record) == ["customize[2] Shell 'three'"]
    assert restored_steps(record)[-2:] == ["customize[0] Shell 'one'", "customize[1] Shell 'two'"]
    log = (Path(record.output_dir or "").parent / "customization.log").read_text()
    assert "refused: fake: checkpoint 3 disowned" in log


def test_damaged_checkpoints_in_a_real_build_flow(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1"), shell("two", "echo 2")]
    assert (
        run_build(template(*steps), FakePlatform(tmp_path, checkpoints=True), tmp_path).run_state
        is RunState.Succeeded
    )
    cache = CheckpointCache()
    deepest = max(cache.entries(), key=lambda e: e.meta.depth)
    flip(deepest.path / "vmstate", 0)
    platform = FakePlatform(tmp_path, checkpoints=True)
    record = run_build(template(*steps), platform, tmp_path)
    assert record.run_state is RunState.Succeeded
    assert "boot build from checkpoint 1" in platform.events  # one level down, then step two again
    assert ran_steps(record) == ["customize[1] Shell 'two'"]
    log = (Path(record.output_dir or "").parent / "customization.log").read_text()
    assert f"checkpoint {deepest.key[:12]} after" in log and "does not match its digest" in log
    assert "checkpoints verified:" in log


# ---- quiesce (host side) ----------------------------------------------------------------------------


def test_parse_frozen() -> None:
    q = quiesce.parse_frozen("frozen: / /boot ; unfrozen:  /boot/efi")
    assert q.frozen == ("/", "/boot") and q.unfrozen == ("/boot/efi",)
    assert quiesce.parse_frozen("frozen: none; unfrozen: none") == quiesce.Quiesced((), ())
    assert quiesce.parse_frozen(r"frozen: /mnt/a\040b /").frozen == ("/mnt/a b", "/")


def test_freeze_command_carries_the_script_and_a_hex_mark() -> None:
    command = quiesce.freeze_command(k(7), hold=12)
    assert command.startswith("sudo -n sh -c ") and command.endswith(f" localbuilder-freeze 12 {k(7)}")
    assert "fsfreeze -f" in command and quiesce.MARKER in command
    with pytest.raises(ValueError):
        quiesce.freeze_command("$(reboot)")


def test_quiesced_holds_the_guest_while_the_block_runs() -> None:
    comm = FakeCommunicator(default=FakeReply(stdout="frozen: /; unfrozen: none\nthawed\n"), connected=True)
    seen: list[str] = []
    with quiesce.quiesced(comm, k(1), timeout=5) as state:
        seen.append("cut")
        assert state.frozen == ("/",)
    assert seen == ["cut"]
    assert comm.events[-2].startswith("hold: sudo -n sh -c") and comm.events[-1].startswith("released:")


def test_quiesced_refuses_a_root_that_did_not_freeze() -> None:
    comm = FakeCommunicator(default=FakeReply(stdout="frozen: /boot; unfrozen: /\nthawed\n"), connected=True)
    with pytest.raises(CheckpointError, match="root filesystem could not be frozen"):
        with quiesce.quiesced(comm, k(1), timeout=5):
            raise AssertionError("the block must not run")


def test_quiesced_refuses_a_guest_that_thawed_on_its_own() -> None:
    comm = FakeCommunicator(
        default=FakeReply(stdout="frozen: /; unfrozen: none\nthawed: timeout\n", exit_status=3),
        connected=True,
    )
    with pytest.raises(CheckpointError, match="thawed before the checkpoint was cut"):
        with quiesce.quiesced(comm, k(1), timeout=5):
            pass


def test_confirm_reads_the_marker_back() -> None:
    comm = FakeCommunicator({f"sudo -n cat {quiesce.MARKER}": k(2) + "\n"}, connected=True)
    quiesce.confirm(comm, k(2), timeout=5)
    with pytest.raises(CheckpointMismatch, match=f"says it is checkpoint {k(2)[:12]}"):
        quiesce.confirm(comm, k(3), timeout=5)
    empty = FakeCommunicator({f"sudo -n cat {quiesce.MARKER}": FakeReply(exit_status=1)}, connected=True)
    with pytest.raises(CheckpointMismatch, match="no checkpoint"):
        quiesce.confirm(empty, k(3), timeout=5)


def test_keys_changed_with_the_format() -> None:
    # Entries of format 1 (no digests, cut without a freeze) must never match a key of this version.
    assert chain_keys({"a": 1}, [], []) != ["0" * 64]
    from localbuilder import checkpoints

    assert checkpoints.FORMAT >= 2


def test_freeze_script_is_standalone_posix_sh(tmp_path: Path) -> None:
    """It runs in the guest only (it would freeze the host's filesystems here): checked for syntax with
    the POSIX shells Debian and RHEL use, and for the header guest_scripts/README.md requires."""
    import shutil
    import subprocess

    script = Path(__file__).resolve().parents[2] / "guest_scripts" / "freeze.sh"
    text = script.read_text()
    assert text == quiesce.script_text()  # the packaged copy is this file
    assert "localbuilder" not in text.split("set -u", 1)[1].replace("/var/lib/localbuilder", "").replace(
        "/run/localbuilder", "")
    for header in ("# Inputs:", "# Output", "# Exit codes:", "# Idempotency:", "# Standalone:"):
        assert header in text
    for sh in ("dash", "bash", "sh"):
        if shutil.which(sh):
            subprocess.run([sh, "-n", str(script)], check=True)


# ---- room for the build (platform side, real filesystems) -------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 600 MiB tmpfs: a disk that a checkpoint of a 1 GiB guest would fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with tmpfs(tmp_path / "small", "size=600m") as mnt:
        yield mnt


def test_a_checkpoint_that_would_starve_the_build_is_refused(small_fs: Path) -> None:
    from localbuilder.guest import local as platform

    cache = CheckpointCache(small_fs / "cache" / "checkpoints")
    entry(cache, k(1), None, 0)
    staging = cache.root / ".tmp-x"
    staging.mkdir()
    top = small_fs / "top.qcow2"
    top.write_bytes(os.urandom(8 * 1024 * 1024))  # 8 MiB the new layer may take
    # With a 1 GiB memory state it cannot fit in 600 MiB: refused before anything is written.
    with pytest.raises(CheckpointError) as caught:
        platform._check_room(top, staging, small_fs, memory=1024**3)
    message = caught.value.message
    assert "not enough space for a checkpoint" in message and "the checkpoint cache" in message
    assert "holds" in message and "cache prune" in (caught.value.hint or "")
    assert "--no-cache" in (caught.value.hint or "")
    # A disk-only checkpoint of 8 MiB fits when nothing else needs the room (conversion elsewhere).
    elsewhere = Path("/")
    platform._check_room(top, staging, elsewhere, memory=0)


def test_a_save_that_ran_out_of_space_says_so(small_fs: Path) -> None:
    import errno

    from localbuilder.errors import BackendError
    from localbuilder.guest import local as platform

    cache = CheckpointCache(small_fs / "cache" / "checkpoints")
    cache.root.mkdir(parents=True)
    staging = cache.root / ".tmp-y"
    staging.mkdir()
    full = platform._space_error(OSError(errno.ENOSPC, "No space left on device"), staging)
    assert isinstance(full, CheckpointError) and "ran out of space" in full.message
    assert "checkpoint cache" in full.message and "cache prune" in (full.hint or "")
    other = BackendError("saving the guest's memory failed: Unable to write to socket: Broken pipe")
    assert platform._space_error(other, staging) is other  # not a space problem: said as it is


def test_a_running_build_pins_its_chain_as_it_grows(tmp_path: Path) -> None:
    """A SIGKILLed build never reaches its end; recovery then marks it Failed (resumable), so the chain
    must already be pinned while the build runs."""
    import json as _json

    from localbuilder import pins
    from localbuilder.communicator.fake import FakeCall

    seen: list[list[str]] = []

    def look(call: FakeCall) -> FakeReply:
        cache = CheckpointCache()
        for found in pins.pins_dir(cache.root).glob("*.json"):
            seen.append(list(_json.loads(found.read_text())["keys"]))
            assert [p.record.run_state for p in pins.load(cache.root)] == [RunState.Running]
        return FakeReply()

    platform = FakePlatform(tmp_path, checkpoints=True,
                            comm_for=lambda purpose: FakeCommunicator({re.compile("."): look}))
    record = run_build(template(shell("one", "echo 1"), shell("two", "echo 2")), platform, tmp_path)
    assert record.run_state is RunState.Succeeded
    # While the steps ran: the booted source, then also step one (each pin written as it was saved).
    assert [len(keys) for keys in seen][:1] == [1] and max(len(keys) for keys in seen) >= 2
    # Succeeded: nothing to resume, the pin is gone.
    assert not list(pins.pins_dir(CheckpointCache().root).glob("*.json"))


def test_a_disowned_checkpoint_held_by_another_build_is_not_tried_twice(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1"), shell("two", "echo 2")]
    assert run_build(template(*steps), FakePlatform(tmp_path, checkpoints=True), tmp_path).run_state \
        is RunState.Succeeded
    cache = CheckpointCache()
    deepest = max(cache.entries(), key=lambda e: e.meta.depth)
    other = chain(cache, 1)
    assert other.holder.hold(deepest)  # another build holds it: it cannot be deleted
    platform = FakePlatform(tmp_path, checkpoints=True, mismatch={2})
    record = run_build(template(*steps), platform, tmp_path)
    assert record.run_state is RunState.Succeeded
    assert platform.events[1:3] == ["boot build from checkpoint 2", "boot build from checkpoint 1"]
    assert cache.get(deepest.key) is not None
    other.close()
