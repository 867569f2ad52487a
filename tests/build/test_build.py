"""The orchestrator against FakeHypervisor + FakeCommunicator: phases, states, failures, policies."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localbuilder.communicator.fake import FakeCall, FakeCommunicator, FakeReply
from localbuilder.customizers.shell import INLINE_SHEBANG, STARTED_MARKER
from localbuilder.distributors import NOT_UPLOADED
from localbuilder.orchestrator import Build, BuildOptions, exit_code
from localbuilder.state import RunDir, RunRecord, RunState, RunSubState
from localbuilder.template import model
from localbuilder.template.model import OnBuildError
from tests.build.fakes import FakePlatform


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tpl_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tpl"
    (d / "scripts").mkdir(parents=True)
    (d / "scripts" / "setup.sh").write_bytes(b"#!/bin/sh\necho setup\n")
    (d / "index.html").write_bytes(b"<h1>hi</h1>\n")
    return d


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shell(
    name: str, *inline: str, script_uri: str | None = None, checksum: str = ""
) -> model.ShellCustomizer:
    return model.ShellCustomizer(
        name=name, inline=tuple(inline), script_uri=script_uri, sha256_checksum=checksum
    )


def vhd(name: str = "out") -> model.VhdDistributor:
    return model.VhdDistributor(run_output_name=name, artifact_tags={"k": "v"})


def template(**kw: Any) -> model.Template:
    kw.setdefault("distribute", (vhd(),))
    return model.Template(
        name="hello",
        api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        **kw,
    )


def build(tpl: model.Template, platform: FakePlatform, tpl_dir: Path, **opts: Any) -> RunRecord:
    return Build(tpl, tpl_dir / "t.json", platform, BuildOptions(**opts)).execute()


def sub_states(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = RunDir.write

    def spy(self: RunDir, record: RunRecord) -> None:
        sub = str(record.last_run_status.run_sub_state)
        if not seen or seen[-1] != sub:
            seen.append(sub)
        original(self, record)

    monkeypatch.setattr(RunDir, "write", spy)
    return seen


def test_phases_in_aib_order(tmp_path: Path, tpl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = sub_states(monkeypatch)
    platform = FakePlatform(tmp_path)
    tpl = template(
        customize=(
            shell("one", "echo one"),
            shell("two", script_uri="scripts/setup.sh", checksum=sha(tpl_dir / "scripts/setup.sh")),
            model.FileCustomizer(name="page", source_uri="index.html", destination="/tmp/index.html"),
        ),
        vm_profile=model.VmProfile(os_disk_size_gb=4),
    )
    record = build(tpl, platform, tpl_dir)

    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    assert seen == ["Queued", "Building", "Customizing", "Optimizing", "Distributing"]
    assert platform.events == [
        "resolve", "boot build qcow2", "deprovision", f"convert qcow2 size={4 * 1024**3}", "stop build",
        "inspect user=packer",
    ]  # fmt: skip
    comm = platform.comms["build"]
    # one upload + one exec per Shell step; the File step is a single upload
    assert [u.dst.split("-")[1] if "localbuilder-" in u.dst else u.dst for u in comm.uploads] == [
        "customize", "customize", "/tmp/index.html",
    ]  # fmt: skip
    inline = comm.uploads[0].data.decode()
    assert inline.startswith(INLINE_SHEBANG + "\n") and "echo one" in inline
    assert "sudo" not in comm.calls[0].command.split("; rc=")[0]  # inline runs as the build user
    assert "; sudo -n /tmp/localbuilder-customize-1-" in comm.calls[1].command  # scriptUri as root
    assert comm.uploads[2].data == b"<h1>hi</h1>\n"
    # the run output and the phase table
    out = record.run_outputs[0]
    assert out.provisioning_state == "Succeeded" and out.artifact_tags == {"k": "v"}
    assert out.artifact_uri is not None and out.artifact_uri.endswith("/outputs/out.vhd")
    assert Path(out.artifact_uri.removeprefix("file://")).read_bytes() == b"fixed vhd"
    names = [p.name for p in record.phases]
    assert names == [
        "prepare", "boot", "customize[0] Shell 'one'", "customize[1] Shell 'two'",
        "customize[2] File 'page'", "deprovision", "power-off", "conversion", "inspection",
        "distribute[0] VHD 'out'",
    ]  # fmt: skip
    assert exit_code(record) == 0
    run = RunDir(Path(out.artifact_uri.removeprefix("file://")).parents[1])
    assert run.read() == record  # what is on disk is the final record
    log = run.customization_log.read_text()
    assert "start: customize[1] Shell 'two' (type Shell)" in log
    assert re.search(r"end: customize\[0\] Shell 'one' \(type Shell\) succeeded after \d+\.\d s", log)


def test_first_failure_stops_with_exit_code_and_tail(tmp_path: Path, tpl_dir: Path) -> None:
    output = "\n".join(f"line {i}" for i in range(40))
    comm = FakeCommunicator(
        {re.compile("customize-1-"): FakeReply(exit_status=3, stdout=output, stderr="E: boom")}
    )
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    tpl = template(customize=(shell("a", "true"), shell("b", "false"), shell("c", "never")))
    record = build(tpl, platform, tpl_dir)

    assert record.run_state is RunState.Failed
    msg = record.last_run_status.message
    assert msg.startswith("customize[1] Shell 'b' failed with exit code 3")
    assert "line 39" in msg and "E: boom" in msg and "line 0\n" not in msg  # only the tail
    assert record.failed_step == "customize[1] Shell 'b'"
    assert record.last_run_status.run_sub_state is RunSubState.Customizing
    assert not any("customize-2-" in c for c in comm.commands)  # the third step never ran
    assert "deprovision" not in platform.events and "stop build" in platform.events
    assert not platform.guests["build"].is_running()
    assert record.run_outputs == () and record.kept_guest is None
    assert exit_code(record) == 1


def test_checksum_mismatch_fails_before_boot(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path)
    wrong = "0" * 64
    tpl = template(customize=(shell("s", script_uri="scripts/setup.sh", checksum=wrong),))
    record = build(tpl, platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert (
        wrong in record.last_run_status.message
        and sha(tpl_dir / "scripts/setup.sh") in record.last_run_status.message
    )
    assert "properties.customize[0].scriptUri" in record.last_run_status.message
    assert platform.events == []  # nothing resolved, nothing booted


def test_azure_targets_make_partial_success(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path)
    image = model.ManagedImageDistributor(
        run_output_name="img", image_id="/subscriptions/s/images/i", location="x"
    )
    record = build(template(distribute=(vhd("disk"), image)), platform, tpl_dir, output_dir=tmp_path / "o")
    assert record.run_state is RunState.PartiallySucceeded
    by_name = {o.name: o for o in record.run_outputs}
    assert by_name["disk"].provisioning_state == "Succeeded"
    assert by_name["img"].provisioning_state == "Failed" and NOT_UPLOADED in by_name["img"].note
    assert (tmp_path / "o" / "disk.vhd").is_file() and (tmp_path / "o" / "img.vhd").is_file()
    assert NOT_UPLOADED in record.last_run_status.message
    assert exit_code(record) == 1


def test_existing_output_refused_before_boot_unless_force(tmp_path: Path, tpl_dir: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "out.vhd").write_bytes(b"old")
    platform = FakePlatform(tmp_path)
    record = build(template(), platform, tpl_dir, output_dir=tmp_path / "o")
    assert record.run_state is RunState.Failed and "already exists" in record.last_run_status.message
    assert platform.events == []
    record = build(template(), FakePlatform(tmp_path), tpl_dir, output_dir=tmp_path / "o", force=True)
    assert record.run_state is RunState.Succeeded
    assert (tmp_path / "o" / "out.vhd").read_bytes() == b"fixed vhd"


def test_file_destination_outside_tmp_refused_before_boot(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path)
    step = model.FileCustomizer(name="f", source_uri="index.html", destination="/etc/index.html")
    record = build(template(customize=(step,)), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert "properties.customize[0].destination" in record.last_run_status.message
    assert "--allow-any-destination" in record.last_run_status.message
    assert platform.events == []
    # with the flag it is staged in /tmp and installed with sudo
    record = build(template(customize=(step,)), platform, tpl_dir, allow_any_destination=True)
    assert record.run_state is RunState.Succeeded
    assert any(
        c.startswith("if [ ! -d /etc ]") and "sudo -n install" in c for c in platform.comms["build"].commands
    )


def test_build_timeout_interrupts_a_hung_command(tmp_path: Path, tpl_dir: Path) -> None:
    def hang(call: FakeCall) -> FakeReply:
        time.sleep(30)  # the watchdog must interrupt this
        return FakeReply()

    platform = FakePlatform(tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): hang}))
    start = time.monotonic()
    record = build(template(customize=(shell("slow", "sleep 1000"),)), platform, tpl_dir, timeout_seconds=1.0)
    assert time.monotonic() - start < 10
    assert record.run_state is RunState.Failed
    assert "buildTimeoutInMinutes" in record.last_run_status.message
    assert "Customizing" in record.last_run_status.message
    assert not platform.guests["build"].is_running() and "stop build" in platform.events


def test_cancel_request_file(tmp_path: Path, tpl_dir: Path) -> None:
    holder: dict[str, Build] = {}

    def request_cancel(call: FakeCall) -> FakeReply:
        holder["build"].run.request_cancel()  # what `localbuilder cancel` does from another process
        time.sleep(30)
        return FakeReply()

    platform = FakePlatform(
        tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): request_cancel})
    )
    b = Build(template(customize=(shell("s", "x"),)), tpl_dir / "t.json", platform, BuildOptions())
    holder["build"] = b
    record = b.execute()
    assert record.run_state is RunState.Canceled
    assert not platform.guests["build"].is_running()
    assert exit_code(record) == 130


def test_sigterm_cancels(tmp_path: Path, tpl_dir: Path) -> None:
    def sigterm(call: FakeCall) -> FakeReply:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        return FakeReply()

    platform = FakePlatform(
        tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): sigterm})
    )
    before = signal.getsignal(signal.SIGTERM)
    record = build(template(customize=(shell("s", "x"),)), platform, tpl_dir)
    assert record.run_state is RunState.Canceled
    assert "stop build" in platform.events
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_on_error_abort_keeps_the_guest(tmp_path: Path, tpl_dir: Path) -> None:
    comm = FakeCommunicator({re.compile("customize-0-"): 1})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    record = build(template(customize=(shell("s", "false"),)), platform, tpl_dir, on_error=OnBuildError.abort)
    assert record.run_state is RunState.Failed
    assert record.kept_guest is not None
    assert record.kept_guest.ssh_command().startswith("ssh -i ")
    assert "-p 2222" in record.kept_guest.ssh_command()
    assert record.kept_guest.ssh_command() in record.last_run_status.message
    assert "localbuilder cancel" in record.last_run_status.message
    assert platform.guests["build"].is_running() and "stop build" not in platform.events


def test_template_error_handling_abort_is_the_default(tmp_path: Path, tpl_dir: Path) -> None:
    comm = FakeCommunicator({re.compile("customize-0-"): 1})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    tpl = template(
        customize=(shell("s", "false"),),
        error_handling=model.ErrorHandling(on_customizer_error=model.OnBuildError.abort),
    )
    assert build(tpl, platform, tpl_dir).kept_guest is not None
    # --on-error cleanup on the command line wins over the template
    platform = FakePlatform(tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): 1}))
    assert build(tpl, platform, tpl_dir, on_error=OnBuildError.cleanup).kept_guest is None
    assert not platform.guests["build"].is_running()


def test_on_error_ask_retry_then_success(tmp_path: Path, tpl_dir: Path) -> None:
    comm = FakeCommunicator({re.compile("customize-0-"): [FakeReply(exit_status=1), FakeReply()]})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    answers = iter(["x", "r"])  # an invalid answer is asked again
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    record = build(
        template(customize=(shell("s", "flaky"),)), platform, tpl_dir, ask_on_error=True, prompt=prompt
    )
    assert record.run_state is RunState.Succeeded
    assert len(prompts) == 2 and "[r]etry" in prompts[0]
    assert sum("customize-0-" in c for c in comm.commands) == 2


def test_on_error_ask_without_terminal_cleans_up(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): 1}))
    record = build(
        template(customize=(shell("s", "x"),)), platform, tpl_dir, ask_on_error=True, interactive=False
    )
    assert record.run_state is RunState.Failed and record.kept_guest is None
    assert not platform.guests["build"].is_running()


def test_reboot_inside_a_shell_step(tmp_path: Path, tpl_dir: Path) -> None:
    platform: FakePlatform

    def reboot(call: FakeCall) -> FakeReply:
        platform.guests["build"].simulate_reset()
        return FakeReply(disconnect=True, stderr=STARTED_MARKER)

    comm = FakeCommunicator({re.compile("customize-0-"): reboot})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    tpl = template(customize=(shell("reboot", "sudo reboot"), shell("after", "echo back")))
    record = build(tpl, platform, tpl_dir)
    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    assert comm.reconnects == 1
    after = [c for c in comm.commands if "cloud-init status --wait" in c or "customize-1-" in c]
    assert "cloud-init" in after[0] and "customize-1-" in after[1]  # cloud-init settles before the next step


def test_reboot_recognised_from_systemd_state(tmp_path: Path, tpl_dir: Path) -> None:
    # The exit status arrives before the connection drops: the marker says systemd is stopping.
    platform: FakePlatform

    def reboot(call: FakeCall) -> FakeReply:
        platform.guests["build"].simulate_reset()
        return FakeReply(stderr="__localbuilder_systemd_state=stopping")

    comm = FakeCommunicator({re.compile("customize-0-"): reboot})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    record = build(template(customize=(shell("reboot", "sudo reboot"),)), platform, tpl_dir)
    assert record.run_state is RunState.Succeeded
    assert comm.reconnects == 1
    run_log = (Path(record.output_dir or "").parent / "customization.log").read_text()
    assert "__localbuilder_systemd_state" not in run_log  # the marker is filtered out


def test_unknown_systemd_state_confirmed_by_a_reset(tmp_path: Path, tpl_dir: Path) -> None:
    # Measured on Debian 12: after `sudo reboot` an unprivileged systemctl says "unknown"; the reset
    # comes seconds later.
    platform: FakePlatform

    def reboot(call: FakeCall) -> FakeReply:
        threading.Timer(0.5, platform.guests["build"].simulate_reset).start()
        return FakeReply(stderr=f"{STARTED_MARKER}\n__localbuilder_systemd_state=unknown")

    comm = FakeCommunicator({re.compile("customize-0-"): reboot})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    record = build(
        template(customize=(shell("reboot", "sudo reboot"), shell("next", "true"))), platform, tpl_dir
    )
    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    assert comm.reconnects == 1


def test_unknown_systemd_state_without_reset_goes_on(
    tmp_path: Path, tpl_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("localbuilder.customizers.shell.AMBIGUOUS_WAIT_SECONDS", 1.0)
    reply = FakeReply(stderr=f"{STARTED_MARKER}\n__localbuilder_systemd_state=offline")
    comm = FakeCommunicator({re.compile("customize-0-"): reply})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    record = build(template(customize=(shell("s", "true"), shell("next", "true"))), platform, tpl_dir)
    assert record.run_state is RunState.Succeeded
    assert comm.reconnects == 0 and any("customize-1-" in c for c in comm.commands)


def test_step_caught_by_a_shutdown_is_run_again(tmp_path: Path, tpl_dir: Path) -> None:
    # The previous step's reboot was not visible yet; the next step's session hangs in the dying
    # guest and drops without ever starting its script: it must run again after the reboot.
    platform: FakePlatform

    def dropped_before_start(call: FakeCall) -> FakeReply:
        platform.guests["build"].simulate_reset()
        return FakeReply(disconnect=True)

    comm = FakeCommunicator({re.compile("customize-1-"): [dropped_before_start, FakeReply(stdout="ran")]})
    platform = FakePlatform(tmp_path, comm_for=lambda p: comm)
    tpl = template(customize=(shell("reboot", "sudo reboot"), shell("next", "echo ran")))
    record = build(tpl, platform, tpl_dir)
    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    assert sum("customize-1-" in c for c in comm.commands) == 2
    assert comm.reconnects == 1
    # the script was uploaded again: /tmp does not survive a reboot
    assert sum("customize-1-" in u.dst for u in comm.uploads) == 2


def test_poweroff_in_a_step_is_not_a_reboot(tmp_path: Path, tpl_dir: Path) -> None:
    platform: FakePlatform

    def poweroff(call: FakeCall) -> FakeReply:
        platform.guests["build"].simulate_poweroff()
        return FakeReply(disconnect=True, stderr=STARTED_MARKER)

    platform = FakePlatform(
        tmp_path, comm_for=lambda p: FakeCommunicator({re.compile("customize-0-"): poweroff})
    )
    record = build(template(customize=(shell("off", "sudo poweroff"),)), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert "powered off instead of rebooting" in record.last_run_status.message


def validation(
    *steps: model.ShellCustomizer, cont: bool = False, source_only: bool = False
) -> model.Validate:
    return model.Validate(
        in_vm_validations=steps, continue_distribute_on_failure=cont, source_validation_only=source_only
    )


def test_validation_boots_the_output_and_passes(
    tmp_path: Path, tpl_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = sub_states(monkeypatch)
    platform = FakePlatform(tmp_path)
    record = build(
        template(customize=(shell("a", "x"),), validate=validation(shell("check", "test -f /x"))),
        platform,
        tpl_dir,
    )
    assert record.run_state is RunState.Succeeded
    assert seen == ["Queued", "Building", "Customizing", "Optimizing", "Validating", "Distributing"]
    assert platform.events[-3:] == ["inspect user=packer", "boot validation vpc", "stop validation"]
    assert platform.requests[1].image.path.name == "image.vhd"  # the generalized output, not the source
    assert any("validate-0-" in c for c in platform.comms["validation"].commands)


def test_validation_failure_stops_distribution(tmp_path: Path, tpl_dir: Path) -> None:
    def comm_for(purpose: str) -> FakeCommunicator:
        return FakeCommunicator(
            {re.compile("validate-0-"): FakeReply(exit_status=1, stdout="missing")}
            if purpose == "validation"
            else {}
        )

    platform = FakePlatform(tmp_path, comm_for=comm_for)
    record = build(template(validate=validation(shell("check", "test -f /x"))), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert record.last_run_status.message.startswith(
        "validation failed: validate.inVMValidations[0] Shell 'check'"
    )
    assert "nothing was distributed" in record.last_run_status.message
    assert record.run_outputs == ()


def test_validation_failure_with_continue_distributes_but_fails(tmp_path: Path, tpl_dir: Path) -> None:
    def comm_for(purpose: str) -> FakeCommunicator:
        return FakeCommunicator({re.compile("validate-0-"): 1} if purpose == "validation" else {})

    platform = FakePlatform(tmp_path, comm_for=comm_for)
    record = build(template(validate=validation(shell("check", "false"), cont=True)), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert "distributed anyway" in record.last_run_status.message
    assert record.run_outputs[0].provisioning_state == "Succeeded"


def test_source_validation_only(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path)
    tpl = template(
        customize=(shell("never", "x"),), validate=validation(shell("check", "true"), source_only=True)
    )
    record = build(tpl, platform, tpl_dir)
    assert record.run_state is RunState.Succeeded
    assert platform.events == ["resolve", "boot validation qcow2", "stop validation"]
    assert record.run_outputs == ()


def test_not_generalized_fails_unless_user_deprovision(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path, problems=("build-user: packer still in /etc/passwd",))
    record = build(template(), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert (
        "not generalized" in record.last_run_status.message
        and "packer still" in record.last_run_status.message
    )
    assert record.run_outputs == ()
    platform = FakePlatform(tmp_path, problems=("build-user: packer still in /etc/passwd",), user_script=True)
    assert build(template(), platform, tpl_dir).run_state is RunState.Succeeded


def test_deprovision_failure(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path, deprovision_error="waagent exited with status 3")
    record = build(template(), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert record.last_run_status.message.startswith("deprovision: waagent exited with status 3")
    assert "stop build" in platform.events and not platform.guests["build"].is_running()


def test_windows_only_step_on_linux_refused_before_boot(tmp_path: Path, tpl_dir: Path) -> None:
    platform = FakePlatform(tmp_path)
    step = model.WindowsRestartCustomizer(name="r")
    record = build(template(customize=(step,)), platform, tpl_dir)
    assert record.run_state is RunState.Failed
    assert "properties.customize[0]" in record.last_run_status.message
    assert platform.events == []
