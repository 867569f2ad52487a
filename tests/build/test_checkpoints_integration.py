"""Checkpoints with real guests (QEMU, TCG here): incremental rebuilds and ``--resume``.

One LOCALBUILDER_HOME for the module, so the builds share the cache as a user's builds would:

1. build a three-step template (cold: boot + every step, a checkpoint after each);
2. edit only the last step and build again: only that step runs (customization.log), the guest came
   from a live checkpoint, and the VHD holds the same files as a ``--no-cache`` build of the edited
   template — and nothing of the old last step (the branch starts from the checkpoint before it);
3. a failing middle step, then ``localbuilder build --resume RUN`` after fixing it: the same run
   continues without re-running the steps before it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from localbuilder import checkpoints, vhd
from localbuilder.__main__ import main
from localbuilder.diskread import Ext4Reader, ReadAt, parse_partitions
from localbuilder.state import RunDir, RunState, iter_runs
from tests.build.test_build_integration import home, processes_mentioning, write_template

pytestmark = pytest.mark.integration

# Where customizers write and where a build's own state lives; compared between builds.
COMPARED_DIRS = ("/etc", "/usr/local", "/opt", "/srv", "/root", "/home")
# Files that differ between any two builds by design (per-boot names, seeds, logs).
VOLATILE = re.compile(r"^/etc/(hostname|hosts|ld\.so\.cache|resolv\.conf)$")


# The module-scoped LOCALBUILDER_HOME (catalog holding the Debian 12 test image), one per module.
__all__ = ["home"]


def steps(last: str) -> list[dict[str, Any]]:
    return [
        {"type": "Shell", "name": "first", "inline": ["echo first | sudo tee /etc/lb-first"]},
        {"type": "Shell", "name": "second", "inline": ["sudo mkdir -p /opt/app",
                                                        "echo second | sudo tee /opt/app/second"]},
        {"type": "Shell", "name": "last", "inline": [last]},
    ]  # fmt: skip


def runs_of(name: str) -> list[RunDir]:
    return sorted(iter_runs(name), key=lambda r: r.run_id)


def started_steps(run: RunDir, *, attempt: int = -1) -> list[str]:
    """The customizers that ran (``start:`` lines) in one attempt of the run (a --resume appends one)."""
    text = run.customization_log.read_text()
    part = re.split(r"==> resuming run ", text)[attempt]
    return re.findall(r"start: (customize\[\d\] \w+ '[^']+')", part)


def restored_steps(run: RunDir) -> list[str]:
    text = run.customization_log.read_text()
    return re.findall(r"(customize\[\d\] \w+ '[^']+'): restored from checkpoint", text)


def image_files(image: Path) -> dict[str, tuple[str, int]]:
    """path → (kind, size) under COMPARED_DIRS of the root filesystem in a fixed VHD."""
    size = vhd.read_footer(image).current_size
    read_at = ReadAt(image, size)
    parts = parse_partitions(read_at, size)
    fs = None
    for p in parts:
        candidate = Ext4Reader(image, p.start)
        try:
            listing = candidate.listdir("/etc")
        except Exception:  # noqa: BLE001 - not an ext partition
            continue
        if listing and "passwd" in listing:
            fs = candidate
            break
    assert fs is not None, f"no root filesystem in {image}"
    found: dict[str, tuple[str, int]] = {}
    todo = list(COMPARED_DIRS)
    while todo:
        d = todo.pop()
        for name, entry in (fs.listdir(d) or {}).items():
            path = f"{d.rstrip('/')}/{name}"
            if VOLATILE.match(path):
                continue
            found[path] = (entry.kind, entry.size if entry.kind == "file" else 0)
            if entry.kind == "dir":
                todo.append(path)
    return found


def build(template: Path, *args: str) -> int:
    return main(["build", str(template), *args])


def test_editing_the_last_step_reruns_only_it(home: Path, tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    first = write_template(tdir, "incr", steps("echo v1 | sudo tee /etc/lb-last-v1"))
    assert build(first, "--output-dir", str(tmp_path / "out1")) == 0
    cold = runs_of("incr")[-1]
    assert started_steps(cold) == ["customize[0] Shell 'first'", "customize[1] Shell 'second'",
                                   "customize[2] Shell 'last'"]
    entries = checkpoints.CheckpointCache().entries()
    assert len(entries) == 4 and all(e.meta.live is not None for e in entries)  # boot + 3 steps, live
    cache_files = {p: p.stat().st_mtime_ns for e in entries for p in e.path.iterdir() if p.name != "lock"}

    edited = write_template(tdir, "incr", steps("echo v2 | sudo tee /etc/lb-last-v2"))
    assert build(edited, "--output-dir", str(tmp_path / "out2")) == 0
    warm = runs_of("incr")[-1]
    assert warm.run_id != cold.run_id
    assert started_steps(warm) == ["customize[2] Shell 'last'"]
    assert restored_steps(warm) == ["customize[0] Shell 'first'", "customize[1] Shell 'second'"]
    record = warm.read()
    assert record.run_state is RunState.Succeeded
    # Checkpoints are never written once made (branching is safe): resumes and prunes leave them as they were.
    for path, mtime in cache_files.items():
        assert path.stat().st_mtime_ns == mtime, path

    assert build(edited, "--no-cache", "--output-dir", str(tmp_path / "out3")) == 0
    fresh = runs_of("incr")[-1]
    assert len(started_steps(fresh)) == 3 and restored_steps(fresh) == []

    incremental = image_files(tmp_path / "out2" / "incr.vhd")
    reference = image_files(tmp_path / "out3" / "incr.vhd")
    assert {"/etc/lb-last-v2", "/opt/app/second", "/etc/lb-first"} <= set(incremental)
    assert "/etc/lb-last-v1" not in incremental  # the old last step is not in the new branch
    only_one = sorted(set(incremental) ^ set(reference))
    assert only_one == [], f"files in only one of the two images: {only_one[:20]}"
    differ = sorted(p for p in incremental if incremental[p] != reference[p])
    assert differ == [], f"files that differ in kind or size: {differ[:20]}"
    assert processes_mentioning(str(home)) == []


def test_resume_after_fixing_the_failing_step(home: Path, tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    broken = [
        {"type": "Shell", "name": "ok", "inline": ["echo ok | sudo tee /etc/lb-ok"]},
        {"type": "Shell", "name": "flaky", "inline": ["echo 'E: mirror unreachable' >&2", "exit 4"]},
        {"type": "Shell", "name": "after", "inline": ["echo after | sudo tee /etc/lb-after"]},
    ]  # fmt: skip
    template = write_template(tdir, "resumable", broken)
    assert build(template, "--output-dir", str(tmp_path / "out")) == 1
    (failed,) = runs_of("resumable")
    record = failed.read()
    assert record.run_state is RunState.Failed and record.failed_step == "customize[1] Shell 'flaky'"

    broken[1]["inline"] = ["echo fixed | sudo tee /etc/lb-flaky"]
    write_template(tdir, "resumable", broken)
    assert main(["build", "--resume", failed.run_id]) == 0
    (resumed,) = runs_of("resumable")  # the same run, continued
    record = resumed.read()
    assert record.run_state is RunState.Succeeded and record.failed_step is None
    assert started_steps(resumed) == ["customize[1] Shell 'flaky'", "customize[2] Shell 'after'"]
    assert started_steps(resumed, attempt=0) == ["customize[0] Shell 'ok'", "customize[1] Shell 'flaky'"]
    files = image_files(tmp_path / "out" / "resumable.vhd")
    assert {"/etc/lb-ok", "/etc/lb-flaky", "/etc/lb-after"} <= set(files)
    assert processes_mentioning(str(home)) == []
