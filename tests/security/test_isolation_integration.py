"""One real build (Debian 12 test image, TCG here) that checks isolation, file modes, hostile guest output
and the build key's secrecy in a single boot.

The build runs as ``python -m localbuilder build --json`` in a subprocess. Its first step tries to reach
a TCP server this test runs on the host (the guest sees the host as 10.0.2.2 under slirp) and then waits
for a file the test creates through SSH. While it waits, the test

- enumerates the listening TCP sockets of the build's processes (localbuilder and its qemu child):
  every one is bound to 127.0.0.1, and the SSH forward is among them;
- checks the modes: run directory 0700, state.json / customization.log 0600, guest directory 0700,
  build key 0600;
- reads the build key from the guest directory and logs in with it (through the forwarded port and the
  pinned host key from the seed): the key the test greps for afterwards is the live one.

The second step prints invalid UTF-8, terminal escape sequences and 50 MiB as fast as the guest can.
Afterwards: the guest had no network to the host, the builder's memory did not grow with the output, the
log holds every line (as AIB's customization.log does) but no raw control character, and no file of
the run directory (the output VHD included), nor stdout (``--json``) nor stderr, holds the build key.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.hypervisor.seed import BUILD_USER
from localbuilder.state import RunDir, RunState, iter_runs
from tests.build.test_build_integration import home, processes_mentioning, write_template  # noqa: F401
from tests.hypervisor.test_seed import read_iso
from tests.security.leaks import leaks

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FLOOD_LINES = 51200  # of 1024 bytes each: 50 MiB
FLOOD_LINE = "x" * 1023
# The builder's resident memory may grow by this much while 50 MiB of output stream through it.
MEMORY_GROWTH_LIMIT = 24 * 1024 * 1024


class HostServer:
    """A TCP server on the host's loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# ------------------------------------------------------------------------------------------ processes


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (from /proc/*/stat parent pids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(match.group(1)))
    return inodes


def _address(hex_addr: str) -> str:
    """/proc/net/tcp{,6} addresses: little-endian 32-bit words in hex."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode → (address, port) of every TCP socket in LISTEN state (0A) in this network namespace."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            addr, port = fields[1].split(":")
            found[int(fields[9])] = (_address(addr), int(port, 16))
    return found


def rss_bytes(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


# ------------------------------------------------------------------------------------------- secrets


def key_needles(key_file: Path) -> dict[str, bytes]:
    """Byte strings that only the private key contains, named for the failure message.

    The first base64 line of every OpenSSH private key is the same header ("openssh-key-v1", cipher
    none …), so it is no evidence; every later body line holds key material. The raw 32-byte ed25519
    seed, in binary and hex, catches copies in other encodings (a disk image, a dump).
    """
    text = key_file.read_text()
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
    needles = {f"PEM line {i + 2}": line.encode() for i, line in enumerate(body[1:]) if len(line) >= 16}
    key = serialization.load_ssh_private_key(text.encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    needles["raw seed"] = seed
    needles["hex seed"] = seed.hex().encode()
    return needles


# ------------------------------------------------------------------------------------------- the test


def stop_build(proc: subprocess.Popen[bytes]) -> None:
    """After a failed check: cancel the build (SIGTERM: it powers the guest off and cleans up), and kill
    what is left of it if that does not end it — never leave a guest behind."""
    if proc.poll() is not None:
        return
    tree = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def wait_for(predicate: Any, what: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the build ended (exit {proc.returncode}) before {what}"
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class LogWatcher:
    """Reads customization.log incrementally (it grows to ~60 MiB) and remembers which markers it saw."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""
        self.seen: set[str] = set()

    def poll(self, markers: tuple[str, ...]) -> set[str]:
        if self.path.exists():
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read(64 << 20)
            self.pos += len(data)
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()
            for line in lines:
                for marker in markers:
                    if line.endswith(b"stdout: " + marker.encode()):
                        self.seen.add(marker)
        return self.seen


def test_isolation_modes_hostile_output_and_key_secrecy(home: Path, tmp_path: Path) -> None:  # noqa: F811
    server = HostServer()
    customize = [
        {"type": "Shell", "name": "isolation-probe", "inline": [
            f"if timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{server.port}' 2>/dev/null; "
            "then echo host-net=reachable; else echo host-net=blocked; fi",
            "echo probe-ready",
            # The test logs in with the build key and creates /tmp/lb-go (bounded: 5 min).
            "i=0; while [ ! -e /tmp/lb-go ] && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done",
            "echo probe-done",
        ]},
        {"type": "Shell", "name": "hostile-output", "inline": [
            "printf 'bad \\377\\376 bytes\\n'",
            "printf 'esc \\033[2J\\033[31mred\\033[0m \\033]0;pwned-title\\007 '"
            "'\\033]52;c;cHduZWQ=\\007 end\\n'",
            "echo flood-start",
            f"yes {FLOOD_LINE} | head -n {FLOOD_LINES}",
            "echo flood-done",
        ]},
    ]  # fmt: skip
    tpl = write_template(tmp_path / "tpl", "isolation", customize)
    stdout_file, stderr_file = tmp_path / "stdout.json", tmp_path / "stderr.txt"
    with open(stdout_file, "wb") as out, open(stderr_file, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "localbuilder", "build", "--json", str(tpl)],
            stdout=out, stderr=err, cwd=REPO, env=dict(os.environ),
        )  # fmt: skip
    try:
        rundir: RunDir = wait_for(lambda: next(iter(iter_runs("isolation")), None), "the run directory", proc)
        watcher = LogWatcher(rundir.customization_log)
        markers = ("probe-ready", "flood-start", "flood-done")
        wait_for(lambda: "probe-ready" in watcher.poll(markers), "the isolation probe", proc)
        before = rss_bytes(proc.pid)  # booted, connected, one step done: the builder's working size
        assert before is not None

        # -- sockets: everything the build listens on is loopback-only -----------------------------
        pids = descendants(proc.pid)
        assert len(pids) >= 2, f"no qemu child under {proc.pid}: {pids}"
        listening = listening_sockets()
        ours = {listening[i] for pid in pids for i in socket_inodes(pid) if i in listening}
        assert ours, "the build listens on no TCP socket: where is the SSH forward?"
        assert {addr for addr, _ in ours} == {"127.0.0.1"}, ours

        # -- modes ----------------------------------------------------------------------------------
        assert stat.S_IMODE(rundir.path.stat().st_mode) == 0o700
        assert stat.S_IMODE(rundir.path.parent.stat().st_mode) == 0o700
        for private in (rundir.state_file, rundir.customization_log):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        (key_file,) = (rundir.path / "vm-build").resolve().glob("lb-*/seed/build_key")
        guest_dir = key_file.parent.parent
        assert stat.S_IMODE((rundir.path / "vm-build").resolve().stat().st_mode) == 0o700
        assert stat.S_IMODE(guest_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        for secret in (key_file, key_file.parent / "seed.iso"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret

        # -- the key we will grep for is the live build key: log in with it --------------------------
        needles = key_needles(key_file)
        # The search finds the key where it is (the seed is only in there base64-encoded).
        assert set(leaks(key_file, needles)) == {n for n in needles if n.startswith("PEM")}
        user_data = read_iso(key_file.parent / "seed.iso")["user-data"].decode()
        host_line = re.search(r"ed25519_public: (ssh-ed25519 \S+)", user_data)
        assert host_line is not None
        ports = sorted(port for _, port in ours)
        with SSHCommunicator("127.0.0.1", ports[0], BUILD_USER, key_file, [host_line.group(1)]) as comm:
            comm.wait_ready(60)
            assert comm.run("touch /tmp/lb-go").ok

        # -- memory while 50 MiB of output streams through the builder --------------------------------
        wait_for(lambda: "flood-start" in watcher.poll(markers), "the flood", proc)
        peak = before
        while "flood-done" not in watcher.poll(markers):
            peak = max(peak, rss_bytes(proc.pid) or 0)
            assert proc.poll() is None, "the build ended during the flood"
            time.sleep(0.2)
        code = proc.wait(timeout=900)
    finally:
        server.stop()
        stop_build(proc)

    stdout, stderr = stdout_file.read_bytes(), stderr_file.read_bytes()
    record = rundir.read()
    assert code == 0, (record.last_run_status.message, stderr[-3000:])
    assert record.run_state is RunState.Succeeded
    assert json.loads(stdout)["lastRunStatus"]["runState"] == "Succeeded"
    assert processes_mentioning(str(rundir.path)) == []
    growth = peak - before
    print(f"\nbuilder RSS {before / 2**20:.0f} MiB before the flood, peak {peak / 2**20:.0f} MiB during it")
    assert growth < MEMORY_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB for 50 MiB of output"

    # -- no network from the guest to the host ---------------------------------------------------------
    log = rundir.customization_log.read_bytes()
    assert b"stdout: host-net=blocked" in log and b"host-net=reachable" not in log
    assert server.accepted == 0

    # -- hostile output: every line kept, nothing raw reaches a log or the console ---------------------
    assert log.count(b"stdout: " + FLOOD_LINE.encode() + b"\n") == FLOOD_LINES
    assert "stdout: bad \ufffd\ufffd bytes".encode() in log
    assert b"stdout: esc \\x1b[2Jred \\x1b]0;pwned-title\\x07 \\x1b]52;c;cHduZWQ=\\x07 end" in log
    for name, data in (("customization.log", log), ("build.log", rundir.build_log.read_bytes()),
                       ("stderr", stderr)):  # fmt: skip
        assert b"\x1b]" not in data and b"\x1b[2J" not in data, f"a raw escape sequence reached {name}"
    assert b"esc \\x1b[2Jred" in stderr  # the console showed the line, defanged

    # -- the build key is nowhere: run directory (VHD included), stdout, stderr ----------------------
    assert not key_file.exists()  # the guest directory was cleaned up
    files = [p for p in rundir.path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".vhd" for p in files), files
    found = {str(p.relative_to(rundir.path)): leaks(p, needles) for p in files}
    found["stdout"] = [n for n, needle in needles.items() if needle in stdout]
    found["stderr"] = [n for n, needle in needles.items() if needle in stderr]
    assert {k: v for k, v in found.items() if v} == {}
    names = sorted(str(p.relative_to(rundir.path)) for p in files)
    print(f"searched {names} + stdout + stderr for {len(needles)} pieces of the build key")
    stamps = [
        line.split(b" ", 1)[0].decode()
        for line in log.splitlines()
        if line.endswith((b"stdout: flood-start", b"stdout: flood-done"))
    ]
    print(f"listening: {sorted(ours)}; flood from {stamps[0]} to {stamps[1]}; build {record.phases}")
