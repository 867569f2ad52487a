"""A small in-process WS-Management server: the Windows Remote Shell resource of MS-WSMV.

Tests only. It speaks the protocol real pywinrm speaks to Windows (SOAP 1.2 envelopes, WS-Addressing
headers, the ``windows/shell/cmd`` resource with Create / Command / Send / Receive / Signal / Delete)
over HTTP or HTTPS, with Basic or NTLM authentication (pyspnego acceptor; NTLM over HTTP requires
MS-WSMV 2.2.9.1 message encryption, as Windows does by default). What pywinrm needs back is
recorded in FACTS §8.

Commands are executed by a pluggable *guest model* (``GuestModel.execute``), which sees the command
line and the stdin the client sends, writes stdout/stderr and returns an exit code. The server adds
the protocol behaviour a test needs: streamed Receive responses, the operation-timeout fault
(2150858793) for a command that stays silent, "shell not found" (2150858843) after a restart, and
``reboot()``, which drops every connection for a while and starts a fresh "boot".

It is a test of our protocol use, not a Windows emulator.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ACT_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACT_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACT_COMMAND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command"
ACT_SEND = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send"
ACT_RECEIVE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
ACT_SIGNAL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal"
STATE_RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
STATE_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
FAULT_TIMEOUT = 2150858793
FAULT_SHELL_NOT_FOUND = 2150858843
MIME_BOUNDARY = b"--Encrypted Boundary"
ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
MAX_STREAM_CHUNK = 64 * 1024  # bytes of one stream per Receive response (envelope size limit)
# The MaxEnvelopeSize pywinrm announces (w:MaxEnvelopeSize 153600): a larger request is refused, as
# Windows refuses one above its configured limit.
MAX_ENVELOPE = 153600

ENCODED_RE = re.compile(r"-EncodedCommand\s+(\S+)", re.IGNORECASE)


def decode_powershell(command: str) -> str | None:
    """The script of a ``powershell … -EncodedCommand <base64 UTF-16LE>`` command line, or None."""
    match = ENCODED_RE.search(command)
    if match is None:
        return None
    return base64.b64decode(match.group(1)).decode("utf-16-le")


# -- processes and the guest model ----------------------------------------------------------------


class Terminated(Exception):
    """Raised inside a model's ``execute`` when the client signalled terminate or the guest rebooted."""


class ProcessIO:
    """One running command, as the guest model sees it: stdin in, stdout/stderr out, an exit code."""

    def __init__(self, command: str) -> None:
        self.command = command
        self._cond = threading.Condition()
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._stdin = bytearray()
        self._stdin_closed = False
        self.done = False
        self.exit_code = 0
        self.terminated = False

    # model side
    def out(self, text: str) -> None:
        self._write(self._stdout, text)

    def err(self, text: str) -> None:
        self._write(self._stderr, text)

    def _write(self, buf: bytearray, text: str) -> None:
        with self._cond:
            buf.extend(text.replace("\n", "\r\n").encode("utf-8"))
            self._cond.notify_all()

    def read_stdin_line(self) -> str | None:
        """The next line of stdin (without CRLF), or None at end of input."""
        with self._cond:
            while True:
                if self.terminated:
                    raise Terminated()
                idx = self._stdin.find(b"\n")
                if idx >= 0:
                    line = bytes(self._stdin[: idx + 1])
                    del self._stdin[: idx + 1]
                    return line.decode("utf-8").rstrip("\r\n")
                if self._stdin_closed:
                    if self._stdin:
                        rest = bytes(self._stdin)
                        self._stdin.clear()
                        return rest.decode("utf-8")
                    return None
                self._cond.wait(0.5)

    def sleep(self, seconds: float) -> None:
        """Sleep, but end at once (raising Terminated) when the command is terminated."""
        end = time.monotonic() + seconds
        with self._cond:
            while not self.terminated:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
        raise Terminated()

    # server side
    def feed_stdin(self, data: bytes, end: bool) -> None:
        with self._cond:
            self._stdin.extend(data)
            self._stdin_closed = self._stdin_closed or end
            self._cond.notify_all()

    def terminate(self) -> None:
        with self._cond:
            self.terminated = True
            self._cond.notify_all()

    def finish(self, code: int) -> None:
        with self._cond:
            self.exit_code = code
            self.done = True
            self._cond.notify_all()

    def take_output(self, wait: float, abort: threading.Event) -> tuple[bytes, bytes, bool] | None:
        """Output produced so far (waiting up to ``wait`` s for some); None if there was none."""
        end = time.monotonic() + wait
        with self._cond:
            while not (self._stdout or self._stderr or self.done):
                left = end - time.monotonic()
                if left <= 0 or abort.is_set():
                    return None
                self._cond.wait(min(left, 0.05))
            out = bytes(self._stdout[:MAX_STREAM_CHUNK])
            del self._stdout[: len(out)]
            err = bytes(self._stderr[:MAX_STREAM_CHUNK])
            del self._stderr[: len(err)]
            finished = self.done and not self._stdout and not self._stderr
            return out, err, finished


class GuestModel:
    """Decides what a command does. Subclasses override ``execute`` (runs in its own thread)."""

    server: WSManServer

    def execute(self, io: ProcessIO, command: str) -> int:
        io.err(f"'{command.split()[0] if command.split() else command}' is not recognized\n")
        return 1

    def on_boot(self) -> None:
        """Called when a simulated reboot completes (the guest is reachable again)."""


@dataclasses.dataclass
class _Shell:
    id: str
    boot: int
    processes: dict[str, ProcessIO] = dataclasses.field(default_factory=dict)


# -- the server -----------------------------------------------------------------------------------


class _Fault(Exception):
    """A WS-Management fault (HTTP 500). The client acts on two codes only, which are Windows' own:
    FAULT_TIMEOUT (pywinrm retries it) and FAULT_SHELL_NOT_FOUND; the other codes are placeholders."""

    def __init__(self, code: int, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason


class WSManServer:
    """Start with ``with WSManServer(model, https=True, auth="ntlm") as srv:``; ``srv.port``."""

    def __init__(
        self,
        model: GuestModel,
        *,
        https: bool = False,
        auth: str = "basic",
        users: dict[str, str] | None = None,
        operation_timeout: float = 0.3,
        workdir: Path | None = None,
        port: int = 0,
        cert_files: tuple[Path, Path] | None = None,
    ) -> None:
        if auth not in ("basic", "ntlm"):
            raise ValueError(auth)
        self.model = model
        model.server = self
        self.https = https
        self.auth = auth
        self.users = users if users is not None else {"lbuild": "Secret-Pa55word!"}
        # Real WinRM answers a silent Receive after OperationTimeout (20 s from pywinrm); a test must
        # not wait that long, so the server caps it.
        self.operation_timeout = operation_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="wsman-") if workdir is None else None
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.shells: dict[str, _Shell] = {}
        self.lock = threading.RLock()
        self.boot = 1
        self.resets = 0
        self.down = threading.Event()
        self.commands: list[str] = []  # every command line received, in order (across boots)
        self.console_stdin: list[str] = []  # WINRS_CONSOLEMODE_STDIN of each command, same order
        self.actions: list[str] = []  # every WS-Man action received (short names)
        self.errors: list[str] = []  # exceptions raised by the model: a test should assert none
        self.requests = 0
        self.largest_request = 0  # bytes of the largest SOAP request received
        self.sealed = 0  # SOAP messages that arrived NTLM-sealed (MS-WSMV 2.2.9.1)
        self.unavailable = 0  # answer this many requests with a bare HTTP 503 (service starting)
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.cert_pem: Path | None = None
        self.cert_der: bytes = b""
        self._old_user_file: str | None = None
        self._port = port
        self._cert_files = cert_files

    # lifecycle
    def __enter__(self) -> WSManServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the server certificate, ``AA:BB:…`` as openssl prints it."""
        digest = hashlib.sha256(self.cert_der).hexdigest().upper()
        return ":".join(digest[i : i + 2] for i in range(0, 64, 2))

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"wsman": self})
        httpd = _HTTPServer(("127.0.0.1", self._port), handler)
        if self.https:
            cert, key = self._cert_files or make_self_signed(self.workdir, "localbuilder-test")
            self.cert_pem = cert
            self.cert_der = ssl.PEM_cert_to_DER_cert(cert.read_text())
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        if self.auth == "ntlm":
            user_file = self.workdir / "ntlm-users"
            user_file.write_text("".join(f":{u}:{p}\n" for u, p in self.users.items()))
            self._old_user_file = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = str(user_file)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.down.set()
        with self.lock:
            for shell in self.shells.values():
                for proc in shell.processes.values():
                    proc.terminate()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self.auth == "ntlm":
            if self._old_user_file is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = self._old_user_file
        if self._tmp is not None:
            self._tmp.cleanup()

    # guest events
    def reboot(self, *, after: float = 0.05, down_for: float = 0.5) -> None:
        """Simulate a restart: in ``after`` s every connection drops and stays refused for ``down_for`` s,
        then a new boot starts (old shells are gone, ``resets`` counts up, ``model.on_boot()`` runs)."""

        def go() -> None:
            time.sleep(after)
            with self.lock:
                self.down.set()
                for shell in self.shells.values():
                    for proc in shell.processes.values():
                        proc.terminate()
                self.shells.clear()
            time.sleep(down_for)
            with self.lock:
                self.boot += 1
                self.resets += 1
                self.model.on_boot()
                self.down.clear()

        threading.Thread(target=go, daemon=True).start()

    def power_off(self, *, after: float = 0.05) -> None:
        def go() -> None:
            time.sleep(after)
            with self.lock:
                self.down.set()
                self.shells.clear()

        threading.Thread(target=go, daemon=True).start()

    # WS-Man operations
    def handle_soap(self, body: bytes) -> tuple[int, bytes]:
        self.largest_request = max(self.largest_request, len(body))
        root = ET.fromstring(body)
        header = root.find("s:Header", NS)
        soap_body = root.find("s:Body", NS)
        if header is None or soap_body is None:
            return 400, b""
        action = _text(header, "a:Action")
        message_id = _text(header, "a:MessageID")
        resource = _text(header, "w:ResourceURI")
        timeout = _duration(_text(header, "w:OperationTimeout"))
        self.actions.append(action.rsplit("/", 1)[-1])
        try:
            if len(body) > MAX_ENVELOPE:
                raise _Fault(2150858817, "w:EncodingLimit", "the request exceeds the maximum envelope size")
            if resource != SHELL_URI:
                raise _Fault(2150858811, "w:DestinationUnreachable", f"unknown resource URI {resource}")
            shell_id = ""
            selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", NS)
            if selector is not None and selector.text:
                shell_id = selector.text
            if action == ACT_CREATE:
                return 200, self._create(message_id)
            shell = self._shell(shell_id)
            if action == ACT_COMMAND:
                return 200, self._command(message_id, shell, header, soap_body)
            if action == ACT_SEND:
                return 200, self._send(message_id, shell, soap_body)
            if action == ACT_RECEIVE:
                return 200, self._receive(message_id, shell, soap_body, timeout)
            if action == ACT_SIGNAL:
                return 200, self._signal(message_id, shell, soap_body)
            if action == ACT_DELETE:
                with self.lock:
                    self.shells.pop(shell.id, None)
                return 200, _envelope(ACT_DELETE + "Response", message_id, "")
            raise _Fault(2150858817, "w:ActionNotSupported", f"unsupported action {action}")
        except _Fault as fault:
            return 500, _fault(message_id, fault)

    def _shell(self, shell_id: str) -> _Shell:
        with self.lock:
            shell = self.shells.get(shell_id)
        if shell is None:
            raise _Fault(
                FAULT_SHELL_NOT_FOUND,
                "w:InvalidSelectors",
                f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the "
                "shell was not found on the server.",
            )
        return shell

    def _create(self, message_id: str) -> bytes:
        shell = _Shell(id=str(uuid.uuid4()).upper(), boot=self.boot)
        with self.lock:
            self.shells[shell.id] = shell
        body = (
            "<x:ResourceCreated><a:Address>http://localhost/wsman</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            f"</a:ReferenceParameters></x:ResourceCreated><rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId>"
            "<rsp:ResourceUri>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</rsp:ResourceUri>"
            "</rsp:Shell>"
        )
        return _envelope(ACT_CREATE + "Response", message_id, body)

    def _command(self, message_id: str, shell: _Shell, header: ET.Element, body: ET.Element) -> bytes:
        line = body.find("rsp:CommandLine", NS)
        if line is None:
            raise _Fault(2150858815, "w:InvalidParameter", "CommandLine missing")
        command = _text(line, "rsp:Command")
        args = [a.text or "" for a in line.findall("rsp:Arguments", NS)]
        if args:
            command = " ".join([command, *args])
        command_id = str(uuid.uuid4()).upper()
        option = header.find("w:OptionSet/w:Option[@Name='WINRS_CONSOLEMODE_STDIN']", NS)
        self.console_stdin.append((option.text or "").strip() if option is not None else "")
        proc = ProcessIO(command)
        shell.processes[command_id] = proc
        self.commands.append(command)
        threading.Thread(target=self._execute, args=(proc,), daemon=True).start()
        return _envelope(
            ACT_COMMAND + "Response",
            message_id,
            f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>",
        )

    def _execute(self, proc: ProcessIO) -> None:
        try:
            code = self.model.execute(proc, proc.command)
        except Terminated:
            code = 0x40010004  # STATUS_CONTROL_C_EXIT-like: what a killed process reports
        except Exception as exc:  # a bug in the model: make it visible to the test
            self.errors.append(f"{type(exc).__name__}: {exc} (command {proc.command[:80]!r})")
            proc.err(f"model error: {exc}\n")
            code = 1
        proc.finish(code)

    def _process(self, shell: _Shell, command_id: str) -> ProcessIO:
        proc = shell.processes.get(command_id)
        if proc is None:
            raise _Fault(2150858815, "w:InvalidParameter", f"unknown CommandId {command_id}")
        return proc

    def _send(self, message_id: str, shell: _Shell, body: ET.Element) -> bytes:
        for stream in body.findall("rsp:Send/rsp:Stream", NS):
            proc = self._process(shell, stream.get("CommandId", ""))
            data = base64.b64decode(stream.text or "")
            proc.feed_stdin(data, stream.get("End", "false").lower() == "true")
        return _envelope(ACT_SEND + "Response", message_id, "<rsp:SendResponse/>")

    def _receive(self, message_id: str, shell: _Shell, body: ET.Element, timeout: float) -> bytes:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = desired.get("CommandId", "") if desired is not None else ""
        proc = self._process(shell, command_id)
        got = proc.take_output(min(timeout, self.operation_timeout), self.down)
        if self.down.is_set():
            raise ConnectionAbortedError("guest went down during Receive")
        if got is None:
            raise _Fault(
                FAULT_TIMEOUT,
                "w:TimedOut",
                "The WS-Management service cannot complete the operation within the time specified in "
                "OperationTimeout.",
            )
        out, err, finished = got
        parts = []
        for name, data in (("stdout", out), ("stderr", err)):
            if data:
                parts.append(
                    f'<rsp:Stream Name="{name}" CommandId="{command_id}">{base64.b64encode(data).decode()}'
                    "</rsp:Stream>"
                )
            if finished:
                parts.append(f'<rsp:Stream Name="{name}" CommandId="{command_id}" End="true"></rsp:Stream>')
        if finished:
            state = (
                f'<rsp:CommandState CommandId="{command_id}" State="{STATE_DONE}">'
                f"<rsp:ExitCode>{proc.exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            state = f'<rsp:CommandState CommandId="{command_id}" State="{STATE_RUNNING}"/>'
        return _envelope(
            ACT_RECEIVE + "Response",
            message_id,
            f"<rsp:ReceiveResponse>{''.join(parts)}{state}</rsp:ReceiveResponse>",
        )

    def _signal(self, message_id: str, shell: _Shell, body: ET.Element) -> bytes:
        signal = body.find("rsp:Signal", NS)
        command_id = signal.get("CommandId", "") if signal is not None else ""
        proc = self._process(shell, command_id)
        proc.terminate()
        shell.processes.pop(command_id, None)
        return _envelope(ACT_SIGNAL + "Response", message_id, "<rsp:SignalResponse/>")


def _text(parent: ET.Element, path: str) -> str:
    node = parent.find(path, NS)
    return (node.text or "").strip() if node is not None else ""


def _duration(value: str) -> float:
    match = re.fullmatch(r"PT([\d.]+)S", value)
    return float(match.group(1)) if match else 20.0


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    ns = " ".join(f'xmlns:{k}="{v}"' for k, v in NS.items())
    return (
        f'<s:Envelope xml:lang="en-US" {ns}><s:Header><a:Action>{action}</a:Action>'
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _fault(relates_to: str, fault: _Fault) -> bytes:
    body = (
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode>"
        f"<s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{fault.reason}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault Code="{fault.code}" Machine="localhost">'
        f"<f:Message>{fault.reason}</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


# -- HTTP, authentication and message encryption --------------------------------------------------


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections are the point of several tests


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: NTLM authenticates a connection, not a request
    wsman: WSManServer

    def setup(self) -> None:
        super().setup()
        # FACTS §8: without TCP_NODELAY every exchange waits ~44 ms for delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ntlm: Any = None
        self.authenticated = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 500: "Internal Server Error",
                  503: "Service Unavailable"}[status]
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Length: {len(body)}",
            "Server: Microsoft-HTTPAPI/2.0",
        ]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        # One write for headers and body (FACTS §8).
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.wsman
        srv.requests += 1
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        if srv.down.is_set():
            self._drop()
            return
        if srv.unavailable > 0:
            srv.unavailable -= 1
            self._reply(503)
            return
        if not self._authenticate():
            return
        encrypted = "multipart/encrypted" in self.headers.get("Content-Type", "")
        if srv.auth == "ntlm" and not srv.https and body and not encrypted:
            # Windows' default AllowUnencrypted=false: plain SOAP over HTTP is refused.
            self._reply(400)
            return
        if not body:
            self._reply(200)  # pywinrm's empty POST that sets up the encryption context
            return
        if encrypted:
            try:
                body = self._unwrap(body)
            except Exception:
                self._reply(400)
                return
            srv.sealed += 1
        try:
            status, answer = srv.handle_soap(body)
        except ConnectionAbortedError:
            self._drop()
            return
        if encrypted:
            wrapped = self._wrap(answer)
            ctype = f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
            self._reply(status, wrapped, {"Content-Type": ctype})
        else:
            self._reply(status, answer, {"Content-Type": "application/soap+xml;charset=UTF-8"})

    def _authenticate(self) -> bool:
        srv = self.wsman
        header = self.headers.get("Authorization", "")
        if srv.auth == "basic":
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
                if srv.users.get(user) == password:
                    return True
            self._reply(401, headers={"WWW-Authenticate": 'Basic realm="WSMAN"'})
            return False
        if self.authenticated:
            return True
        if not header.startswith("Negotiate "):
            self._reply(401, headers={"WWW-Authenticate": "Negotiate"})
            return False
        import spnego
        import spnego.channel_bindings

        if self.ntlm is None:
            cbt = None
            if srv.https:
                # Channel binding token, RFC 5929 tls-server-end-point: the hash of our certificate.
                cbt = spnego.channel_bindings.GssChannelBindings(
                    application_data=b"tls-server-end-point:" + hashlib.sha256(srv.cert_der).digest()
                )
            self.ntlm = spnego.server(protocol="ntlm", channel_bindings=cbt)
        try:
            token = self.ntlm.step(base64.b64decode(header[len("Negotiate ") :]))
        except Exception:
            self.ntlm = None
            self._reply(401, headers={"WWW-Authenticate": "Negotiate"})
            return False
        if not self.ntlm.complete:
            challenge = "Negotiate " + base64.b64encode(token or b"").decode()
            self._reply(401, headers={"WWW-Authenticate": challenge})
            return False
        self.authenticated = True
        return True

    def _unwrap(self, body: bytes) -> bytes:
        parts = [p for p in body.split(MIME_BOUNDARY + b"\r\n") if p]
        header, payload = parts[0], parts[1]
        length = int(header.split(b"Length=")[1].strip())
        payload = payload.removesuffix(MIME_BOUNDARY + b"--\r\n")
        payload = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
        sig_len = struct.unpack("<i", payload[:4])[0]
        plain: bytes = self.ntlm.unwrap_winrm(payload[4 : 4 + sig_len], payload[4 + sig_len :])
        if len(plain) != length:
            raise ValueError("length mismatch")
        return plain

    def _wrap(self, plain: bytes) -> bytes:
        result = self.ntlm.wrap_winrm(plain)
        stream = struct.pack("<i", len(result.header)) + result.header + result.data
        return (
            MIME_BOUNDARY + b"\r\n"
            b"\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(plain)).encode()
            + b"\r\n" + MIME_BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n" + stream
            + MIME_BOUNDARY + b"--\r\n"
        )


def make_self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A throw-away RSA certificate + key (PEM) for the HTTPS listener."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{common_name}.crt"
    key_path = directory / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def iter_lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield stripped
