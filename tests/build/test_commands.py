"""show-runs, logs, cancel and the build verb's input errors, through the real CLI entry point."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localbuilder.__main__ import main
from localbuilder.state import KeptGuest, ProcessInfo, RunDir, RunState


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def finished_run(name: str = "tpl", state: RunState = RunState.Succeeded, message: str = "") -> RunDir:
    run = RunDir.create(name, Path("/t.json"))
    record = run.read().with_status(run_state=state, message=message, end_time="2026-01-01T00:00:00Z")
    run.write(record)
    return run


def test_show_runs_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    a = finished_run("alpha", RunState.Failed, "customize[0] Shell 'x': failed with exit code 3\nmore")
    finished_run("beta")
    assert main(["show-runs"]) == 0
    out = capsys.readouterr().out
    assert a.run_id in out and "Failed" in out and "Succeeded" in out
    assert main(["show-runs", "alpha", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["runId"] for d in data] == [a.run_id]
    assert data[0]["lastRunStatus"]["runState"] == "Failed"


def test_logs_prints_customization_log(capsys: pytest.CaptureFixture[str]) -> None:
    run = finished_run()
    run.customization_log.write_text("2026-01-01T00:00:00.000Z [customize[0] Shell 'x'] stdout: hello\n")
    assert main(["logs", run.run_id[:15]]) == 0
    assert "stdout: hello" in capsys.readouterr().out


def test_logs_follow_ends_with_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir.create("tpl", Path("/t.json"))  # Running, owned by this (live) process
    run.customization_log.write_text("first\n")
    import threading

    def finish() -> None:
        time.sleep(1.0)
        with open(run.customization_log, "a") as fh:
            fh.write("second\n")
        run.write(run.read().with_status(run_state=RunState.Succeeded))

    t = threading.Thread(target=finish)
    t.start()
    assert main(["logs", run.run_id, "--follow"]) == 0
    t.join()
    assert capsys.readouterr().out == "first\nsecond\n"


def test_cancel_signals_the_build_process(capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir.create("tpl", Path("/t.json"))
    # A stand-in for the build process: SIGTERM ends it without it writing a state.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = ProcessInfo.current()
        run.write(
            dataclasses.replace(run.read(), process=dataclasses.replace(info, pid=proc.pid, start_ticks=None))
        )
        assert main(["cancel", run.run_id, "--wait", "20"]) == 0
        assert proc.wait(timeout=10) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.cancel_requested()
    assert run.read().run_state is RunState.Canceled  # the dead process + the request → Canceled
    assert "Canceled" in capsys.readouterr().out


def test_cancel_stops_a_kept_guest(capsys: pytest.CaptureFixture[str]) -> None:
    run = finished_run(state=RunState.Failed)
    guest = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for qemu
    try:
        kept = KeptGuest("127.0.0.1", 2222, "packer", "/k", "qemu", pid=guest.pid)
        run.write(dataclasses.replace(run.read(), kept_guest=kept))
        assert main(["cancel", run.run_id]) == 0
        assert guest.wait(timeout=10) != 0
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.wait()
    assert run.read().kept_guest is None
    assert "stopped the guest" in capsys.readouterr().out


def test_cancel_finished_run_is_a_no_op(capsys: pytest.CaptureFixture[str]) -> None:
    run = finished_run()
    assert main(["cancel", run.run_id]) == 0
    assert "already ended: Succeeded" in capsys.readouterr().out


def test_unknown_run_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "does-not-exist"]) == 2
    assert "no run matches" in capsys.readouterr().err


def test_build_invalid_template_exits_2_with_all_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = tmp_path / "bad.json"
    tpl.write_text(json.dumps({
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian"},
            "customize": [{"type": "Shell", "name": "x"}],
            "distribute": [],
        },
    }))  # fmt: skip
    assert main(["build", str(tpl)]) == 2
    err = capsys.readouterr().err
    assert "properties.source" in err and "properties.customize[0]" in err
    assert not (tmp_path / "home" / "runs").exists()  # no run was created


def test_build_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "/nonexistent/t.json"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_build_bad_param(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tpl = tmp_path / "t.json"
    tpl.write_text("{}")
    assert main(["build", str(tpl), "--param", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
