"""Checkpoints without a VM: keys, the cache (commit, lookup, prune, locks) and the orchestrator's use
of them on FakePlatform (which steps run, resume of a failed run, --no-cache, a failing checkpoint)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from localbuilder import checkpoints
from localbuilder.checkpoints import CheckpointCache, EntryMeta, Holder, chain_keys
from localbuilder.communicator.fake import FakeCommunicator, FakeReply
from localbuilder.errors import UsageError
from localbuilder.orchestrator import INVOCATION_FILE, Build, BuildOptions
from localbuilder.orchestrator.chain import BuildChain
from localbuilder.state import RunDir, RunRecord, RunState
from localbuilder.template import model
from tests.build.fakes import FakePlatform


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def shell(name: str, *inline: str) -> model.ShellCustomizer:
    return model.ShellCustomizer(name=name, inline=tuple(inline))


def template(*steps: model.ShellCustomizer) -> model.Template:
    return model.Template(
        name="hello",
        api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        customize=steps,
        distribute=(model.VhdDistributor(run_output_name="out"),),
    )


def ran_steps(record: RunRecord) -> list[str]:
    """The customizers that really ran in this run, from its customization.log (the newest attempt)."""
    text = (Path(record.output_dir or "").parent / "customization.log").read_text()
    last = text.rsplit("resuming run", 1)[-1]
    return re.findall(r"start: (customize\[\d+\] Shell '[^']+')", last)


def restored_steps(record: RunRecord) -> list[str]:
    text = (Path(record.output_dir or "").parent / "customization.log").read_text()
    return re.findall(r"(customize\[\d+\] Shell '[^']+'): restored from checkpoint", text)


def run_build(tpl: model.Template, platform: FakePlatform, tmp_path: Path, **opts: Any) -> RunRecord:
    (tmp_path / "tpl").mkdir(exist_ok=True)
    return Build(tpl, tmp_path / "tpl" / "t.json", platform, BuildOptions(**opts)).execute()


# ---- keys ---------------------------------------------------------------------------------------------


def test_keys_follow_the_prefix() -> None:
    base = {"source": "a", "accel": "tcg"}
    a, b, c = shell("a", "echo a"), shell("b", "echo b"), shell("c", "echo c")
    keys = chain_keys(base, [a, b, c], [{}, {}, {}])
    assert len(keys) == 4 and len(set(keys)) == 4
    edited = chain_keys(base, [a, b, shell("c", "echo C")], [{}, {}, {}])
    assert edited[:3] == keys[:3] and edited[3] != keys[3]
    # A changed script behind the same URL is a different step (and changes everything after it).
    fetched = chain_keys(base, [a, b, c], [{}, {"https://x/s.sh": "1" * 64}, {}])
    assert fetched[:2] == keys[:2] and fetched[2] != keys[2] and fetched[3] != keys[3]
    # Anything that shapes the booted guest changes every key.
    other = chain_keys({**base, "accel": "kvm"}, [a, b, c], [{}, {}, {}])
    assert not set(other) & set(keys)
    # Reordering steps is a different history.
    assert chain_keys(base, [b, a, c], [{}, {}, {}])[1:] != keys[1:]


def test_parse_size() -> None:
    assert checkpoints.parse_size("20G") == 20 * 1024**3
    assert checkpoints.parse_size("512MiB") == 512 * 1024**2
    assert checkpoints.parse_size("0") == 0
    with pytest.raises(UsageError, match="not a size"):
        checkpoints.parse_size("lots")


# ---- the cache ------------------------------------------------------------------------------------------


def make_entry(cache: CheckpointCache, key: str, parent: str | None, depth: int, size: int = 1000) -> None:
    with cache.staging(key) as tmp:
        (tmp / "disk.qcow2").write_bytes(os.urandom(size))
        cache.commit(tmp, EntryMeta(key=key, parent=parent, depth=depth, title=f"d{depth}", template="t",
                                    run_id="r", created="now", backing="/src", backing_format="qcow2"))


def k(n: int) -> str:
    return f"{n:064x}"


def age(cache: CheckpointCache, key: str, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(cache.root / key / "lock", (t, t))


def test_commit_is_atomic_and_lookup_follows_parents(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    with cache.staging(k(1)) as tmp:
        (tmp / "disk.qcow2").write_bytes(b"x")
        assert cache.get(k(1)) is None  # staged, not visible
    assert cache.entries() == [] and not list(cache.root.iterdir())  # an abandoned staging dir is gone
    make_entry(cache, k(1), None, 0)
    make_entry(cache, k(2), k(1), 1)
    make_entry(cache, k(4), k(3), 2)  # orphan: its parent k(3) does not exist
    assert [e.key for e in cache.deepest([k(1), k(2), k(3)])] == [k(1), k(2)]
    assert [e.key for e in cache.deepest([k(1), k(3), k(4)])] == [k(1)]
    # A directory without meta.json (a crash mid-write would leave only .tmp-*, but be strict anyway).
    (cache.root / k(9)).mkdir()
    (cache.root / k(9) / "disk.qcow2").write_bytes(b"x")
    assert cache.get(k(9)) is None
    # The same key committed twice (two parallel builds): the first stays, the second is discarded.
    make_entry(cache, k(1), None, 0, size=10)
    assert (cache.root / k(1) / "disk.qcow2").stat().st_size == 1000
    assert not list(cache.root.glob(".tmp-*"))


def test_prune_keeps_newest_whole_chains_and_never_a_held_entry(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    # Two chains: old (1→2→3) and new (5→6); 4 KiB each.
    for key, parent, depth in ((1, None, 0), (2, 1, 1), (3, 2, 2), (5, None, 0), (6, 5, 1)):
        make_entry(cache, k(key), k(parent) if parent else None, depth, size=4096)
    for key, ago in ((1, 300), (2, 300), (3, 300), (5, 10), (6, 10)):
        age(cache, k(key), ago)
    one = cache.get(k(1)).size()  # type: ignore[union-attr]
    # Room for three entries: the new chain (2) and the old chain's root (1).
    result = cache.prune(3 * one)
    assert sorted(e.key for e in result.kept) == [k(1), k(5), k(6)]
    assert sorted(e.key for e in result.removed) == [k(2), k(3)]
    assert result.freed >= 2 * 4096
    # A held entry (a build uses it) is never deleted, nor are its ancestors; prune reports it.
    holder = Holder()
    entry6 = cache.get(k(6))
    assert entry6 is not None and holder.hold(entry6)
    entry5 = cache.get(k(5))
    assert entry5 is not None and holder.hold(entry5)
    result = cache.prune(0)
    assert {e.key for e in result.in_use} == {k(5), k(6)}
    assert {e.key for e in result.removed} == {k(1)}
    assert cache.get(k(6)) is not None and cache.get(k(5)) is not None
    holder.close()
    assert {e.key for e in cache.prune(0, everything=True).removed} == {k(5), k(6)}
    assert cache.entries() == []


def test_prune_removes_stale_staging_dirs_only(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    cache.root.mkdir(parents=True)
    stale, fresh = cache.root / ".tmp-aaaa-1", cache.root / ".tmp-bbbb-2"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * checkpoints.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    cache.prune(10**9)
    assert not stale.exists() and fresh.exists()  # fresh: a build may be writing it right now


def test_chain_save_skips_children_of_an_unsaved_parent(tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path / "c")
    keys = [k(1), k(2), k(3)]
    chain = BuildChain(cache, keys, ["boot", "a", "b"], template="t", run_id="r", source=tmp_path / "src",
                       source_format="raw")

    def capture(staging: Path, backing: Path, fmt: str) -> None:
        (staging / "disk.qcow2").write_text(f"{backing}|{fmt}")

    assert chain.save(1, capture) is None  # no depth 0 yet
    e0 = chain.save(0, capture)
    e1 = chain.save(1, capture)
    assert e0 is not None and e1 is not None
    assert (e0.disk.read_text(), e0.meta.backing) == (f"{tmp_path / 'src'}|raw", str(tmp_path / "src"))
    assert e1.disk.read_text() == f"{e0.disk}|qcow2" and e1.meta.parent == e0.key
    chain.close()


# ---- the orchestrator -------------------------------------------------------------------------------------


def test_second_build_runs_only_the_edited_last_step(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1"), shell("two", "echo 2"), shell("three", "echo 3")]
    first = run_build(template(*steps), FakePlatform(tmp_path, checkpoints=True), tmp_path)
    assert first.run_state is RunState.Succeeded
    assert ran_steps(first) == ["customize[0] Shell 'one'", "customize[1] Shell 'two'",
                                "customize[2] Shell 'three'"]
    assert len(CheckpointCache().entries()) == 4  # booted source + one per step

    platform = FakePlatform(tmp_path, checkpoints=True)
    edited = run_build(template(steps[0], steps[1], shell("three", "echo THREE")), platform, tmp_path)
    assert edited.run_state is RunState.Succeeded
    assert ran_steps(edited) == ["customize[2] Shell 'three'"]
    assert restored_steps(edited) == ["customize[0] Shell 'one'", "customize[1] Shell 'two'"]
    assert platform.events[1] == "boot build from checkpoint 2"
    # Deprovision ran on a new layer above the checkpoint of the edited step, never in a checkpoint.
    assert platform.events.index("checkpoint 1") < platform.events.index("deprovision")

    # The same template again: every step comes from the cache; deprovision still runs.
    again = FakePlatform(tmp_path, checkpoints=True)
    record = run_build(template(steps[0], steps[1], shell("three", "echo THREE")), again, tmp_path)
    assert record.run_state is RunState.Succeeded and ran_steps(record) == []
    assert "boot build from checkpoint 3" in again.events and "deprovision" in again.events


def test_no_cache_neither_uses_nor_stores(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1")]
    run_build(template(*steps), FakePlatform(tmp_path, checkpoints=True), tmp_path)
    n = len(CheckpointCache().entries())
    platform = FakePlatform(tmp_path, checkpoints=True)
    record = run_build(template(*steps), platform, tmp_path, use_cache=False)
    assert ran_steps(record) == ["customize[0] Shell 'one'"]
    assert not any(e.startswith("checkpoint") for e in platform.events)
    assert "boot build qcow2" in platform.events
    assert len(CheckpointCache().entries()) == n


def test_a_failing_checkpoint_does_not_fail_the_build(tmp_path: Path) -> None:
    platform = FakePlatform(tmp_path, checkpoints=True, checkpoint_error="disk full")
    record = run_build(template(shell("one", "echo 1"), shell("two", "echo 2")), platform, tmp_path)
    assert record.run_state is RunState.Succeeded
    assert len(ran_steps(record)) == 2
    log = (Path(record.output_dir or "").parent / "customization.log").read_text()
    assert "checkpoint after booted source failed: disk full" in log
    assert CheckpointCache().entries() == []
    assert not list(CheckpointCache().root.glob(".tmp-*"))  # the staging dir went away


def test_resume_a_failed_run_from_its_last_good_step(tmp_path: Path) -> None:
    steps = [shell("one", "echo 1"), shell("two", "echo 2"), shell("three", "exit 1")]
    failing = FakeCommunicator({re.compile("customize-2-"): FakeReply(exit_status=1, stderr="E: broken")})
    platform = FakePlatform(tmp_path, checkpoints=True, comm_for=lambda purpose: failing)
    invocation = {"template": str(tmp_path / "tpl" / "t.json"), "onError": None}
    failed = run_build(template(*steps), platform, tmp_path, invocation=invocation)
    assert failed.run_state is RunState.Failed and failed.failed_step == "customize[2] Shell 'three'"
    run_dir = Path(failed.output_dir or "").parent
    assert json.loads((run_dir / INVOCATION_FILE).read_text()) == invocation
    assert oct((run_dir / INVOCATION_FILE).stat().st_mode & 0o777) == "0o600"

    fixed = template(steps[0], steps[1], shell("three", "echo fixed"))
    resumed = run_build(fixed, FakePlatform(tmp_path, checkpoints=True), tmp_path, resume_run=run_dir)
    assert resumed.run_id == failed.run_id
    assert resumed.run_state is RunState.Succeeded and resumed.failed_step is None
    assert ran_steps(resumed) == ["customize[2] Shell 'three'"]
    assert "resuming run" in (run_dir / "customization.log").read_text()
    assert len(list(run_dir.parent.iterdir())) == 1  # no second run directory

    with pytest.raises(UsageError, match="succeeded: there is nothing to resume"):
        run_build(fixed, FakePlatform(tmp_path, checkpoints=True), tmp_path, resume_run=run_dir)


def test_resume_refuses_a_running_run(tmp_path: Path) -> None:
    run = RunDir.create("hello", tmp_path / "t.json")  # Running, owned by this (live) process
    with pytest.raises(UsageError, match="is still Running"):
        run_build(template(shell("one", "echo 1")), FakePlatform(tmp_path), tmp_path, resume_run=run.path)


def test_a_build_never_stacks_on_a_checkpoint_another_build_saved(tmp_path: Path) -> None:
    """Two builds of the same template at once: same keys, different bytes. The one that saves a point
    second must not put its later layers on the other's (its disk did not come from it)."""
    cache = CheckpointCache(tmp_path / "c")
    keys = [k(1), k(2), k(3)]

    def chain() -> BuildChain:
        return BuildChain(cache, keys, ["boot", "a", "b"], template="t", run_id="r",
                          source=tmp_path / "src", source_format="raw", layer_check=lambda disk: None)

    def capture(staging: Path, backing: Path, fmt: str) -> None:
        (staging / "disk.qcow2").write_text(str(backing))

    first, second = chain(), chain()
    assert first.restore_point() is None and second.restore_point() is None
    assert first.save(0, capture) is not None
    assert second.save(0, capture) is None and not second.enabled
    assert second.save(1, capture) is None
    assert first.save(1, capture) is not None
    # A later build resumes from what the first saved and stacks on exactly that.
    third = chain()
    restored = third.restore_point()
    assert restored is not None and restored.meta.depth == 1
    e2 = third.save(2, capture)
    assert e2 is not None and e2.disk.read_text() == str(restored.disk)
    for c in (first, second, third):
        c.close()
