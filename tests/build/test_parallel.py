"""``build T1 T2 … --parallel N``, ``--no-cache``, invocation.json and ``--resume`` — without guests.

Several-template builds run ``tests/build/fake_build_child.py`` instead of ``python -m localbuilder``
(``commands.build.CHILD_COMMAND``): a child that sleeps, prints, fails or is canceled as its template's
``.behaviour.json`` says and records what it saw. Single builds and resumes run against a recording
stand-in for ``build.Build`` so the options the CLI hands over can be compared exactly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localbuilder import parallel
from localbuilder.__main__ import main
from localbuilder.cli import build_parser
from localbuilder.commands import build as build_cmd
from localbuilder.invocation import Invocation
from localbuilder.orchestrator import BuildOptions
from localbuilder.state import LastRunStatus, RunDir, RunRecord, RunState, RunSubState, iter_runs, now_iso
from tests.build.test_build_integration import write_template

FAKE_CHILD = Path(__file__).with_name("fake_build_child.py")
REPO = Path(__file__).resolve().parents[2]
REAL_SLEEP = time.sleep  # one test makes the loop's sleep fail
SAS = "sv=2022-11-02&ss=b&sp=rwc&sig=TOPSECRETSIG%3D"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(build_cmd, "CHILD_COMMAND", [sys.executable, str(FAKE_CHILD)])
    return tmp_path / "home"


def template(directory: Path, name: str, *, output: str | None = None, **behaviour: Any) -> Path:
    """A valid bare template named ``name`` plus the fake child's behaviour for it."""
    path = write_template(directory, name, [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
                          distribute=[{"type": "VHD", "runOutputName": output or name}])  # fmt: skip
    path.with_suffix(".behaviour.json").write_text(json.dumps(behaviour))
    return path


def trace(path: Path) -> dict[str, Any]:
    trace_file = path.with_suffix(".trace.json")
    return json.loads(trace_file.read_text()) if trace_file.exists() else {}


# ---------------------------------------------------------------------------------------------------------
# Several templates: argument checks before anything starts


def test_no_template_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build"]) == 2
    err = capsys.readouterr().err
    assert "no TEMPLATE given" in err and "--resume RUN" in err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_parallel_must_be_positive(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = template(tmp_path, "a")
    assert main(["build", str(a), str(a), "--parallel", value]) == 2
    assert "--parallel" in capsys.readouterr().err
    assert trace(a) == {}


@pytest.mark.parametrize(
    ("extra", "text"),
    [(["--resource", "x"], "--resource 'x' with 2 templates"), (["--on-error", "ask"], "needs a terminal")],
)
def test_options_that_cannot_be_shared(
    extra: list[str], text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = template(tmp_path, "a"), template(tmp_path, "b")
    assert main(["build", str(a), str(b), *extra]) == 2
    err = capsys.readouterr().err
    assert text in err and "hint:" in err
    assert trace(a) == trace(b) == {}


def test_same_output_twice_in_one_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = template(tmp_path, "a", output="web")
    b = template(tmp_path, "b", output="web")
    c = template(tmp_path, "c")
    out = tmp_path / "out"
    assert main(["build", str(a), str(b), str(c), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'web.vhd'} from {a} and {b}" in err
    assert "Drop --output-dir" in err
    assert trace(a) == trace(b) == trace(c) == {}
    # Without --output-dir each run keeps its VHD in its own run directory: no clash.
    assert main(["build", str(a), str(b)]) == 0
    assert trace(a) and trace(b)


def test_every_template_is_validated_before_any_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = template(tmp_path, "good")
    broken = tmp_path / "broken.json"
    body = json.loads(good.read_text())
    body["properties"]["customize"][0]["type"] = "NoSuchStep"
    del body["properties"]["source"]["sku"]
    broken.write_text(json.dumps(body))
    missing = tmp_path / "missing.json"
    assert main(["build", str(good), str(broken), str(missing)]) == 2
    err = capsys.readouterr().err
    assert "2 of 3 templates cannot be built" in err
    assert "properties.customize[0]" in err and "properties.source" in err  # both findings of broken
    assert f"{missing}: no such file" in err
    assert "no build was started" in err
    assert trace(good) == {}


# ---------------------------------------------------------------------------------------------------------
# Several templates: running them


def test_two_builds_relay_summary_json_and_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = template(tmp_path, "alpha", sleep=0.3, stderr=["‣ Booting guest", "\x1b[33mwarning: slow\x1b[0m"])
    b = template(tmp_path, "beta", stderr=["‣ Booting guest", "waiting for SSH: 3s\rwaiting for SSH: 4s"])
    code = main(["-q", "build", str(a), str(b), "--parallel", "2", "--accel", "tcg", "--no-cache",
                 "--param", "k=v", "--set", "properties.vmProfile.osDiskSizeGB=8", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    # Relayed line by line, attributable; a carriage-return redraw keeps only its visible part.
    assert "[alpha] ‣ Booting guest\n" in err and "[beta] ‣ Booting guest\n" in err
    assert "[beta] waiting for SSH: 4s\n" in err and "\r" not in err
    # The children got the shared options, their own template, global options and --json.
    for path in (a, b):
        argv = trace(path)["argv"]
        assert argv[:3] == ["--quiet", "build", str(path.absolute())]
        assert argv[-1] == "--json"
        joined = " ".join(argv)
        assert "--accel tcg" in joined and "--no-cache" in joined and "--param k=v" in joined
        assert "--set properties.vmProfile.osDiskSizeGB=8" in joined
    records = json.loads(out)
    assert [r["runId"] for r in records] == ["run-alpha", "run-beta"]
    table = err[err.index("TEMPLATE") :].splitlines()
    assert table[0].split() == ["TEMPLATE", "RUN", "ID", "STATE", "DURATION", "OUTPUT", "/", "FAILURE"]
    assert table[1].split()[:3] == ["alpha", "run-alpha", "Succeeded"]
    assert table[1].endswith(str(tmp_path / "alpha.vhd"))  # file:// URI shown as a path
    assert table[0].index("STATE") == table[1].index("Succeeded") == table[2].index("Succeeded")


def test_a_failing_build_does_not_disturb_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "customize[0] Shell 'hello' failed with exit code 3\nstdout tail: boom"
    bad = template(tmp_path, "bad", state="Failed", exit=1, message=message)
    good = template(tmp_path, "good", sleep=1.0)
    killed = template(tmp_path, "killed", kill_self=True)
    crash = template(tmp_path, "crash", json=False, exit=1, stderr=["error: internal error: it broke",
                                                                    "hint: this is a bug"])  # fmt: skip
    code = main(["build", str(bad), str(good), str(crash), str(killed), "--parallel", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    records = json.loads(out)
    assert [r["lastRunStatus"]["runState"] for r in records] == ["Failed", "Succeeded", "Failed", "Failed"]
    # A child that died before recording a run still gets a record of the same shape.
    assert records[2]["runId"] is None and records[2]["templateName"] == "crash"
    assert records[2]["lastRunStatus"]["message"] == "internal error: it broke"
    assert trace(good)["end"] - trace(good)["start"] >= 1.0  # ran to its end
    rows = {line.split()[0]: line for line in err[err.index("TEMPLATE") :].splitlines()[1:]}
    assert rows["bad"].endswith("customize[0] Shell 'hello' failed with exit code 3")
    assert rows["crash"].split()[1:3] == ["-", "Failed"] and rows["crash"].endswith("it broke")
    assert rows["killed"].endswith("the build process was killed by SIGKILL")


@pytest.mark.parametrize("limit", [1, 2])
def test_at_most_n_builds_at_once(limit: int, tmp_path: Path) -> None:
    paths = [template(tmp_path, f"t{i}", sleep=0.6) for i in range(3)]
    assert main(["build", *map(str, paths), "--parallel", str(limit)]) == 0
    spans = [(trace(p)["start"], trace(p)["end"]) for p in paths]
    # The most builds running at one instant: count starts against the spans alive then.
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most == limit
    # Started in the order given: the last one only once an earlier one had ended.
    assert spans[2][0] >= min(end for _, end in spans[:limit])


def test_duplicate_names_get_distinct_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = template(tmp_path, "same", stderr=["hello"])
    assert main(["build", str(a), str(a), "--parallel", "1"]) == 0
    err = capsys.readouterr().err
    assert "[same] hello" in err and "[same#2] hello" in err


def _start_parent(tmp_path: Path, paths: list[Path], parallel_n: int) -> subprocess.Popen[str]:
    """The real CLI in its own process (signals go to a process's main thread), with the fake child."""
    code = (
        "import sys\n"
        "from localbuilder.commands import build\n"
        f"build.CHILD_COMMAND = [sys.executable, {str(FAKE_CHILD)!r}]\n"
        "from localbuilder.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [sys.executable, "-c", code, "build", *map(str, paths), "--parallel", str(parallel_n), "--json"]
    # SIGINT back to default in the child: a background CI shell starts us with it ignored.
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _wait_started(paths: list[Path], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not all(trace(p) for p in paths):
        assert time.monotonic() < deadline, "children did not start"
        REAL_SLEEP(0.05)


@pytest.mark.parametrize("how", ["terminal-ctrl-c", "sigterm"])
def test_cancel_is_forwarded_and_the_parent_waits_for_cleanup(how: str, tmp_path: Path) -> None:
    running = [template(tmp_path, f"run{i}", sleep=60, cleanup_seconds=1.0) for i in range(2)]
    queued = template(tmp_path, "queued", sleep=60)
    parent = _start_parent(tmp_path, [*running, queued], 2)
    try:
        _wait_started(running)
        if how == "terminal-ctrl-c":
            # What a terminal does on Ctrl-C: SIGINT to the whole foreground process group.
            os.killpg(parent.pid, signal.SIGINT)
        else:
            parent.send_signal(signal.SIGTERM)
        out, err = parent.communicate(timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 130, err
    for path in running:
        seen = trace(path)
        # Its own session: the terminal's SIGINT never reached it; the parent's SIGTERM did, once.
        assert seen["sid"] == seen["pid"] != parent.pid
        assert seen["signals"] == ["SIGTERM"]
        assert seen.get("cleaned") is True  # the parent waited for the cleanup to finish
    assert trace(queued) == {}  # nothing new starts once canceled
    records = json.loads(out)
    assert [r["lastRunStatus"]["runState"] for r in records] == ["Canceled", "Canceled", "Canceled"]
    assert "stopping the running builds (run0, run1)" in err
    rows = {line.split()[0]: line for line in err[err.index("TEMPLATE") :].splitlines()[1:]}
    assert rows["queued"].endswith(parallel.NOT_STARTED)
    assert "[run0] canceling: powering the guest down" in err


# ---------------------------------------------------------------------------------------------------------
# Summary table and exit codes (pure)


def _result(
    label: str, state: str | None, rc: int | None, message: str = "", uri: str = ""
) -> parallel.JobResult:
    record = None
    if state is not None:
        outputs = [{"provisioningState": "Succeeded", "artifactUri": uri}] if uri else []
        record = {"runId": f"id-{label}", "lastRunStatus": {"runState": state, "message": message},
                  "runOutputs": outputs}  # fmt: skip
    return parallel.JobResult(parallel.Job(label, Path(f"/t/{label}.json"), ()), rc, record, 75.0)


def test_summary_table_columns() -> None:
    results = [
        _result("web", "Succeeded", 0, uri="file:///srv/out/web%20site.vhd"),
        _result("db-server", "Failed", 1, message="customize[2] Shell 'x' failed\nmore"),
        _result("blob", "PartiallySucceeded", 1, message="b2: upload failed", uri="https://a/b.vhd"),
        _result("later", None, None),
    ]
    lines = parallel.summary_table(results).splitlines()
    assert lines[1].split() == [
        "web",
        "id-web",
        "Succeeded",
        "1",
        "min",
        "15",
        "s",
        "/srv/out/web",
        "site.vhd",
    ]
    assert lines[2].endswith("customize[2] Shell 'x' failed")
    assert lines[3].endswith("b2: upload failed")
    assert lines[4].split() == ["later", "-", "Canceled", "-", *parallel.NOT_STARTED.split()]
    # Columns aligned: every state starts under STATE.
    assert {line.index(line.split()[2]) for line in lines[1:]} == {lines[0].index("STATE")}


@pytest.mark.parametrize(
    ("states", "canceled", "code"),
    [
        ([("Succeeded", 0), ("Succeeded", 0)], False, 0),
        ([("Succeeded", 0), ("Failed", 1)], False, 1),
        ([("Succeeded", 0), ("PartiallySucceeded", 1)], False, 1),
        ([("Succeeded", 0), ("Canceled", 130)], False, 130),  # one canceled with `localbuilder cancel`
        ([("Failed", 1), ("Canceled", 130)], False, 1),
        ([("Failed", 1), ("Canceled", 130)], True, 130),  # Ctrl-C wins: the user stopped the command
    ],
)
def test_exit_codes(states: list[tuple[str, int]], canceled: bool, code: int) -> None:
    results = tuple(_result(f"t{i}", s, rc) for i, (s, rc) in enumerate(states))
    assert parallel.Outcome(results, canceled).exit_code() == code


# ---------------------------------------------------------------------------------------------------------
# One template: the options handed to Build, invocation.json content, --no-cache


class RecordingBuild:
    """Stands in for ``localbuilder.orchestrator.Build``: records its arguments, ends in a chosen state."""

    calls: list[dict[str, Any]] = []
    state = RunState.Succeeded

    def __init__(self, template: Any, template_file: Path, platform: Any, options: BuildOptions) -> None:
        RecordingBuild.calls.append({"template": template, "file": template_file, "platform": platform,
                                     "options": options})  # fmt: skip

    def execute(self) -> RunRecord:
        status = LastRunStatus(now_iso(), self.state, RunSubState.Distributing, end_time=now_iso())
        return RunRecord("rid", "t", "/t.json", status)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[RecordingBuild]:
    RecordingBuild.calls = []
    monkeypatch.setattr("localbuilder.commands.build.Build", RecordingBuild)
    return RecordingBuild


def arm_template(directory: Path, name: str = "armtpl") -> Path:
    """An ARM deployment with a secureString parameter used in a customizer."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"adminPassword": {"type": "secureString"}, "greeting": {"type": "string"}},
        "resources": [{
            "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01",
            "name": name, "location": "westeurope",
            "properties": {
                "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12",
                           "sku": "12", "version": "latest"},
                "customize": [{"type": "Shell", "name": "pw", "inline": [
                    "[concat('echo ', parameters('greeting'), ' ', parameters('adminPassword'))]"]}],
                "distribute": [{"type": "VHD", "runOutputName": name}],
            },
        }],
    }  # fmt: skip
    path = directory / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def test_single_build_passes_invocation_without_secrets(
    recording: type[RecordingBuild], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = arm_template(tmp_path / "tpl")
    staging = f"https://acct.blob.core.windows.net/images?{SAS}"
    code = main(["build", str(tpl), "--param", "adminPassword=Hunter2!pw", "--param", "greeting=hi",
                 "--staging", staging, "--no-cache", "--accel", "tcg", "--output-dir", "rel-out", "--force",
                 "--set", "properties.vmProfile.osDiskSizeGB=8", "--json"])  # fmt: skip
    assert code == 0
    (call,) = recording.calls
    options: BuildOptions = call["options"]
    assert options.use_cache is False and options.resume_run is None
    assert options.azure.staging == staging  # the build itself gets the real SAS …
    assert options.output_dir == Path("rel-out").absolute() and options.force is True
    inv = dict(options.invocation or {})
    text = json.dumps(inv)
    assert "TOPSECRETSIG" not in text and "Hunter2" not in text  # … its record does not
    assert inv["template"] == str(tpl.absolute()) and call["file"] == tpl.absolute()
    assert inv["staging"] == "https://acct.blob.core.windows.net/images" and inv["stagingSasRedacted"] is True
    assert inv["params"] == {"adminPassword": "REDACTED", "greeting": "hi"}
    assert inv["redactedParams"] == ["adminPassword"]
    assert inv["sets"] == ["properties.vmProfile.osDiskSizeGB=8"]
    assert inv["accel"] == "tcg" and inv["hypervisor"] == "qemu" and inv["useCache"] is False
    assert inv["outputDir"] == str(Path("rel-out").absolute()) and inv["force"] is True
    assert call["platform"].accel_request == "tcg" and call["platform"].backend == "qemu"
    # --json prints the one record, exactly as before parallel builds existed.
    assert json.loads(capsys.readouterr().out)["runId"] == "rid"


def test_single_build_defaults(recording: type[RecordingBuild], tmp_path: Path) -> None:
    tpl = template(tmp_path, "plain")
    recording.state = RunState.Failed
    try:
        assert main(["build", str(tpl)]) == 1
    finally:
        recording.state = RunState.Succeeded
    options: BuildOptions = recording.calls[0]["options"]
    assert options.use_cache is True and options.output_dir is None and options.on_error is None
    assert options.invocation == Invocation(template=tpl.absolute()).as_dict()


def test_invocation_round_trip() -> None:
    args = build_parser().parse_args(["build", "x.json", "--network", "--on-error", "abort", "--strict",
                                      "--dry-run-azure", "--staging-account-id", "/s/acct"])  # fmt: skip
    inv = Invocation.from_args(args, Path("x.json"))
    assert Invocation.from_dict(inv.as_dict()) == inv
    assert Invocation.from_dict(inv.as_dict()).to_argv()[1] == str(Path("x.json").absolute())


# ---------------------------------------------------------------------------------------------------------
# --resume RUN


def failed_run(
    tpl: Path, inv: Invocation | None, *, state: RunState = RunState.Failed, name: str = ""
) -> RunDir:
    run = RunDir.create(name or tpl.stem, tpl.absolute())
    run.write(run.read().with_status(run_state=state, message="customize[0] failed", end_time=now_iso()))
    if inv is not None:
        (run.path / "invocation.json").write_text(json.dumps(inv.as_dict()))
    return run


def test_resume_reuses_the_recorded_options(recording: type[RecordingBuild], tmp_path: Path) -> None:
    tpl = arm_template(tmp_path / "tpl")
    recorded = Invocation(template=tpl.absolute(), params={"greeting": "hi", "adminPassword": "x"},
                          accel="kvm", force=True,
                          output_dir=tmp_path / "out", network=True,
                          sets=("properties.vmProfile.osDiskSizeGB=8",),
                          staging="https://acct.blob.core.windows.net/images")  # fmt: skip
    run = failed_run(tpl, recorded, name="armtpl")
    code = main(["build", "--resume", run.run_id[:17], "--accel", "tcg", "--no-network", "--no-cache",
                 "--set", "properties.vmProfile.osDiskSizeGB=9"])  # fmt: skip
    assert code == 0
    (call,) = recording.calls
    options: BuildOptions = call["options"]
    assert options.resume_run == run.path
    assert call["file"] == tpl.absolute()
    assert options.force is True and options.output_dir == tmp_path / "out"  # recorded
    assert options.use_cache is False  # given now
    assert call["platform"].accel_request == "tcg" and call["platform"].network is False  # overridden
    assert options.azure.staging == "https://acct.blob.core.windows.net/images"
    inv = dict(options.invocation or {})
    assert inv["sets"] == ["properties.vmProfile.osDiskSizeGB=8", "properties.vmProfile.osDiskSizeGB=9"]
    assert call["template"].vm_profile.os_disk_size_gb == 9  # the later --set wins


@pytest.mark.parametrize(
    ("state", "text"),
    [(RunState.Succeeded, "succeeded: there is nothing to resume"), (RunState.Running, "is still Running")],
)
def test_resume_refuses_running_and_succeeded_runs(
    state: RunState, text: str, recording: type[RecordingBuild], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tpl = template(tmp_path, "t")
    run = RunDir.create("t", tpl.absolute())  # Running, owned by this live process
    if state is not RunState.Running:
        run.write(run.read().with_status(run_state=state, end_time=now_iso()))
    (run.path / "invocation.json").write_text(json.dumps(Invocation(template=tpl.absolute()).as_dict()))
    assert main(["build", "--resume", run.run_id]) == 2
    err = capsys.readouterr().err
    assert text in err and "hint:" in err
    assert recording.calls == []


def test_resume_of_a_dead_running_build_is_allowed(recording: type[RecordingBuild], tmp_path: Path) -> None:
    tpl = template(tmp_path, "t")
    run = RunDir.create("t", tpl.absolute())
    record = run.read()
    assert record.process is not None
    gone = dataclasses.replace(record.process, pid=2**22 + 12345)  # no such process
    run.write(dataclasses.replace(record, process=gone))
    (run.path / "invocation.json").write_text(json.dumps(Invocation(template=tpl.absolute()).as_dict()))
    assert main(["build", "--resume", run.run_id]) == 0
    assert recording.calls[0]["options"].resume_run == run.path


def test_resume_argument_errors(
    recording: type[RecordingBuild], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = template(tmp_path, "t")

    def resume(*extra: str) -> str:
        assert main(["build", *extra]) == 2
        return capsys.readouterr().err

    assert "no run matches 'nope'" in resume("--resume", "nope")
    no_record = failed_run(tpl, None)
    err = resume("--resume", no_record.run_id)
    assert "has no invocation.json" in err and f"localbuilder build {tpl.absolute()}" in err
    run = failed_run(tpl, Invocation(template=tpl.absolute()))
    assert "takes the template from the run; drop" in resume(str(tpl), "--resume", run.run_id)
    assert "built resource None" in resume("--resume", run.run_id, "--resource", "other")
    (run.path / "invocation.json").write_text("{not json")
    assert "invocation.json: not JSON" in resume("--resume", run.run_id)
    (run.path / "invocation.json").write_text(json.dumps({"schemaVersion": 99, "template": "x"}))
    assert "unreadable invocation record (schemaVersion 99" in resume("--resume", run.run_id)
    # The template file moved away: the run cannot re-read it.
    gone = failed_run(tpl, Invocation(template=tmp_path / "moved.json"))
    assert "moved.json: the template file of run t/" in resume("--resume", gone.run_id)
    # The file now holds another template.
    renamed = failed_run(tpl, Invocation(template=tpl.absolute()), name="old-name")
    assert "run old-name/" in resume("--resume", renamed.run_id)
    assert recording.calls == []


def test_resume_requires_the_secrets_again(
    recording: type[RecordingBuild], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = arm_template(tmp_path / "tpl")
    staging = f"https://acct.blob.core.windows.net/images?{SAS}"
    args = build_parser().parse_args(["build", str(tpl), "--param", "adminPassword=pw",
                                      "--param", "greeting=hi", "--staging", staging])  # fmt: skip
    run = failed_run(tpl, Invocation.from_args(args, tpl), name="armtpl")
    stored = (run.path / "invocation.json").read_text()
    assert "TOPSECRETSIG" not in stored and '"pw"' not in stored

    assert main(["build", "--resume", run.run_id]) == 2
    err = capsys.readouterr().err
    assert "secure parameter(s) adminPassword" in err and "--param adminPassword=…" in err
    assert main(["build", "--resume", run.run_id, "--param", "adminPassword=pw"]) == 2
    err = capsys.readouterr().err
    assert (
        "the SAS was not stored" in err
        and "--staging 'https://acct.blob.core.windows.net/images?<SAS>'" in err
    )
    assert recording.calls == []

    # ARM names are case-insensitive; the REDACTED placeholder must not reach the template.
    assert main(["build", "--resume", run.run_id, "--param", "adminpassword=pw2", "--staging", staging]) == 0
    (call,) = recording.calls
    assert call["template"].customize[0].inline == ("echo hi pw2",)
    options: BuildOptions = call["options"]
    assert options.azure.staging == staging
    inv = dict(options.invocation or {})
    assert "TOPSECRETSIG" not in json.dumps(inv) and "pw2" not in json.dumps(inv)
    assert inv["params"] == {"greeting": "hi", "adminpassword": "REDACTED"}


def test_the_real_build_writes_invocation_json_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLI → the real Build (on the fake platform) → ``<run>/invocation.json`` as --resume reads it."""
    from tests.build.fakes import FakePlatform

    monkeypatch.setattr("localbuilder.commands.build.LocalPlatform", lambda **kw: FakePlatform(tmp_path))
    tpl = arm_template(tmp_path / "tpl")
    staging = f"https://acct.blob.core.windows.net/images?{SAS}"
    code = main(["build", str(tpl), "--param", "adminPassword=Hunter2!pw", "--param", "greeting=hi",
                 "--staging", staging, "--no-cache"])  # fmt: skip
    assert code == 0
    (run,) = list(iter_runs("armtpl"))
    stored = (run.path / "invocation.json").read_text()
    assert "TOPSECRETSIG" not in stored and "Hunter2" not in stored
    inv = Invocation.from_dict(json.loads(stored))
    assert inv.template == tpl.absolute() and inv.use_cache is False
    assert inv.params == {"adminPassword": "REDACTED", "greeting": "hi"}
    assert inv.staging == "https://acct.blob.core.windows.net/images" and inv.staging_sas_redacted


def test_a_child_that_cannot_start_is_a_failed_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(build_cmd, "CHILD_COMMAND", [str(tmp_path / "no-such-python")])
    a, b = template(tmp_path, "a"), template(tmp_path, "b")
    assert main(["build", str(a), str(b), "--parallel", "2"]) == 1
    rows = capsys.readouterr().err.split("TEMPLATE", 1)[1].splitlines()[1:]
    assert len(rows) == 2 and all(
        "Failed" in r and "could not start: no-such-python: not found" in r for r in rows
    )


def test_an_internal_error_still_stops_and_waits_for_the_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = template(tmp_path, "a", sleep=60, cleanup_seconds=0.3)
    job = parallel.Job("a", a, (sys.executable, str(FAKE_CHILD), "build", str(a), "--json"))

    def failing_sleep(seconds: float) -> None:
        _wait_started([a])  # the child is up, with its SIGTERM handler installed
        REAL_SLEEP(0.2)
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(parallel.time, "sleep", failing_sleep)
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        parallel.run_jobs([job], 1, out=io.StringIO())
    monkeypatch.undo()
    seen = trace(a)
    assert seen["signals"] == ["SIGTERM"] and seen.get("cleaned") is True


def test_set_values_holding_a_sas_are_not_stored_and_must_be_given_again(
    recording: type[RecordingBuild], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = arm_template(tmp_path / "tpl")
    sas_set = "properties.distribute[0].uri=https://acct.blob.core.windows.net/vhds/x.vhd?sv=1&sig=SECRETSIG"
    plain = "properties.vmProfile.osDiskSizeGB=8"
    stored = Invocation(template=tpl.absolute(), params={"greeting": "hi"}, sets=(plain, sas_set)).as_dict()
    assert "SECRETSIG" not in json.dumps(stored)
    assert stored["sets"] == [plain, "properties.distribute[0].uri=REDACTED"]
    assert stored["redactedSets"] == ["properties.distribute[0].uri"]
    run = failed_run(tpl, Invocation.from_dict(stored), name="armtpl")
    (run.path / "invocation.json").write_text(json.dumps(stored))
    assert main(["build", "--resume", run.run_id]) == 2
    err = capsys.readouterr().err
    assert "--set values that hold secrets" in err and "properties.distribute[0].uri" in err
    assert recording.calls == []
    # Given again, the placeholder never reaches the template; the plain --set is kept.
    fresh = "properties.distribute[0].uri=https://acct.blob.core.windows.net/vhds/x.vhd?sv=1&sig=NEW"
    assert main(["build", "--resume", run.run_id, "--set", fresh, "--param", "adminPassword=pw"]) == 0
    (call,) = recording.calls
    inv = dict(call["options"].invocation or {})
    assert inv["sets"] == [plain, "properties.distribute[0].uri=REDACTED"] and "NEW" not in json.dumps(inv)
