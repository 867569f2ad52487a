"""Direct QEMU backend: golden argv, start-up failures, QMP lifecycle against a fake qemu."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from localbuilder.errors import BackendError
from localbuilder.hypervisor.backends import get_backend
from localbuilder.hypervisor.qemu import GuestFiles, PortInUse, QemuHypervisor, free_port, qemu_argv
from localbuilder.hypervisor.spec import Accel, Firmware, GuestSpec, NetworkMode, PortForward
from tests.fixtures.golden import Golden

WORK = Path("/var/lib/lb/guest")


def spec(**kw: object) -> GuestSpec:
    base: dict[str, object] = dict(
        name="lb-test",
        disk=WORK / "overlay.qcow2",
        workdir=WORK,
        cpus=2,
        memory_mib=2048,
        seed_iso=WORK / "seed" / "seed.iso",
        forwards=(PortForward(22, 40022),),
    )
    base.update(kw)
    return GuestSpec(**base)  # type: ignore[arg-type]


def argv_text(s: GuestSpec) -> str:
    # One option (with its value) per line: diffs of the golden file read like the command line.
    out: list[str] = []
    for arg in qemu_argv(s, GuestFiles.for_spec(s)):
        if arg.startswith("-") or not out:
            out.append(arg)
        else:
            out[-1] += " " + arg
    return "\n".join(out) + "\n"


def test_argv_bios_tcg(golden: Golden) -> None:
    golden(argv_text(spec()), "qemu-bios-tcg.argv")


def test_argv_uefi_kvm_user_network(golden: Golden) -> None:
    golden(
        argv_text(
            spec(
                firmware=Firmware.uefi,
                accel=Accel.kvm,
                network=NetworkMode.user,
                cpus=1,
                memory_mib=3584,
                seed_iso=None,
            )
        ),
        "qemu-uefi-kvm.argv",
    )


def test_argv_invariants() -> None:
    argv = qemu_argv(spec(), GuestFiles.for_spec(spec()))
    assert "-no-reboot" not in argv  # guests reboot during builds
    assert "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22" in argv
    assert any(a.endswith("format=raw,readonly=on") and "seed.iso" in a for a in argv)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def fake_qemu(tmp_path: Path, body: str) -> str:
    """A python stand-in for qemu-system that serves QMP on the -qmp socket."""
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


QMP_SERVER = """
    import json, os, socket, sys, time
    args = sys.argv[1:]
    sock_path = args[args.index("-qmp") + 1].split(",")[0][len("unix:"):]
    srv = socket.socket(socket.AF_UNIX); srv.bind(sock_path); srv.listen(1)
    conn, _ = srv.accept(); f = conn.makefile("rwb")
    def send(m): f.write(json.dumps(m).encode() + b"\\r\\n"); f.flush()
    send({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}})
    for line in f:
        cmd = json.loads(line)["execute"]
        if cmd == "qmp_capabilities":
            send({"return": {}})
            send({"event": "RESET", "data": {"guest": True}})
            send({"event": "RESET", "data": {"guest": True}})
        elif cmd == "query-status":
            send({"return": {"status": "running", "running": True}})
        elif cmd == "system_powerdown":
            send({"return": {}})
            if os.environ.get("FAKE_QEMU_IGNORES_ACPI"):
                continue
            send({"event": "SHUTDOWN", "data": {"guest": True}})
            sys.exit(0)
    time.sleep(600)
"""


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    d = tmp_path / "disk.qcow2"
    d.write_bytes(b"")
    return d


def test_lifecycle_with_fake_qemu(tmp_path: Path, disk: Path) -> None:
    hv = QemuHypervisor(qemu=fake_qemu(tmp_path, QMP_SERVER))
    guest = hv.start(spec(disk=disk, workdir=tmp_path / "w", seed_iso=None))
    assert guest.is_running() and guest.status() == "running"
    assert guest.reset_count() == 2
    assert guest.wait_shutdown(0.2) is False
    assert guest.shutdown(10) is True
    assert not guest.is_running() and guest.status() == "exited"
    assert not (tmp_path / "w" / "qmp.sock").exists()
    guest.destroy()  # idempotent
    guest.destroy()


def test_shutdown_falls_back_to_kill(tmp_path: Path, disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_IGNORES_ACPI", "1")
    hv = QemuHypervisor(qemu=fake_qemu(tmp_path, QMP_SERVER))
    guest = hv.start(spec(disk=disk, workdir=tmp_path / "w", seed_iso=None))
    start = time.monotonic()
    assert guest.shutdown(0.5) is False
    assert time.monotonic() - start < 5
    assert not guest.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(guest.pid, 0)


def test_early_exit_shows_stderr(tmp_path: Path, disk: Path) -> None:
    qemu = fake_qemu(
        tmp_path,
        """
        import sys
        print("qemu-system-x86_64: -drive file=x: Could not open 'x': No such file or directory",
              file=sys.stderr)
        sys.exit(1)
    """,
    )
    with pytest.raises(BackendError) as err:
        QemuHypervisor(qemu=qemu).start(spec(disk=disk, workdir=tmp_path / "w", seed_iso=None))
    assert "Could not open" in err.value.message and "exit status 1" in err.value.message
    assert err.value.hint and "qemu-img info" in err.value.hint


def test_port_in_use_is_its_own_error(tmp_path: Path, disk: Path) -> None:
    qemu = fake_qemu(
        tmp_path,
        """
        import sys
        print("qemu-system-x86_64: -netdev user,id=n0: "
              "Could not set up host forwarding rule 'tcp:127.0.0.1:1-:22'", file=sys.stderr)
        sys.exit(1)
    """,
    )
    with pytest.raises(PortInUse):
        QemuHypervisor(qemu=qemu).start(spec(disk=disk, workdir=tmp_path / "w", seed_iso=None))


def test_missing_disk_and_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        get_backend("qemu").start(spec(disk=tmp_path / "nope.qcow2", workdir=tmp_path / "w"))
    with pytest.raises(Exception, match="unknown hypervisor backend"):
        get_backend("vmware")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_real_qemu_rejects_bad_disk(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"this is not a qcow2 image" * 100)
    with pytest.raises(BackendError) as err:
        QemuHypervisor().start(
            spec(disk=bad, workdir=tmp_path / "w", seed_iso=None, forwards=(PortForward(22, free_port()),))
        )
    assert "qcow2" in err.value.message
    assert err.value.hint and str(bad) in err.value.hint


def test_long_workdir_gets_short_qmp_socket(tmp_path: Path, disk: Path) -> None:
    # sun_path is 108 bytes: a deep work directory must not break QMP (found by the shell kill test).
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    hv = QemuHypervisor(qemu=fake_qemu(tmp_path, QMP_SERVER))
    guest = hv.start(spec(disk=disk, workdir=deep, seed_iso=None))
    sock = guest.files.qmp_socket
    assert len(str(sock)) < 100 and sock.exists()
    assert guest.shutdown(10)
    assert not sock.parent.exists()


def test_commas_in_paths_are_escaped() -> None:
    s = spec(disk=Path("/a,b/disk.qcow2"))
    argv = qemu_argv(s, GuestFiles.for_spec(s))
    assert "file=/a,,b/disk.qcow2,if=virtio,format=qcow2,discard=unmap" in argv


def test_argv_compat_devices_for_windows(golden: Golden) -> None:
    from localbuilder.hypervisor.spec import DeviceSet

    golden(
        argv_text(spec(devices=DeviceSet.compat, forwards=(PortForward(5986, 45986),))), "qemu-compat.argv"
    )
    argv = qemu_argv(spec(devices=DeviceSet.compat), GuestFiles.for_spec(spec()))
    assert not any("virtio" in a for a in argv)
    assert "e1000,netdev=n0" in argv and "ide-cd,drive=cd0,bus=ahci.1" in argv
