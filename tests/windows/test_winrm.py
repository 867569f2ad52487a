"""WinRMCommunicator driven through real pywinrm against the WS-Management test server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from localbuilder.communicator.winrm import WinRMCommunicator
from localbuilder.communicator.winrs import powershell_command
from localbuilder.errors import CommunicatorError, CommunicatorTimeout, Disconnected, HostKeyMismatch
from tests.windows.guest_model import WindowsGuest
from tests.windows.helpers import PASSWORD, connect
from tests.windows.wsman_server import FAULT_TIMEOUT, ProcessIO

COMBOS = [
    pytest.param(False, "basic", id="http-basic"),
    pytest.param(True, "basic", id="https-basic-pinned"),
    pytest.param(False, "ntlm", id="http-ntlm-encrypted"),
    pytest.param(True, "ntlm", id="https-ntlm-cbt"),
]


class Scripted(WindowsGuest):
    """The Windows model plus a few test-only commands (slow output, chatty, stuck)."""

    def execute(self, io: ProcessIO, command: str) -> int:
        if command == "lines":
            for i in range(3):
                io.out(f"line {i}\n")
                io.sleep(0.3)
            io.err("warn\n")
            return 7
        if command == "silent":
            io.sleep(0.8)
            io.out("late\n")
            return 0
        if command == "hang":
            io.sleep(60)
            return 0
        return super().execute(io, command)


@pytest.mark.parametrize(("https", "auth"), COMBOS)
def test_run_exit_codes_and_output(wsman, https: bool, auth: str) -> None:
    srv, _ = wsman(https=https, auth=auth)
    comm = connect(srv)
    comm.wait_ready(10)
    seen: list[tuple[str, str]] = []
    result = comm.run("echo hello world", on_output=lambda s, line: seen.append((s, line)))
    assert result.exit_status == 0 and result.stdout_tail == "hello world"
    assert seen == [("stdout", "hello world")]
    assert comm.run("cmd /c exit 3").exit_status == 3
    ps = comm.run(powershell_command("Write-Output 'ünïcode'\nexit 4"))
    assert (ps.exit_status, ps.stdout_tail) == (4, "ünïcode")
    comm.close()
    assert srv.actions[0] == "Create" and srv.actions[-1] == "Delete"
    if auth == "ntlm" and not https:
        # every SOAP message was sealed (the server refuses plain ones over HTTP, as Windows does)
        assert srv.sealed == len(srv.actions) > 0
    else:
        assert srv.sealed == 0  # TLS protects HTTPS; Basic over HTTP cannot seal


def test_https_self_signed_needs_explicit_flag(wsman) -> None:
    srv, _ = wsman(https=True, auth="basic")
    with pytest.raises(CommunicatorError) as info:
        connect(srv, cert_fingerprint=None, insecure_self_signed=False).run("echo x")
    assert "not trusted" in str(info.value) and "fingerprint" in (info.value.hint or "")
    assert not isinstance(info.value, Disconnected)  # final: retrying cannot help
    comm = connect(srv, insecure_self_signed=True)
    assert comm.run("echo ok").stdout_tail == "ok"


def test_pinned_fingerprint_mismatch_is_refused_before_credentials(wsman) -> None:
    srv, _ = wsman(https=True, auth="basic")
    wrong = "AB" * 32
    with pytest.raises(HostKeyMismatch):
        connect(srv, cert_fingerprint=wrong).run("echo x")
    assert srv.requests == 0  # the TLS handshake failed: no request (no password) reached the server


def test_invalid_fingerprint_text() -> None:
    with pytest.raises(CommunicatorError, match="fingerprint"):
        WinRMCommunicator("127.0.0.1", 1, "u", "p", cert_fingerprint="not-hex")


@pytest.mark.parametrize(("https", "auth"), [(False, "basic"), (False, "ntlm"), (True, "ntlm")])
def test_wrong_password(wsman, https: bool, auth: str) -> None:
    srv, _ = wsman(https=https, auth=auth)
    with pytest.raises(CommunicatorError) as info:
        connect(srv, password="wrong").wait_ready(5)
    assert not isinstance(info.value, Disconnected | CommunicatorTimeout)  # final, not retried
    assert "rejected" in str(info.value) or "NTLM" in str(info.value)
    assert "password" in (info.value.hint or "")


def test_transport_mismatch_has_hint(wsman) -> None:
    srv, _ = wsman(auth="basic")  # the server offers Basic only
    with pytest.raises(CommunicatorError) as info:
        connect(srv, transport="ntlm").run("echo x")
    assert "ntlm" in (info.value.hint or "")


def test_password_never_in_repr(wsman) -> None:
    srv, _ = wsman()
    assert PASSWORD not in repr(connect(srv))


def test_output_is_streamed_while_the_command_runs(wsman) -> None:
    srv, _ = wsman(model=Scripted())
    comm = connect(srv)
    start = time.monotonic()
    stamps: list[tuple[str, float]] = []
    result = comm.run("lines", on_output=lambda s, line: stamps.append((line, time.monotonic() - start)))
    assert [line for line, _ in stamps] == ["line 0", "line 1", "line 2", "warn"]
    assert stamps[0][1] < result.duration - 0.3  # the first line arrived long before the end
    assert (result.exit_status, result.stderr_tail) == (7, "warn")


def test_silent_command_survives_operation_timeouts(wsman) -> None:
    srv, _ = wsman(model=Scripted(), operation_timeout=0.1)
    comm = connect(srv)
    result = comm.run("silent")
    assert (result.exit_status, result.stdout_tail) == (0, "late")
    assert srv.actions.count("Receive") >= 4  # several Receives answered with fault 2150858793
    assert FAULT_TIMEOUT == 2150858793


def test_run_timeout_terminates_the_command(wsman) -> None:
    srv, _ = wsman(model=Scripted(), operation_timeout=0.1)
    comm = connect(srv)
    with pytest.raises(CommunicatorTimeout, match="within 0.5 s"):
        comm.run("hang", timeout=0.5)
    assert "Signal" in srv.actions
    assert comm.run("echo still usable").ok


def test_upload_5mb_with_checksum(wsman, tmp_path: Path) -> None:
    srv, model = wsman(https=True, auth="ntlm")
    comm = connect(srv)
    data = os.urandom(5 * 1024 * 1024 + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    start = time.monotonic()
    comm.upload(src, "C:\\Windows\\Temp\\big.bin")
    elapsed = time.monotonic() - start
    assert model.read("C:\\Windows\\Temp\\big.bin") == data
    # one Command for the whole file, not one per chunk; its stdin a pipe, not a console
    assert len([c for c in srv.commands if "EncodedCommand" in c]) == 1
    assert srv.console_stdin == ["FALSE"]
    assert 80_000 < srv.largest_request < 153_600  # big Send messages, within MaxEnvelopeSize
    print(f"upload 5 MiB over HTTPS+NTLM: {elapsed:.2f} s")


def test_upload_empty_file_and_exact_chunk_multiple(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    comm = connect(srv)
    for size in (0, 48 * 1024 * 2):
        src = tmp_path / f"f{size}"
        src.write_bytes(b"x" * size)
        comm.upload(src, f"C:\\Windows\\Temp\\f{size}")
        assert model.read(f"C:\\Windows\\Temp\\f{size}") == b"x" * size


def test_upload_missing_parent(wsman, tmp_path: Path) -> None:
    srv, _ = wsman()
    src = tmp_path / "a.txt"
    src.write_text("a")
    with pytest.raises(CommunicatorError, match="parent directory does not exist") as info:
        connect(srv).upload(src, "C:\\nope\\a.txt")
    assert "parent directory must exist" in (info.value.hint or "")


def test_upload_checksum_mismatch_detected(wsman, tmp_path: Path) -> None:
    class Corrupting(WindowsGuest):
        def write(self, path: str, data: bytes) -> None:
            super().write(path, data[:-1] + b"!" if data else data)  # a flipped byte on "disk"

    srv, _ = wsman(model=Corrupting())
    src = tmp_path / "a.txt"
    src.write_text("abc")
    with pytest.raises(CommunicatorError, match="checksum mismatch"):
        connect(srv).upload(src, "C:\\Windows\\Temp\\a.txt")


def test_download_roundtrip(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    payload = os.urandom(200_000)
    model.files["c:\\windows\\temp\\x.bin"] = payload
    dst = tmp_path / "x.bin"
    connect(srv).download("C:\\Windows\\Temp\\x.bin", dst)
    assert dst.read_bytes() == payload


def test_reconnect_after_restart(wsman) -> None:
    srv, model = wsman(model=Scripted(), https=True, auth="ntlm")
    comm = connect(srv)
    assert comm.run("echo before").ok
    srv.reboot(after=0.2, down_for=0.5)
    with pytest.raises(Disconnected):
        comm.run("hang")  # the connection drops while the command runs
    comm.reconnect(10)
    assert comm.run("echo after").stdout_tail == "after"
    assert srv.resets == 1 and srv.boot == 2
    assert srv.actions.count("Create") == 2  # a new shell after the restart


def test_stale_shell_after_restart_is_a_disconnect(wsman) -> None:
    srv, _ = wsman()
    comm = connect(srv)
    assert comm.run("echo before").ok
    srv.reboot(after=0.0, down_for=0.1)
    time.sleep(0.4)  # the guest is back, but our shell died with the old boot
    with pytest.raises(Disconnected, match="shell is gone"):
        comm.run("echo x")
    assert comm.run("echo again").ok  # the next command opens a new shell by itself


def test_wait_ready_times_out_with_hint() -> None:
    comm = WinRMCommunicator("127.0.0.1", 9, "u", "p", https=False, transport="basic", poll_interval=0.05)
    start = time.monotonic()
    with pytest.raises(CommunicatorTimeout) as info:
        comm.wait_ready(0.5)
    assert time.monotonic() - start < 3
    assert "5986" in (info.value.hint or "")


def test_wait_ready_waits_for_a_booting_guest(wsman) -> None:
    srv, _ = wsman()
    srv.down.set()  # "booting": connections are dropped
    comm = connect(srv)

    import threading

    threading.Timer(0.5, srv.down.clear).start()
    comm.wait_ready(10)
    assert comm.run("echo up").ok


def test_tls_handshake_cut_short_is_retried() -> None:
    """slirp accepts on the forwarded port before the guest listens: TLS sees EOF, wait_ready retries."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted = []

    def accept_and_close() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    try:
        comm = WinRMCommunicator("127.0.0.1", port, "u", "p", cert_fingerprint="AB" * 32, poll_interval=0.05)
        with pytest.raises(CommunicatorTimeout):
            comm.wait_ready(0.6)
        assert len(accepted) >= 2  # it kept trying instead of failing on the first TLS error
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_wait_ready_retries_a_starting_service(wsman) -> None:
    srv, _ = wsman()
    srv.unavailable = 3  # HTTP 503 without a SOAP body, as while the WinRM service starts
    comm = connect(srv)
    comm.wait_ready(10)
    assert srv.unavailable == 0


def test_clixml_stderr_is_decoded(wsman) -> None:
    srv, _ = wsman()
    seen: list[tuple[str, str]] = []
    result = connect(srv).run(powershell_command("Write-Error 'disk full'\nexit 1"),
                              on_output=lambda s, line: seen.append((s, line)))
    assert seen == [("stderr", "Write-Error: disk full"), ("stderr", "At line:1 char:1")]
    assert result.stderr_tail == "Write-Error: disk full\nAt line:1 char:1"
