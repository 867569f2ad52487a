"""A guest kept by ``--on-error abort`` survives ``cache prune --all`` (issue #12, item 6), on a real guest.

One cold boot: build 1 fails and keeps its guest; ``cache prune --all`` keeps its chain and says why; the
printed ssh command works; ``localbuilder cancel`` stops it. Build 2 of the same template resumes live from
build 1's checkpoint (its kept guest then runs on the cache's layers and uses the cache's build key — the
case the user hit): prune --all keeps it and ssh still works; ``cache prune --all --force`` stops the
guest and removes the chain. No qemu is left.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from localbuilder.checkpoints import CheckpointCache
from localbuilder.state import RunDir, RunState, iter_runs
from tests.build.test_build_integration import REPO, home, processes_mentioning, write_template

pytestmark = pytest.mark.integration

__all__ = ["home"]  # the fixture, imported for its side effect


def lb(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, as a user runs it (a build's qemu outlives it when kept)."""
    return subprocess.run([sys.executable, "-m", "localbuilder", *args], env=dict(os.environ), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def ssh(run: RunDir, command: str) -> subprocess.CompletedProcess[str]:
    """The exact ssh command the failed build printed, plus a command."""
    kept = run.read().kept_guest
    assert kept is not None
    argv = [*shlex.split(kept.ssh_command()), "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def failed_build(tpl: Path, name: str, previous: set[str]) -> RunDir:
    result = lb("build", str(tpl), "--on-error", "abort")
    assert result.returncode == 1, result.stderr[-3000:]
    [run] = [r for r in iter_runs(name) if r.run_id not in previous]
    record = run.read()
    assert record.failed_step == "customize[1] Shell 'broken'", record.last_run_status.message
    assert record.run_state is RunState.Failed
    assert record.kept_guest is not None and record.kept_guest.pid is not None
    assert alive(record.kept_guest.pid)
    return run


def test_prune_keeps_a_kept_guests_chain_and_force_stops_it(home: Path, tmp_path: Path) -> None:
    customize = [
        {"type": "Shell", "name": "ok", "inline": ["echo pinned-ok | sudo tee /etc/lb-ok"]},
        {"type": "Shell", "name": "broken", "inline": ["echo failing", "exit 3"]},
    ]
    tpl = write_template(tmp_path / "tpl", "pinprune", customize)
    cache = CheckpointCache()

    # Build 1: cold boot, fails at customize[1], keeps its guest.
    run1 = failed_build(tpl, "pinprune", set())
    pid1 = run1.read().kept_guest.pid  # type: ignore[union-attr]
    chain = {e.key for e in cache.entries()}
    assert len(chain) == 2  # booted source + after customize[0]

    pruned = lb("cache", "prune", "--all")
    assert pruned.returncode == 0, pruned.stderr
    why = f"pinned: run pinprune/{run1.run_id} keeps its failed guest running (qemu pid {pid1}"
    assert why in pruned.stderr
    assert "removed 0 checkpoints" in pruned.stdout
    assert {e.key for e in cache.entries()} == chain
    listed = lb("cache", "list")
    assert f"{run1.run_id} (kept guest)" in listed.stdout

    result = ssh(run1, "cat /etc/lb-ok")
    assert result.returncode == 0 and result.stdout.strip() == "pinned-ok", result.stderr

    cancel = lb("cancel", run1.run_id)
    assert cancel.returncode == 0 and "stopped the guest kept by run" in cancel.stdout, cancel.stderr
    assert not alive(pid1)
    assert processes_mentioning(str(run1.path)) == []
    assert {e.key for e in cache.entries()} == chain  # still pinned: build --resume RUN needs it

    # Build 2: resumes live from build 1's checkpoint; its kept guest runs on the cache's layers.
    run2 = failed_build(tpl, "pinprune", {run1.run_id})
    kept2 = run2.read().kept_guest
    assert kept2 is not None and kept2.pid is not None
    assert "restored from checkpoint" in run2.customization_log.read_text()
    pruned = lb("cache", "prune", "--all")
    assert pruned.returncode == 0 and f"run pinprune/{run2.run_id} keeps its failed guest" in pruned.stderr
    assert chain <= {e.key for e in cache.entries()}
    result = ssh(run2, "cat /etc/lb-ok && echo again")
    assert result.returncode == 0 and result.stdout.split() == ["pinned-ok", "again"], result.stderr

    forced = lb("cache", "prune", "--all", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"stopped the guest kept by run {run2.run_id} (qemu pid {kept2.pid})" in forced.stdout
    assert not alive(kept2.pid)
    assert cache.entries() == [] and cache.staging_dirs() == []
    assert run2.read().kept_guest is None and run2.read().run_state is RunState.Failed
    for run in (run1, run2):  # like cancel: the guest's files went, its serial log stayed
        left = sorted(p.name for p in run.path.glob("vm-*/*/*"))
        assert left == ["serial.log"], left
    for path in (run1.path, run2.path, cache.root):
        assert processes_mentioning(str(path)) == []
