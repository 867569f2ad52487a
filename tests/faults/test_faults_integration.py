"""Fault scenarios during real builds (Debian 12 test image, direct QEMU, TCG), issue #7 item 1.

Each scenario fires its fault as early as it can meaningfully happen, and then checks the same promises
(``assert_clean``): the run ends Failed or Canceled with a clear message in state.json; no process runs
from the run's guest directories (the run directory, or its /var/tmp guest directory for a deep path);
no VHD and no partial file at the destination or in the run directory; the guest directories hold
nothing but serial logs; the /var/tmp guest directories are gone; the source image is unchanged.

Boots are the cost (~70-90 s each under TCG), so:
  (a) qemu killed, (d) SIGINT, (e) SIGTERM, (g) build timeout — during the boot (a few seconds in);
  (h) SIGKILL of localbuilder — during the first step (the guest record in state.json is what the
      next start uses), then ``show-runs`` recovers it;
  (b) the SSH connection drops mid-command — one boot;
  (c) the guest reboots in the middle of a step, then (f) the output directory (a tmpfs shrunk to 64 MiB
      after the check before the boot) is too small for the VHD — one boot: (c) survives, the build goes
      on and (f) fails the distribution.
SIGTERM during a step and buildTimeoutInMinutes during a step are covered by
tests/build/test_build_integration.py (cancel, timeout).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder.guest.local import LocalPlatform
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.recovery import is_guest_process, recover_stale_runs
from localbuilder.state import RunDir, RunRecord, RunState, iter_runs
from localbuilder.template import parse_template
from localbuilder.template.load import load_documents
from tests.build import test_build_integration as builds
from tests.build.test_build_integration import REPO, processes_mentioning, write_template

pytestmark = pytest.mark.integration

# The module-scoped LOCALBUILDER_HOME whose catalog holds the Debian 12 test image.
home = builds.home
Start = Callable[..., "subprocess.Popen[bytes]"]

BOOT_WAIT = 900.0  # generous: the CPU is shared and TCG is slow
STEP_STARTED = "fault-step-started"


def default_sigint() -> None:
    """In the child: SIGINT back to its default. A test run started in the background by a
    non-interactive shell (CI scripts, nohup … &) inherits SIGINT *ignored*, and Python then never
    raises KeyboardInterrupt — the scenario would test the shell, not localbuilder."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def source_images(home: Path, debian_image: Any) -> dict[Path, str]:
    """The catalog's source image (`image add` references it in place) with its sha256."""
    return {debian_image.path: sha256(debian_image.path)}


class Watch:
    """A build's run, observed while it runs: its guest directories (incl. /var/tmp targets)."""

    def __init__(self, template_name: str) -> None:
        self.template_name = template_name
        self.run: RunDir | None = None
        self.short_dirs: set[Path] = set()

    def poll(self) -> None:
        if self.run is None:
            runs = list(iter_runs(self.template_name))
            if runs:
                self.run = runs[0]
        if self.run is not None:
            for link in self.run.path.glob("vm-*"):
                if link.is_symlink():
                    self.short_dirs.add(Path(os.readlink(link)))

    def guest_dirs(self) -> list[Path]:
        """The live guest directories (``<workdir>/lb-<name>``) of the run."""
        assert self.run is not None
        return sorted(d for d in self.run.path.glob("vm-*/lb-*") if d.is_dir())

    def wait(self, what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None,
             timeout: float = BOOT_WAIT) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if self.run is not None and ready():
                return
            if proc is not None:
                assert proc.poll() is None, f"the build ended (exit {proc.returncode}) before {what}"
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def booting(self) -> bool:
        """qemu runs and the guest has started printing on its console (the kernel is booting)."""
        return any((d / "serial.log").is_file() and (d / "serial.log").stat().st_size > 0
                   for d in self.guest_dirs())  # fmt: skip

    def step_started(self) -> bool:
        assert self.run is not None
        log = self.run.customization_log
        return log.is_file() and STEP_STARTED in log.read_text(errors="replace")

    def qemu_pids(self) -> list[int]:
        return [int(line.split(":", 1)[0]) for d in self.guest_dirs()
                for line in processes_mentioning(str(d.resolve())) if " -name " in line]  # fmt: skip


@pytest.fixture
def start(tmp_path: Path, home: Path) -> Iterator[Start]:
    """Start ``python -m localbuilder build …`` (stderr to build.stderr under tmp_path); killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(*args: str) -> subprocess.Popen[bytes]:
        err = open(tmp_path / "build.stderr", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "localbuilder", "build", *args], cwd=REPO,
                                env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=default_sigint)  # fmt: skip
        err.close()
        started.append(proc)
        return proc

    yield _start
    # A test that failed half-way must not leave a guest behind: cancel the build like a user would,
    # and if even that hangs, kill it and let recovery stop its guest.
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
    recover_stale_runs()


def assert_clean(watch: Watch, out_dir: Path, sources: dict[Path, str]) -> RunRecord:
    """The promises every fault must keep; returns the final record for scenario-specific checks."""
    watch.poll()
    assert watch.run is not None
    run = watch.run
    record = run.read()
    assert record.run_state in (RunState.Failed, RunState.Canceled), record.last_run_status
    assert record.last_run_status.message.strip()
    assert record.last_run_status.end_time
    assert record.guest is None
    leaked = processes_mentioning(str(run.path))
    for short in watch.short_dirs:
        leaked += processes_mentioning(str(short))
        assert not short.exists(), f"{short} was left behind"
    assert leaked == []
    for directory in (out_dir, run.path):
        if directory.is_dir():
            left = [p.name for p in directory.iterdir() if p.name.endswith((".vhd", ".partial", ".qcow2"))]
            assert left == [], f"{directory}: {left}"
    for guest_dir in run.path.glob("vm-*/*"):
        assert sorted(p.name for p in guest_dir.iterdir()) in ([], ["serial.log"]), guest_dir
    assert {p: sha256(p) for p in sources} == sources
    return record


def simple_template(tmp_path: Path, name: str, inline: list[str]) -> Path:
    return write_template(tmp_path / "tpl", name, [{"type": "Shell", "name": "step", "inline": inline}])


LONG_STEP = [f"echo {STEP_STARTED}", "sleep 900"]


def test_a_qemu_killed_during_boot(home: Path, tmp_path: Path, source_images: dict[Path, str],
                                   start: Start) -> None:  # fmt: skip
    tpl = simple_template(tmp_path, "fault-a", LONG_STEP)
    out = tmp_path / "out"
    # --no-cache: a checkpoint left by an earlier scenario would resume instead of booting.
    proc = start(str(tpl), "--output-dir", str(out), "--no-cache")
    watch = Watch("fault-a")
    watch.wait("the guest to boot", watch.booting, proc)
    pids = watch.qemu_pids()
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    record = assert_clean(watch, out, source_images)
    assert record.run_state is RunState.Failed
    message = record.last_run_status.message
    assert "stopped while booting" in message and "serial log" in message, message


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["d-sigint", "e-sigterm"])
def test_d_e_signal_during_boot(home: Path, tmp_path: Path, source_images: dict[Path, str],
                                start: Start, signum: int) -> None:  # fmt: skip
    name = f"fault-{signal.Signals(signum).name.lower()}"
    tpl = simple_template(tmp_path, name, LONG_STEP)
    out = tmp_path / "out"
    proc = start(str(tpl), "--output-dir", str(out), "--no-cache")  # a real boot, not a resume
    watch = Watch(name)
    watch.wait("the guest to boot", watch.booting, proc)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 130
    record = assert_clean(watch, out, source_images)
    assert record.run_state is RunState.Canceled
    assert record.last_run_status.message == "the build was canceled; nothing was left running"


def test_g_build_timeout_during_boot(home: Path, tmp_path: Path, source_images: dict[Path, str]) -> None:
    tpl = simple_template(tmp_path, "fault-g", LONG_STEP)
    (doc,) = load_documents(tpl)
    template, _ = parse_template(doc)
    assert template is not None
    out = tmp_path / "out"
    # In-process with a 20 s bound (the template's minimum, a minute, would cost a minute of boot).
    options = BuildOptions(output_dir=out, timeout_seconds=20, use_cache=False)  # a real boot
    build = Build(template, tpl, LocalPlatform(progress=False), options)
    watch = Watch("fault-g")
    record = build.execute()
    assert record.run_state is RunState.Failed
    message = assert_clean(watch, out, source_images).last_run_status.message
    assert message == ("the build exceeded buildTimeoutInMinutes (20.0 s) during Building; nothing was left "
                       "running"), message


def test_h_sigkill_then_next_start_recovers(home: Path, tmp_path: Path, source_images: dict[Path, str],
                                            start: Start) -> None:  # fmt: skip
    tpl = simple_template(tmp_path, "fault-h", LONG_STEP)
    out = tmp_path / "out"
    proc = start(str(tpl), "--output-dir", str(out))
    watch = Watch("fault-h")
    watch.wait("the first step", watch.step_started, proc)
    assert watch.run is not None
    guest = watch.run.read().guest
    assert guest is not None and guest.pid is not None and guest.backend == "qemu"
    proc.kill()
    proc.wait()
    time.sleep(2)
    # Nothing cleaned up: the guest outlives its builder (that is what recovery is for).
    assert is_guest_process(guest.pid, guest.name, guest.start_ticks)

    t0 = time.monotonic()
    shown = subprocess.run([sys.executable, "-m", "localbuilder", "show-runs"], cwd=REPO,
                           env=dict(os.environ), capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.monotonic() - t0
    assert shown.returncode == 0, shown.stderr
    expected = (f"localbuilder was killed (pid {proc.pid}) during Customizing; its guest (qemu pid "
                f"{guest.pid}) was stopped on the next start")  # fmt: skip
    assert f"warning: run fault-h/{watch.run.run_id}: {expected}" in shown.stderr
    assert not is_guest_process(guest.pid, guest.name, guest.start_ticks)
    record = assert_clean(watch, out, source_images)
    assert record.run_state is RunState.Failed
    assert record.last_run_status.message == expected
    print(f"\n(h) recovered by show-runs in {seconds:.1f} s: {expected}")


def test_b_ssh_connection_drops_mid_command(home: Path, tmp_path: Path, source_images: dict[Path, str],
                                            start: Start) -> None:  # fmt: skip
    # Kills the build user's sshd session process: the connection drops, the guest stays up.
    # '[s]shd' keeps pkill from matching (and killing) the sudo that runs it.
    tpl = simple_template(tmp_path, "fault-b", [
        f"echo {STEP_STARTED}",
        "(sleep 2; sudo pkill -KILL -f '[s]shd: packer@') >/dev/null 2>&1 &",
        "sleep 900",
    ])  # fmt: skip
    out = tmp_path / "out"
    proc = start(str(tpl), "--output-dir", str(out))
    watch = Watch("fault-b")
    watch.wait("the first step", watch.step_started, proc)
    started = time.monotonic()
    assert proc.wait(timeout=600) == 1
    seconds = time.monotonic() - started
    record = assert_clean(watch, out, source_images)
    assert record.run_state is RunState.Failed
    message = record.last_run_status.message
    assert "customize[0] Shell 'step'" in message and "connection dropped" in message, message
    assert "did not reboot" in message, message
    assert record.failed_step == "customize[0] Shell 'step'"
    print(f"\nSSH drop detected and the run ended {seconds:.0f} s after the step started")


def test_c_reboot_mid_step_then_f_output_dir_full(home: Path, tmp_path: Path,
                                                  source_images: dict[Path, str],
                                                  start: Start) -> None:  # fmt: skip
    tpl = write_template(tmp_path / "tpl", "fault-cf", [
        {"type": "Shell", "name": "reboots", "inline": [
            "cat /proc/sys/kernel/random/boot_id | sudo tee /var/lib/lb-boot-before",
            f"echo {STEP_STARTED}",
            "(sleep 3; sudo reboot -f) >/dev/null 2>&1 &",
            "sleep 120",
            "echo | sudo tee /var/lib/lb-never-reached",
        ]},
        {"type": "Shell", "name": "after", "inline": [
            "test \"$(cat /proc/sys/kernel/random/boot_id)\" != \"$(cat /var/lib/lb-boot-before)\"",
            "test ! -e /var/lib/lb-never-reached",
            "echo after-the-reboot",
        ]},
    ])  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs output directory needs root")
    out = tmp_path / "out"
    out.mkdir()
    # Roomy enough for the check before the boot (docs/reliability.md), shrunk to 64 MiB once the
    # build runs: the disk fills up later than localbuilder could foresee (customizations add data).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0700", "tmpfs", str(out)], check=True)
    try:
        proc = start(str(tpl), "--output-dir", str(out))
        watch = Watch("fault-cf")
        watch.wait("the first step to start", watch.step_started, proc)
        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        assert proc.wait(timeout=1800) == 1
        record = assert_clean(watch, out, source_images)
        assert watch.run is not None
        log = watch.run.customization_log.read_text()
        # (c) a reboot in the middle of a step: the build waits for the guest, says so, and goes on.
        assert "guest is rebooting" in log and "after-the-reboot" in log, log[-3000:]
        assert "rebooted before customize[0] Shell 'reboots' reported its end" in log, log[-3000:]
        # (f) the 64 MiB output directory cannot hold the VHD: the target fails, nothing partial stays.
        assert record.run_state is RunState.Failed
        (output,) = record.run_outputs
        assert output.provisioning_state == "Failed"
        assert output.note.startswith(f"disk full while writing {out / 'fault-cf.vhd'} (No space left on "
                                      "device)"), output.note  # fmt: skip
        hint = f"hint: Free space where {out} lives, or choose another --output-dir."
        assert record.last_run_status.message == f"fault-cf: {output.note}\n{hint}"
        assert list(out.iterdir()) == []
        print(f"\n(c)+(f): {record.last_run_status.message}\nphases: "
              f"{[(p.name, p.seconds) for p in record.phases]}")  # fmt: skip
    finally:
        subprocess.run(["umount", str(out)], check=False)
