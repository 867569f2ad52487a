"""SSHCommunicator against the in-process SSH server (tests/communicator/sshserver.py): no VM needed."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest

from localbuilder import keys
from localbuilder.communicator.output import MAX_LINE_CHARS, TAIL_CHARS, TAIL_LINES
from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.errors import CommunicatorError, CommunicatorTimeout, Disconnected, HostKeyMismatch
from tests.communicator.conftest import MakeComm
from tests.communicator.sshserver import RawServer, SSHTestServer, TCPProxy


def collect(comm: SSHCommunicator, command: str, **kwargs: object) -> tuple[list[tuple[str, str]], object]:
    seen: list[tuple[str, str]] = []
    result = comm.run(command, on_output=lambda stream, line: seen.append((stream, line)), **kwargs)  # type: ignore[arg-type]
    return seen, result


# ----------------------------------------------------------------------------------------- connecting


def test_key_auth_and_exit_codes(comm: SSHCommunicator) -> None:
    result = comm.run("whoami")
    assert result.exit_status == 0 and result.ok
    assert result.stdout_tail == "builder"
    assert comm.run("echo hi; exit 3").exit_status == 3
    assert not comm.run("exit 1").ok


def test_wrong_host_key_is_refused_and_nothing_runs(make_comm: MakeComm, server: SSHTestServer) -> None:
    other = keys.generate_ed25519("impostor")
    comm = make_comm(host_keys=[other.public_line])
    with pytest.raises(HostKeyMismatch) as info:
        comm.wait_ready(5)
    message = str(info.value)
    # Both fingerprints are shown: what the server presented and what was expected.
    assert keys.fingerprint(other.public_line) in message
    assert "presented host key ssh-ed25519 SHA256:" in message
    assert info.value.hint
    assert server.commands == []
    assert not comm.connected


def test_pinned_key_type_the_server_lacks_is_a_mismatch(make_comm: MakeComm) -> None:
    # The server has only an ed25519 host key; pinning just an ECDSA key leaves no common algorithm.
    ecdsa = keys.generate_ecdsa()
    comm = make_comm(host_keys=[ecdsa.public_line])
    with pytest.raises(HostKeyMismatch, match="none of the pinned host key types"):
        comm.wait_ready(5)


def test_one_of_several_pinned_keys_is_enough(make_comm: MakeComm, host_pair: keys.KeyPair) -> None:
    comm = make_comm(host_keys=[keys.generate_ed25519().public_line, host_pair.public_line])
    comm.wait_ready(5)
    assert comm.run("echo ok").stdout_tail == "ok"


def test_no_pinned_key_is_refused(make_comm: MakeComm) -> None:
    with pytest.raises(CommunicatorError, match="no pinned host key"):
        make_comm(host_keys=[])


def test_garbage_host_key_line_names_the_problem(make_comm: MakeComm) -> None:
    with pytest.raises(CommunicatorError, match="not valid base64"):
        make_comm(host_keys=["ssh-ed25519 !!!notbase64"])


def test_refused_client_key_is_reported_after_the_grace(tmp_path: Path, server: SSHTestServer) -> None:
    stranger = keys.write_private_key(tmp_path / "stranger", keys.generate_ed25519())
    comm = SSHCommunicator(
        "127.0.0.1",
        server.port,
        "builder",
        stranger,
        [_server_line(server)],
        poll_interval=0.1,
        auth_grace=0.5,
    )
    try:
        start = time.monotonic()
        with pytest.raises(CommunicatorError, match="refuses the build key") as info:
            comm.wait_ready(30)
        assert not isinstance(info.value, CommunicatorTimeout)
        assert time.monotonic() - start < 10  # did not burn the whole timeout
        assert "ssh_authorized_keys" in (info.value.hint or "")
    finally:
        comm.close()


def _server_line(server: SSHTestServer) -> str:
    return f"{server.host_key.get_name()} {server.host_key.get_base64()}"


def test_missing_key_file_is_a_clear_error(server: SSHTestServer, tmp_path: Path) -> None:
    with pytest.raises(CommunicatorError, match="does not exist"):
        SSHCommunicator("127.0.0.1", server.port, "builder", tmp_path / "nope", [_server_line(server)])


def test_banner_wait_survives_a_silent_port(make_comm: MakeComm, server: SSHTestServer) -> None:
    """Like slirp before sshd listens: TCP connects, nothing is said, the connection closes."""
    proxy = TCPProxy(server.port, silent=True, silent_close=0.3)
    try:
        comm = make_comm(port=proxy.port, connect_timeout=1.0)
        statuses: list[str] = []

        def switch_on_later(elapsed: float, status: str) -> None:
            statuses.append(status)
            if elapsed > 1.5:
                proxy.silent = False

        comm.wait_ready(20, progress=switch_on_later)
        assert proxy.silent_connections >= 2
        # No SSH handshake was attempted against the silent port: the server saw exactly one connection.
        assert server.connections == 1
        assert comm.run("echo through the proxy").stdout_tail == "through the proxy"
        assert statuses and "attempt" in statuses[0]
    finally:
        proxy.stop()


def test_wait_ready_timeout_shows_the_console_tail(make_comm: MakeComm, tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as s:  # reserve a port nobody answers on
        port = s.getsockname()[1]
    serial = tmp_path / "serial.log"
    serial.write_bytes(
        b"boot line 1\r\n\x1b[32mOK\x1b[0m Started ssh\r\n"
        + b"x" * 10
        + b"\r\nKernel panic - not syncing\r\n"
    )
    comm = make_comm(port=port, serial_log=serial)
    start = time.monotonic()
    with pytest.raises(CommunicatorTimeout) as info:
        comm.wait_ready(1.0)
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert "did not become ready within 1 s" in message
    assert "Kernel panic - not syncing" in message
    assert "OK Started ssh" in message  # escape sequences stripped
    assert "\x1b" not in message
    assert "connect" in message  # the last error is named


def test_server_stuck_after_its_banner_times_out_cleanly(make_comm: MakeComm) -> None:
    raw = RawServer(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", hold=5)
    try:
        comm = make_comm(port=raw.port, handshake_timeout=0.5)
        with pytest.raises(CommunicatorTimeout, match="key exchange did not complete"):
            comm.wait_ready(2)
        assert raw.connections >= 2  # it was retried
    finally:
        raw.stop()


def test_a_different_service_on_the_port_is_named(make_comm: MakeComm) -> None:
    raw = RawServer(b"HTTP/1.1 400 Bad Request\r\n\r\n", hold=5)
    try:
        comm = make_comm(port=raw.port, connect_timeout=0.3)
        with pytest.raises(CommunicatorTimeout, match="not with an SSH banner: b'HTTP/1.1 400"):
            comm.wait_ready(1)
    finally:
        raw.stop()


def test_wait_ready_timeout_with_missing_console_log(make_comm: MakeComm, tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    comm = make_comm(port=port, serial_log=tmp_path / "absent.log")
    with pytest.raises(CommunicatorTimeout, match="does not exist"):
        comm.wait_ready(0.3)


def test_run_before_connect_is_a_clear_error(make_comm: MakeComm) -> None:
    with pytest.raises(CommunicatorError, match="not connected"):
        make_comm().run("echo")


# ------------------------------------------------------------------------------------------ running


def test_streaming_keeps_order_per_stream(comm: SSHCommunicator) -> None:
    seen, result = collect(comm, "interleave 50")
    out = [line for stream, line in seen if stream == "stdout"]
    err = [line for stream, line in seen if stream == "stderr"]
    assert out == [f"o{i}" for i in range(50)]
    assert err == [f"e{i}" for i in range(50)]
    assert result.stdout_tail.splitlines() == out  # type: ignore[attr-defined]


def test_output_is_streamed_before_the_command_ends(comm: SSHCommunicator) -> None:
    arrivals: list[float] = []
    start = time.monotonic()
    comm.run(
        "echo first; sleep 0.8; echo second",
        on_output=lambda s, line: arrivals.append(time.monotonic() - start),
    )
    assert len(arrivals) == 2
    assert arrivals[0] < 0.6 and arrivals[1] >= 0.8


def test_stdin_is_sent_and_closed(comm: SSHCommunicator) -> None:
    assert comm.run("cat", stdin=b"line one\nline two\n").stdout_tail == "line one\nline two"
    big = os.urandom(3 * 1024 * 1024)  # larger than the SSH window: must be sent in pieces
    assert comm.run("count-stdin", stdin=big).stdout_tail == str(len(big))


def test_no_stdin_means_eof_not_a_hang(comm: SSHCommunicator) -> None:
    assert comm.run("count-stdin", timeout=5).stdout_tail == "0"


def test_invalid_utf8_does_not_crash(comm: SSHCommunicator) -> None:
    seen, _ = collect(comm, "invalid-utf8")
    assert seen == [("stdout", "bad \ufffd\ufffd bytes"), ("stdout", "café")]


def test_flood_keeps_memory_and_tail_bounded(comm: SSHCommunicator) -> None:
    count = 0

    def counter(stream: str, line: str) -> None:
        nonlocal count
        count += 1

    tracemalloc.start()
    try:
        result = comm.run("flood 50", on_output=counter, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50 * 10486  # every line was streamed
    assert len(result.stdout_tail.splitlines()) <= TAIL_LINES
    assert len(result.stdout_tail) <= TAIL_CHARS
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for 50 MiB of output"


def test_long_line_without_newline_is_split(comm: SSHCommunicator) -> None:
    seen, result = collect(comm, f"longline {5 * MAX_LINE_CHARS + 7}")
    assert [len(line) for _, line in seen] == [MAX_LINE_CHARS] * 5 + [7]
    assert len(result.stdout_tail) <= TAIL_CHARS  # type: ignore[attr-defined]


def test_command_timeout_closes_the_channel(comm: SSHCommunicator, server: SSHTestServer) -> None:
    start = time.monotonic()
    with pytest.raises(CommunicatorTimeout, match="did not finish within 0.5 s") as info:
        comm.run("echo started; hang", timeout=0.5)
    assert time.monotonic() - start < 3
    assert "started" in str(info.value)  # the output so far is in the message
    # The connection is still usable for the next command.
    assert comm.run("echo after").stdout_tail == "after"


def test_failing_output_callback_propagates_and_the_connection_survives(comm: SSHCommunicator) -> None:
    def explode(stream: str, line: str) -> None:
        raise ValueError(f"callback saw {line}")

    with pytest.raises(ValueError, match="callback saw o0"):
        comm.run("interleave 100", on_output=explode)
    assert comm.run("echo fine").stdout_tail == "fine"


def test_dropped_connection_is_disconnected(comm: SSHCommunicator) -> None:
    seen: list[str] = []
    with pytest.raises(Disconnected) as info:
        comm.run("drop", on_output=lambda s, line: seen.append(line), timeout=10)
    assert seen == ["about to drop"]
    assert info.value.hint and "reconnect" in info.value.hint
    assert not comm.connected
    with pytest.raises(Disconnected):
        comm.run("echo again")


def test_missing_exit_status_is_disconnected(comm: SSHCommunicator) -> None:
    with pytest.raises(Disconnected, match="without an exit status"):
        comm.run("echo partial; nostatus")
    assert comm.connected  # the transport itself is fine


def test_frozen_guest_is_noticed(make_comm: MakeComm, server: SSHTestServer) -> None:
    """A paused or hung guest behind slirp keeps the TCP connection open and silent."""
    proxy = TCPProxy(server.port)
    try:
        comm = make_comm(port=proxy.port, liveness_after=0.3, liveness_timeout=1.0)
        comm.wait_ready(5)
        assert comm.run("sleep 1.0").ok  # a silent but alive command is not mistaken for a dead guest
        comm.run("echo warm")
        start = time.monotonic()
        with pytest.raises(Disconnected, match="stopped answering"):
            proxy.freeze()
            comm.run("sleep 60")
        assert time.monotonic() - start < 5
    finally:
        proxy.stop()


def test_reconnect_after_a_drop(comm: SSHCommunicator, server: SSHTestServer) -> None:
    server.drop_all()
    with pytest.raises(Disconnected):
        comm.run("echo x", timeout=5)
    comm.reconnect(10)
    assert comm.run("echo back").stdout_tail == "back"
    assert server.connections == 2


# -------------------------------------------------------------------------------------------- files


def test_upload_download_round_trip_with_mode(
    comm: SSHCommunicator, server: SSHTestServer, tmp_path: Path
) -> None:
    src = tmp_path / "script.sh"
    payload = os.urandom(1024 * 1024 + 13)
    src.write_bytes(payload)
    comm.upload(src, "/tmp/script.sh", mode=0o700)
    remote = server.root / "tmp" / "script.sh"
    assert remote.read_bytes() == payload
    assert remote.stat().st_mode & 0o777 == 0o700
    back = tmp_path / "out" / "nested" / "copy.bin"
    comm.download("/tmp/script.sh", back)
    assert back.read_bytes() == payload
    assert not list(back.parent.glob(".*.part"))


def test_upload_replaces_an_existing_file(
    comm: SSHCommunicator, server: SSHTestServer, tmp_path: Path
) -> None:
    (server.root / "tmp" / "f").write_bytes(b"x" * 1000)
    src = tmp_path / "f"
    src.write_bytes(b"short")
    comm.upload(src, "/tmp/f")
    assert (server.root / "tmp" / "f").read_bytes() == b"short"


def test_upload_into_missing_directory_names_it(comm: SSHCommunicator, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(CommunicatorError, match=r"the directory /opt/missing does not exist") as info:
        comm.upload(src, "/opt/missing/f")
    assert "mkdir -p /opt/missing" in (info.value.hint or "")


def test_upload_of_missing_local_file(comm: SSHCommunicator, tmp_path: Path) -> None:
    with pytest.raises(CommunicatorError, match="cannot read .*nope for upload to /tmp/x"):
        comm.upload(tmp_path / "nope", "/tmp/x")


def test_download_of_missing_remote_file(comm: SSHCommunicator, tmp_path: Path) -> None:
    with pytest.raises(CommunicatorError, match="cannot download /tmp/absent from the guest: no such file"):
        comm.download("/tmp/absent", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_download_of_a_directory(comm: SSHCommunicator, tmp_path: Path) -> None:
    with pytest.raises(CommunicatorError, match="it is a directory"):
        comm.download("/tmp", tmp_path / "x")


def test_guest_without_sftp(make_comm: MakeComm, server: SSHTestServer, tmp_path: Path) -> None:
    server.sftp_enabled = False
    comm = make_comm()
    comm.wait_ready(5)
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(CommunicatorError, match="offers no SFTP") as info:
        comm.upload(src, "/tmp/f")
    assert "openssh-sftp-server" in (info.value.hint or "")


def test_file_transfer_after_disconnect(comm: SSHCommunicator, server: SSHTestServer, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    comm.upload(src, "/tmp/f")  # opens the SFTP session
    server.drop_all()
    deadline = time.monotonic() + 5
    while comm.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(Disconnected):
        comm.upload(src, "/tmp/f")


def test_hold_keeps_the_command_waiting_until_the_block_ends(comm: SSHCommunicator) -> None:
    """The quiesce protocol (localbuilder.quiesce): the command says it is ready, waits on its stdin
    while the host acts, and ends after the one line the host sends when the block is done."""
    order: list[str] = []
    with comm.hold("echo frozen: /; cat; echo thawed", ready="frozen:", timeout=10) as held:
        assert held.line == "frozen: /" and held.result is None
        order.append("block")
    assert held.result is not None and held.result.exit_status == 0
    assert held.result.stdout_tail.splitlines()[-1] == "thawed"
    assert order == ["block"]
    # Released also when the block raises: the guest must never stay frozen.
    with pytest.raises(RuntimeError), comm.hold("echo frozen: /; cat", ready="frozen:", timeout=10):
        raise RuntimeError("cut failed")
    assert comm.run("echo still usable").stdout_tail == "still usable"


def test_hold_names_a_command_that_never_gets_ready(comm: SSHCommunicator) -> None:
    with pytest.raises(CommunicatorError, match="before it printed 'frozen:'"), \
            comm.hold("echo no fsfreeze here; exit 3", ready="frozen:", timeout=10):
        raise AssertionError("the block must not run")
    with pytest.raises(CommunicatorTimeout, match="did not print 'frozen:' within 0.5 s"), \
            comm.hold("echo starting; hang", ready="frozen:", timeout=0.5):
        raise AssertionError("the block must not run")
