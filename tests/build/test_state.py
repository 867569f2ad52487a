"""state.json: round trip, atomic writes, run lookup by prefix, crash reconciliation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localbuilder.errors import UsageError
from localbuilder.state import (
    KeptGuest,
    LastRunStatus,
    PhaseTiming,
    ProcessInfo,
    RunDir,
    RunOutput,
    RunRecord,
    RunState,
    RunSubState,
    find_run,
    iter_runs,
    reconcile,
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def full_record() -> RunRecord:
    return RunRecord(
        run_id="20260101-000000-abcdef",
        template_name="hello",
        template_file="/x/hello.json",
        last_run_status=LastRunStatus(
            start_time="2026-01-01T00:00:00Z",
            end_time="2026-01-01T00:05:00Z",
            run_state=RunState.PartiallySucceeded,
            run_sub_state=RunSubState.Distributing,
            message="img: not uploaded",
        ),
        run_outputs=(
            RunOutput(
                "vhd", "Succeeded", artifact_uri="file:///o/vhd.vhd", artifact_tags={"a": "b"}, type="VHD"
            ),
            RunOutput(
                "img", "Failed", artifact_id="/subscriptions/x", type="ManagedImage", note="not uploaded"
            ),
        ),
        phases=(PhaseTiming("boot", 61.5), PhaseTiming("customize[0] Shell 'x'", 2.25, ok=False)),
        process=ProcessInfo(pid=123, host="h", start_ticks=99),
        kept_guest=KeptGuest("127.0.0.1", 2222, "lbuser", "/k", "qemu", pid=7),
        output_dir="/o",
        failed_step="customize[0] Shell 'x'",
        resume_times=("2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"),
    )


def test_round_trip_through_json() -> None:
    record = full_record()
    again = RunRecord.from_dict(json.loads(json.dumps(record.as_dict())))
    assert again == record


def test_a_state_without_resume_times_still_loads() -> None:
    d = full_record().as_dict()
    del d["resumeTimes"]  # written before `build --resume` kept the start time
    assert RunRecord.from_dict(d).resume_times == ()


def test_aib_field_names() -> None:
    d = full_record().as_dict()
    assert set(d["lastRunStatus"]) == {"startTime", "endTime", "runState", "runSubState", "message"}
    assert d["runOutputs"][0]["artifactUri"] == "file:///o/vhd.vhd"
    assert d["runOutputs"][1]["provisioningState"] == "Failed"


def test_create_writes_queued_state_privately(home: Path) -> None:
    run = RunDir.create("my template", Path("/t.json"))
    record = run.read()
    assert record.run_state is RunState.Running
    assert record.last_run_status.run_sub_state is RunSubState.Queued
    assert record.process is not None and record.process.pid == os.getpid()
    assert run.path.parent.name == "my_template"
    assert oct(run.path.parent.stat().st_mode & 0o777) == "0o700"
    assert not list(run.path.glob(".*.tmp"))  # the atomic write left no temp file


def test_find_run_by_prefix_and_ambiguity(home: Path) -> None:
    a = RunDir.create("t", Path("/t.json"))
    b = RunDir.create("t", Path("/t.json"))
    assert find_run(a.run_id).path == a.path
    assert find_run(f"t/{b.run_id[:-1]}").path == b.path
    with pytest.raises(UsageError, match="matches 2 runs"):
        find_run(a.run_id[:9])
    with pytest.raises(UsageError, match="no run matches"):
        find_run("nope")
    assert [r.run_id for r in iter_runs("t")] == sorted([a.run_id, b.run_id])


def test_reconcile_marks_dead_build_failed(home: Path) -> None:
    run = RunDir.create("t", Path("/t.json"))
    record = run.read()
    assert record.process is not None
    # A pid that cannot exist (beyond pid_max) stands for a build process that was SIGKILLed.
    run.write(record.__class__(**{**record.__dict__, "process": ProcessInfo(2**30, record.process.host)}))
    fixed = reconcile(run)
    assert fixed.run_state is RunState.Failed
    assert "ended without recording a result" in fixed.last_run_status.message
    assert run.read().run_state is RunState.Failed


def test_reconcile_keeps_live_build_running(home: Path) -> None:
    run = RunDir.create("t", Path("/t.json"))
    assert reconcile(run).run_state is RunState.Running


def test_unreadable_state_is_a_clear_error(home: Path) -> None:
    run = RunDir.create("t", Path("/t.json"))
    run.state_file.write_text("{not json")
    with pytest.raises(Exception, match="unreadable run state"):
        run.read()
