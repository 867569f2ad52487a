"""Real builds on the Debian 12 test image (QEMU, TCG here). Few boots, many checks per boot.

1. end to end: Shell inline, Shell scriptUri (+sha256), File, a reboot inside a Shell step, an in-VM
   validator that runs in a guest booted from the generalized VHD (new seed) and checks that the
   customizations are there and that the old build user's home and key are not; fixed VHD verified;
2. a failing Shell step: Failed, exit code + output tail in the message, no VHD, no guest left;
3. the template's /tmp/DeprovisioningScript.sh replaces ours;
4. buildTimeoutInMinutes expiry stops the guest;
5. `localbuilder cancel` from another process: Canceled, nothing left running.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder import vhd
from localbuilder.__main__ import main
from localbuilder.run import run
from localbuilder.state import RunDir, RunState, iter_runs
from tests.build.mounts import localbuilder_home

pytestmark = pytest.mark.integration

URN = "Debian:debian-12:12:0.1.0"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, debian_image: Any) -> Iterator[Path]:
    """A LOCALBUILDER_HOME whose catalog holds the test image as Debian 12 'latest'."""
    with localbuilder_home(tmp_path_factory.mktemp("lbhome")) as home:
        assert main(["image", "add", str(debian_image.path), "--urn", URN]) == 0
        yield home


def write_template(directory: Path, name: str, customize: list[dict[str, Any]], **props: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    body = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2022-07-01",
        "location": "westeurope",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12",
                       "version": "latest"},
            "customize": customize,
            "distribute": [{"type": "VHD", "runOutputName": name}],
            **props,
        },
    }  # fmt: skip
    path = directory / f"{name}.json"
    path.write_text(json.dumps(body, indent=2))
    return path


def only_run(template_name: str) -> RunDir:
    runs = list(iter_runs(template_name))
    assert len(runs) == 1, runs
    return runs[0]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that reference ``text`` (a run directory): leaked guests."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def file_in_image(image: Path, offset: int, path: str) -> str:
    """Read a file from the ext4 root of ``image`` without mounting (debugfs; FACTS/inspect)."""
    return run(["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"]).stdout


def test_end_to_end(home: Path, tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    (tdir / "scripts").mkdir(parents=True)
    script = tdir / "scripts" / "as-root.sh"
    script.write_text("#!/bin/sh\nset -e\nid -u > /etc/lb-script\necho 'script ran as' \"$(id -un)\"\n")
    (tdir / "payload.txt").write_text("payload-content\n")
    customize = [
        {"type": "Shell", "name": "inline", "inline": [
            "echo inline | sudo tee /etc/lb-inline",
            "echo mine > ~/.lb-build-marker",
            "cat /proc/sys/kernel/random/boot_id | sudo tee /var/lib/lb-boot-before",
        ]},
        {"type": "Shell", "name": "script", "scriptUri": "scripts/as-root.sh",
         "sha256Checksum": hashlib.sha256(script.read_bytes()).hexdigest()},
        {"type": "File", "name": "payload", "sourceUri": "payload.txt", "destination": "/tmp/payload.txt"},
        {"type": "Shell", "name": "keep-payload", "inline": ["sudo cp /tmp/payload.txt /etc/lb-payload.txt"]},
        {"type": "Shell", "name": "reboot", "inline": ["sudo reboot"]},
        {"type": "Shell", "name": "after-reboot", "inline": [
            "test \"$(cat /proc/sys/kernel/random/boot_id)\" != \"$(cat /var/lib/lb-boot-before)\"",
            "echo rebooted | sudo tee /etc/lb-rebooted",
        ]},
    ]  # fmt: skip
    validate = {
        "inVMValidations": [
            {"type": "Shell", "name": "check-output", "inline": [
                "grep -qx inline /etc/lb-inline",
                "grep -qx 0 /etc/lb-script",
                "grep -qx payload-content /etc/lb-payload.txt",
                "grep -qx rebooted /etc/lb-rebooted",
                # the build user's old home went with deprovision: this user is the new seed's
                "test ! -e ~/.lb-build-marker",
                "test \"$(grep -c . ~/.ssh/authorized_keys)\" -eq 1",
                "echo validation-ok",
            ]},
        ],
    }  # fmt: skip
    tpl = write_template(tdir, "e2e", customize, validate=validate, vmProfile={"osDiskSizeGB": 3})
    out_dir = tmp_path / "out"
    start = time.monotonic()
    code = main(["build", str(tpl), "--output-dir", str(out_dir)])
    seconds = time.monotonic() - start
    rundir = only_run("e2e")
    record = rundir.read()
    assert code == 0, record.last_run_status.message
    assert record.run_state is RunState.Succeeded

    output = out_dir / "e2e.vhd"
    footer = vhd.check_fixed_vhd(output)
    assert footer.current_size == 3 * 1024**3
    assert record.run_outputs[0].artifact_uri == output.as_uri()
    assert not (rundir.path / "image.vhd").exists()

    report = json.loads((rundir.path / "generalization.json").read_text())
    assert report["generalized"] is True, report
    log = rundir.customization_log.read_text()
    assert "script ran as root" in log
    assert "guest is rebooting" in log and "guest is back" in log
    assert "validation-ok" in log
    phases = {p.name for p in record.phases}
    assert {"boot", "deprovision", "power-off", "conversion", "inspection", "validation boot"} <= phases
    assert processes_mentioning(str(rundir.path)) == []
    print(f"\nend-to-end build: {seconds:.0f} s; phases: {[(p.name, p.seconds) for p in record.phases]}")


def test_failing_step(home: Path, tmp_path: Path) -> None:
    customize = [
        {"type": "Shell", "name": "ok", "inline": ["echo fine"]},
        {
            "type": "Shell",
            "name": "broken",
            "inline": ["echo before-the-failure", "ls /no-such-dir", "echo never"],
        },
        {"type": "Shell", "name": "not-reached", "inline": ["echo unreachable"]},
    ]
    tpl = write_template(tmp_path / "tpl", "failing", customize)
    assert main(["build", str(tpl)]) == 1
    rundir = only_run("failing")
    record = rundir.read()
    assert record.run_state is RunState.Failed
    msg = record.last_run_status.message
    assert "customize[1] Shell 'broken'" in msg and "exit code 2" in msg
    assert "before-the-failure" in msg and "/no-such-dir" in msg
    assert "unreachable" not in rundir.customization_log.read_text()
    assert list(rundir.path.rglob("*.vhd")) == []
    assert processes_mentioning(str(rundir.path)) == []


def test_user_deprovisioning_script_replaces_ours(home: Path, tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    # AIB's own default, plus a trace: written by a File step exactly as AIB users do.
    (tdir / "DeprovisioningScript.sh").write_text(
        "#!/bin/sh\necho user-script > /var/log/user-deprovision.log\n"
        "waagent -force -deprovision+user && export HISTSIZE=0 && sync\n"
    )
    customize = [{"type": "File", "name": "deprov", "sourceUri": "DeprovisioningScript.sh",
                  "destination": "/tmp/DeprovisioningScript.sh"}]  # fmt: skip
    tpl = write_template(tdir, "userdeprov", customize)
    code = main(["build", str(tpl), "--output-dir", str(tmp_path / "out")])
    rundir = only_run("userdeprov")
    record = rundir.read()
    assert code == 0, record.last_run_status.message
    assert "ran the template's DeprovisioningScript.sh" in rundir.customization_log.read_text()
    report = json.loads((rundir.path / "generalization.json").read_text())
    image = tmp_path / "out" / "userdeprov.vhd"
    assert (
        file_in_image(image, report["root"]["start"], "/var/log/user-deprovision.log").strip()
        == "user-script"
    )
    # waagent alone keeps the build user (FACTS §4): reported, not fatal, because the user chose the script
    assert report["generalized"] is False
    assert processes_mentioning(str(rundir.path)) == []


def test_build_timeout_stops_the_guest(home: Path, tmp_path: Path) -> None:
    customize = [{"type": "Shell", "name": "too-slow", "inline": ["sleep 600"]}]
    tpl = write_template(tmp_path / "tpl", "timeout", customize, buildTimeoutInMinutes=1)
    start = time.monotonic()
    assert main(["build", str(tpl)]) == 1
    assert time.monotonic() - start < 150  # the guest is stopped promptly after the minute
    rundir = only_run("timeout")
    record = rundir.read()
    assert record.run_state is RunState.Failed
    assert "buildTimeoutInMinutes" in record.last_run_status.message
    assert processes_mentioning(str(rundir.path)) == []


def test_cancel_from_another_process(home: Path, tmp_path: Path) -> None:
    customize = [{"type": "Shell", "name": "long", "inline": ["echo started", "sleep 600"]}]
    tpl = write_template(tmp_path / "tpl", "cancelme", customize)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "localbuilder", "build", str(tpl)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 600
        rundir = None
        while time.monotonic() < deadline:
            runs = list(iter_runs("cancelme"))
            if runs and "started" in (
                runs[0].customization_log.read_text() if runs[0].customization_log.exists() else ""
            ):
                rundir = runs[0]
                break
            assert proc.poll() is None, "the build ended before it could be canceled"
            time.sleep(1)
        assert rundir is not None, "the step never started"
        cancel = subprocess.run([sys.executable, "-m", "localbuilder", "cancel", rundir.run_id],
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=180)  # fmt: skip
        assert cancel.returncode == 0, cancel.stderr
        assert "Canceled" in cancel.stdout
        assert proc.wait(timeout=60) == 130
        assert rundir.read().run_state is RunState.Canceled
        assert processes_mentioning(str(rundir.path)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
