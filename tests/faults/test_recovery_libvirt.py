"""Recovery of a killed build's libvirt domain, against the real libvirtd (qemu:///system).

The domains are tiny (32 MiB, no disk: SeaBIOS finds nothing to boot and waits), so the check costs a
second, not a guest boot. A transient domain (what the libvirt backend creates) is destroyed; a
persistent one is destroyed and undefined; a domain of a live build is left alone.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder import recovery
from localbuilder.state import ActiveGuest, ProcessInfo, RunDir, RunState, _start_ticks

pytestmark = pytest.mark.integration

URI = "qemu:///system"


@pytest.fixture
def conn() -> Iterator[Any]:
    try:
        import libvirt
    except ImportError:
        pytest.skip("libvirt-python is not installed (pip install '.[libvirt]')")
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    try:
        c = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.skip(f"libvirtd is not reachable at {URI} ({exc}); start it: bash tests/start-services.sh")
    made: list[str] = []
    c.made = made
    yield c
    for name in made:
        try:
            dom = c.lookupByName(name)
        except libvirt.libvirtError:
            continue
        persistent = dom.isPersistent()
        if dom.isActive():
            dom.destroy()  # a transient domain is gone after this
        if persistent:
            dom.undefine()
    c.close()


def domain(conn: Any, *, persistent: bool) -> str:
    name = f"lb-{secrets.token_hex(5)}"
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
           "<devices><video><model type='none'/></video></devices>"
           "<seclabel type='none' model='dac'/></domain>")  # fmt: skip
    conn.made.append(name)
    if persistent:
        conn.defineXML(xml).create()
    else:
        conn.createXML(xml, 0)
    return name


def dead_build() -> ProcessInfo:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    info = ProcessInfo(p.pid, socket.gethostname(), _start_ticks(p.pid))
    p.wait()
    return info


def run_with(runs: Path, name: str, process: ProcessInfo) -> RunDir:
    run = RunDir.create("tpl", Path("/t.json"), root=runs)
    guest = ActiveGuest("libvirt", name, str(run.path / "vm-build" / name), "build", libvirt_uri=URI)
    run.write(dataclasses.replace(run.read(), process=process, guest=guest))
    return run


def test_killed_builds_domains_are_destroyed_and_undefined(conn: Any, tmp_path: Path) -> None:
    transient = domain(conn, persistent=False)
    persistent = domain(conn, persistent=True)
    live = domain(conn, persistent=False)
    runs = tmp_path / "runs"
    r1 = run_with(runs, transient, dead_build())
    r2 = run_with(runs, persistent, dead_build())
    r3 = run_with(runs, live, ProcessInfo.current())

    recovered = {r.run_id: r for r in recovery.recover_stale_runs(runs)}

    names = {d.name() for d in conn.listAllDomains()}
    assert transient not in names and persistent not in names  # gone, also from the defined list
    assert live in names and conn.lookupByName(live).isActive()
    assert set(recovered) == {r1.run_id, r2.run_id}
    for run, name in ((r1, transient), (r2, persistent)):
        assert recovered[run.run_id].stopped == (f"libvirt domain {name}",)
        record = run.read()
        assert record.run_state is RunState.Failed and record.guest is None
        assert f"its guest (libvirt domain {name}) was stopped on the next start" in (
            record.last_run_status.message
        )
    assert r3.read().run_state is RunState.Running
