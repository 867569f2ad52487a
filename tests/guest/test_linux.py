"""Real guests: boot the Debian test image with direct QEMU and with libvirt, run commands, copy files,
shut down, and check that nothing (qemu process, domain, temp file) is left behind — also when
``localbuilder shell`` is killed mid-boot. TCG here: each boot costs ~35-60 s."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localbuilder import keys
from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.errors import BackendError, HostKeyMismatch
from localbuilder.guest.linux import linux_guest
from localbuilder.hypervisor.spec import Accel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def qemu_pids(marker: str) -> list[int]:
    """qemu processes whose command line mentions ``marker`` (a per-test directory)."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{marker}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def libvirt_domains(uri: str) -> set[str]:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return {d.name() for d in conn.listAllDomains()}
    finally:
        conn.close()


@pytest.fixture
def backend_opts(request: pytest.FixtureRequest) -> dict[str, object]:
    if request.param == "libvirt":
        return {"backend": "libvirt", "libvirt_uri": request.getfixturevalue("libvirt_uri")}
    return {"backend": "qemu"}


@pytest.mark.parametrize("backend_opts", ["qemu", "libvirt"], indirect=True)
def test_boot_run_copy_shutdown(boot_image: Path, tmp_path: Path, backend_opts: dict[str, object]) -> None:
    digest = sha256(boot_image)
    workdir = tmp_path / "work"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    with linux_guest(boot_image, "qcow2", workdir=workdir, accel=Accel.tcg, cpus=2, memory_mib=1024,
                     disk_size_bytes=3 * 1024**3, **backend_opts) as g:  # type: ignore[arg-type]
        assert g.timings["ssh"] > 0 and "cloud-init" in g.timings
        r = g.communicator.run("id -un; sudo -n id -u; cloud-init status; lsblk -bdno SIZE /dev/vda")
        assert r.ok, r
        user, root_uid, ci_status, vda = r.stdout_tail.splitlines()
        assert (user, root_uid) == ("packer", "0")
        assert "done" in ci_status
        assert int(vda) == 3 * 1024**3  # the overlay was grown
        g.communicator.upload(payload, "/tmp/payload.bin")
        back = tmp_path / "back.bin"
        g.communicator.download("/tmp/payload.bin", back)
        assert back.read_bytes() == payload.read_bytes()
        assert g.communicator.run("exit 7").exit_status == 7
        # A client pinned to another host key must refuse this guest before authenticating.
        other = keys.generate_ed25519("not-this-guest").public_line
        wrong = SSHCommunicator(g.host, g.port, g.user, g.key_file, [other])
        with pytest.raises(HostKeyMismatch):
            wrong.wait_ready(60)
        wrong.close()
        guest, guest_dir = g.guest, g.workdir
    assert not guest.is_running()
    assert g.timings["shutdown"] < 60
    assert sha256(boot_image) == digest, "the source image must never be written"
    assert sorted(p.name for p in guest_dir.iterdir()) == ["serial.log"]
    assert not qemu_pids(str(workdir))
    if backend_opts["backend"] == "libvirt":
        assert guest.spec.name not in libvirt_domains(str(backend_opts["libvirt_uri"]))


def test_exception_in_block_cleans_up(boot_image: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="shrink"):
        with linux_guest(boot_image, "qcow2", workdir=tmp_path, accel=Accel.tcg, disk_size_bytes=1024**2):
            pass
    assert not qemu_pids(str(tmp_path))


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(("backend", "sig"), [
    ("qemu", signal.SIGTERM), ("qemu", signal.SIGINT), ("libvirt", signal.SIGTERM),
])
def test_killing_shell_mid_boot_leaves_nothing(
    boot_image: Path, tmp_path: Path, backend: str, sig: signal.Signals, request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, LOCALBUILDER_HOME=str(home))
    argv = [sys.executable, "-m", "localbuilder", "shell", str(boot_image), "--accel", "tcg",
            "--hypervisor", backend, "--", "true"]
    before: set[str] = set()
    uri = ""
    if backend == "libvirt":
        uri = request.getfixturevalue("libvirt_uri")
        before = libvirt_domains(uri)
    # SIGINT back to default in the child: a background CI shell starts us with it ignored.
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if backend == "qemu":
            started = _wait_for(lambda: bool(qemu_pids(str(home))), 30)
        else:
            started = _wait_for(lambda: bool(libvirt_domains(uri) - before), 30)
        if not started and proc.poll() is not None:
            pytest.fail("the guest never started: " + proc.communicate()[1].decode())
        assert started, "the guest did not start within 30 s"
        time.sleep(2)  # mid-boot: qemu is running, SSH is not up yet
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "canceled" in err.decode()
    assert not qemu_pids(str(home))
    if backend == "libvirt":
        assert libvirt_domains(uri) - before == set()
    leftovers = [p for p in (home / "shell").rglob("*")] if (home / "shell").exists() else []
    assert leftovers == []


def test_interactive_shell_through_a_pty(boot_image: Path, tmp_path: Path) -> None:
    """`localbuilder shell SOURCE` without a command: a login shell on a raw local TTY; its exit status
    is passed through."""
    import pty
    import select as select_mod

    env = dict(os.environ, LOCALBUILDER_HOME=str(tmp_path / "home"), TERM="dumb")
    pid, fd = pty.fork()
    if pid == 0:  # child: becomes localbuilder with the pty as its terminal
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "localbuilder", "shell", str(boot_image),
                                   "--accel", "tcg"], env)
    out = b""
    sent = False
    end = time.monotonic() + 600
    try:
        while time.monotonic() < end:
            ready, _, _ = select_mod.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"packer@" in out:
                os.write(fd, b"echo MARK-$((6*7)); exit 3\r")
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert sent, text[-2000:]
    assert "MARK-42" in text and "timings: boot to SSH" in text, text[-2000:]
    assert os.waitstatus_to_exitcode(status) == 3, text[-2000:]
    assert not qemu_pids(str(tmp_path / "home"))
