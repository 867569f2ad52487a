"""WinRM communicator for Windows guests, on pywinrm's low-level ``Protocol``.

Why the low-level API: ``Session.run_cmd`` collects the whole output before returning; a build log
must show guest output as it comes, so ``run()`` drives ``get_command_output_raw`` itself and hands
every complete line to ``on_output`` (only bounded tails are kept).

Security defaults follow AIB (HTTPS on 5986, FACTS §6):

* HTTPS with the server certificate **pinned** by its SHA-256 fingerprint when one is given (the
  first-boot ISO carries a certificate we generated, so we know it). Pinning is done by urllib3's
  ``assert_fingerprint`` on a transport adapter mounted on pywinrm's requests session; it replaces
  CA validation, which a self-signed certificate cannot pass.
* a self-signed certificate without a fingerprint only with ``insecure_self_signed=True``;
* NTLM with message encryption (required over HTTP: MS-WSMV 2.2.9.1), Basic only when asked.

Uploads send the file through the stdin of ONE PowerShell command (``send_command_input``), base64
per line so console-mode stdin cannot mangle bytes, then compare SHA-256 (FACTS §8: the
chunk-per-command approach needs ~2,400 commands for 5 MB).

How commands and scripts are spelled for WinRS (``-EncodedCommand``, quoting, the upload and download
scripts, CLIXML on stderr) is ``winrs``; this module is the communicator: connection, certificate
pinning, errors, running commands and moving files.
"""

from __future__ import annotations

import base64
import codecs
import collections
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import requests
import requests.adapters
import winrm.exceptions
import winrm.protocol
import winrm.transport

from localbuilder.communicator import CommandResult, OutputCallback
from localbuilder.communicator.output import MAX_LINE_CHARS, printable
from localbuilder.communicator.winrs import decode_clixml, download_script, powershell_command, upload_script
from localbuilder.errors import (
    CommunicatorError,
    CommunicatorTimeout,
    Disconnected,
    HostKeyMismatch,
)

log = logging.getLogger("localbuilder.communicator.winrm")

Transport = Literal["ntlm", "basic"]

TAIL_LINES = 40
# stderr carries one CLIXML document per line (decode_clixml): it may be longer than a stdout line
# before it is cut, but it is cut too — a guest that never ends a line must not grow our memory.
MAX_STDERR_LINE_CHARS = 1024 * 1024
# WSManFault codes (MS-WSMV / winerror.h), as Windows returns them in the fault detail.
FAULT_OPERATION_TIMEOUT = 2150858793  # ERROR_WSMAN_OPERATION_TIMEDOUT: pywinrm retries it itself
FAULT_SHELL_NOT_FOUND = 2150858843  # the shell is gone: the guest restarted (or WinRM did)
# Raw bytes per stdin Send: base64 of 48 KiB is 64 KiB of text, which pywinrm base64-encodes once
# more into the envelope (~87 KiB): safely below the 150 KiB MaxEnvelopeSize pywinrm announces.
UPLOAD_CHUNK = 48 * 1024
# The shell's output code page: UTF-8, so non-ASCII output of PowerShell survives.
CODEPAGE_UTF8 = 65001

AUTH_HINT = (
    "Check the build account's password, and the transport: the guest's WinRM must allow it "
    "(ntlm works out of the box; basic needs winrm/config/service/auth Basic=true)."
)


def normalize_fingerprint(value: str) -> str:
    """``AA:BB:…`` / ``aabb…`` → lower-case hex without separators; must be a SHA-256 (64 hex digits)."""
    hexdigits = value.replace(":", "").replace(" ", "").strip().lower()
    if len(hexdigits) != 64 or any(c not in "0123456789abcdef" for c in hexdigits):
        raise CommunicatorError(
            f"invalid WinRM certificate fingerprint {value!r}",
            hint="Give the SHA-256 fingerprint of the guest's WinRM certificate: 64 hex digits "
            "(colons allowed), e.g. from `openssl x509 -noout -fingerprint -sha256 -in cert.pem`.",
        )
    return hexdigits


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPS adapter that accepts exactly one certificate, identified by its SHA-256 fingerprint.

    urllib3 checks ``assert_fingerprint`` against the DER certificate right after the handshake and
    fails the connection on a mismatch, before a byte of the request (or of an NTLM/Basic credential)
    is sent. Hostname checks do not apply: the guest is reached through a port forward on 127.0.0.1.
    """

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


class _Transport(winrm.transport.Transport):
    """pywinrm's transport, plus our pinning adapter on every session it builds.

    pywinrm drops and rebuilds its requests session (``close_session``); mounting the adapter here
    keeps every new session pinned.
    """

    pin: str | None = None

    def build_session(self) -> requests.Session:
        fresh = self.session is None
        session = super().build_session()
        if fresh and self.pin is not None:
            session.mount("https://", _PinnedAdapter(self.pin))
        return session


class WinRMCommunicator:
    """Run commands in a Windows guest over WinRM (WS-Management, Windows Remote Shell)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        transport: Transport = "ntlm",
        https: bool = True,
        cert_fingerprint: str | None = None,
        insecure_self_signed: bool = False,
        operation_timeout: int = 20,
        poll_interval: float = 2.0,
    ) -> None:
        if transport not in ("ntlm", "basic"):
            raise CommunicatorError(
                f"unsupported WinRM transport {transport!r}", hint="Use 'ntlm' (default) or 'basic'."
            )
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.transport: Transport = transport
        self.https = https
        self.fingerprint = normalize_fingerprint(cert_fingerprint) if cert_fingerprint else None
        self.insecure_self_signed = insecure_self_signed
        self.operation_timeout = operation_timeout
        self.poll_interval = poll_interval
        scheme = "https" if https else "http"
        self.endpoint = f"{scheme}://{host}:{port}/wsman"
        self._protocol: winrm.protocol.Protocol | None = None
        self._shell_id: str | None = None
        if not https and transport == "basic":
            log.warning(
                "WinRM Basic authentication over plain HTTP sends the password unencrypted (%s)",
                self.endpoint,
            )

    def __repr__(self) -> str:  # never show the password
        return f"WinRMCommunicator({self.endpoint!r}, user={self.username!r}, transport={self.transport!r})"

    def elevation_credentials(self) -> tuple[str, str]:
        """The build account and password, for a scheduled task that runs elevated as that account
        (PowerShell ``runElevated``; Packer's ``elevated_user``). Never log the result."""
        return self.username, self._password

    # -- connection -------------------------------------------------------------------------------

    def _new_protocol(self) -> winrm.protocol.Protocol:
        if self.https and self.fingerprint is None and not self.insecure_self_signed:
            # Validate against the system CAs: fine for a CA-signed guest certificate.
            validation: Literal["validate", "ignore"] = "validate"
        else:
            # Either pinned (the adapter checks the fingerprint) or explicitly insecure.
            validation = "ignore"
        proto = winrm.protocol.Protocol(
            self.endpoint,
            transport="plaintext",  # replaced below; pywinrm's own Transport is never used
            username=self.username,
            password=self._password,
            operation_timeout_sec=self.operation_timeout,
            read_timeout_sec=self.operation_timeout + 10,
        )
        # NTLM over HTTP must seal every message (Windows refuses unencrypted traffic by default);
        # over HTTPS TLS protects the channel and channel binding (CBT) ties NTLM to it.
        encryption: Literal["auto", "always", "never"] = (
            "always" if (self.transport == "ntlm" and not self.https) else "auto"
        )
        transport = _Transport(
            endpoint=self.endpoint,
            username=self.username,
            password=self._password,
            service="HTTP",
            # None: the CA bundle of requests/certifi, not one named by environment variables.
            ca_trust_path=None,  # type: ignore[arg-type]
            read_timeout_sec=self.operation_timeout + 10,
            server_cert_validation=validation,
            auth_method=self.transport,
            message_encryption=encryption,
            proxy=None,  # a proxy from the environment must never see the build credentials
        )
        transport.pin = self.fingerprint
        proto.transport = transport
        return proto

    def _shell(self) -> tuple[winrm.protocol.Protocol, str]:
        if self._protocol is None:
            self._protocol = self._new_protocol()
        if self._shell_id is None:
            proto = self._protocol
            self._shell_id = self._call("open a shell", lambda: proto.open_shell(codepage=CODEPAGE_UTF8))
        return self._protocol, self._shell_id

    def _drop(self) -> None:
        """Forget the shell and the HTTP session without talking to the guest (it may be gone)."""
        if self._protocol is not None:
            self._protocol.transport.close_session()
        self._protocol = None
        self._shell_id = None

    def _call(self, what: str, fn: Any) -> Any:
        """Run one pywinrm call and translate its exceptions into our error tree."""
        try:
            return fn()
        except Exception as exc:  # translated below; anything unknown is re-raised unchanged
            err = self._translate(what, exc)
            if err is None:
                raise
            if isinstance(err, Disconnected):
                self._drop()
            raise err from exc

    def _translate(self, what: str, exc: Exception) -> CommunicatorError | None:
        where = f"WinRM {self.endpoint}"
        if isinstance(exc, requests.exceptions.SSLError):
            text = str(exc)
            if "ingerprint" in text:
                return HostKeyMismatch(
                    f"{where}: the guest's certificate does not match the pinned SHA-256 fingerprint",
                    hint="The guest is not the one that was set up (or was reinstalled). Check the "
                    "fingerprint; never turn pinning off to make this go away.",
                )
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                return CommunicatorError(
                    f"{where}: the guest's certificate is not trusted ({what})",
                    hint="Pin the guest's certificate with its SHA-256 fingerprint, or accept a "
                    "self-signed certificate explicitly (insecure_self_signed / --winrm-insecure).",
                )
            # A handshake cut short (EOF, reset): QEMU's slirp accepts connections on the forwarded
            # port before anything listens in the guest (FACTS §3), so this means "not up yet".
            return Disconnected(f"{where}: TLS handshake interrupted while trying to {what}: {text}")
        if isinstance(exc, requests.exceptions.Timeout):
            return Disconnected(f"{where}: no answer while trying to {what} ({exc.__class__.__name__})")
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return Disconnected(f"{where}: connection lost while trying to {what}")
        if isinstance(exc, winrm.exceptions.InvalidCredentialsError | winrm.exceptions.AuthenticationError):
            return CommunicatorError(
                f"{where}: authentication as {self.username!r} ({self.transport}) was rejected",
                hint=AUTH_HINT,
            )
        if isinstance(exc, PermissionError):
            # requests_ntlm: the server offered no NTLM/Negotiate challenge.
            return CommunicatorError(f"{where}: {exc}", hint=AUTH_HINT)
        if exc.__class__.__module__.startswith("spnego"):
            return CommunicatorError(
                f"{where}: NTLM authentication failed while trying to {what}: {exc}", hint=AUTH_HINT
            )
        if isinstance(exc, winrm.exceptions.WSManFaultError):
            if exc.wsman_fault_code == FAULT_SHELL_NOT_FOUND:
                return Disconnected(f"{where}: the remote shell is gone (the guest restarted)")
            return CommunicatorError(
                f"{where}: WS-Management fault while trying to {what}: {exc.reason} "
                f"(code {exc.wsman_fault_code})",
            )
        if isinstance(exc, winrm.exceptions.WinRMTransportError):
            if exc.code >= 500:
                # No SOAP fault, just "unavailable": the WinRM service is starting or stopping (boot,
                # restart). Retried like a dropped connection.
                return Disconnected(f"{where}: HTTP {exc.code} while trying to {what} (service not ready)")
            return CommunicatorError(f"{where}: HTTP {exc.code} while trying to {what}")
        if isinstance(exc, winrm.exceptions.WinRMError):
            return CommunicatorError(f"{where}: {exc} (while trying to {what})")
        if isinstance(exc, AssertionError | StopIteration):
            # pywinrm asserts RelatesTo == MessageID and looks for expected elements with next().
            return CommunicatorError(f"{where}: malformed WS-Management response while trying to {what}")
        return None

    def wait_ready(
        self, timeout: float = 600.0, *, on_wait: Callable[[float, str], None] | None = None
    ) -> None:
        """Poll until WinRM accepts a command (AIB waits 10 minutes for WinRM, FACTS §6).

        Connection errors are retried; a rejected credential or a certificate mismatch is final.
        ``on_wait(elapsed, last_status)`` runs before every retry and may raise to give up early (the
        session does when the guest has stopped).
        """
        start = time.monotonic()
        end = start + timeout
        attempts = 0
        last: Exception | None = None
        while True:
            if on_wait is not None and attempts:
                on_wait(time.monotonic() - start, str(last or ""))
            attempts += 1
            try:
                result = self.run("echo localbuilder-ready", timeout=max(1.0, end - time.monotonic()))
                if result.ok:
                    log.debug("WinRM ready after %d attempt(s)", attempts)
                    return
                last = CommunicatorError(f"probe command exited {result.exit_status}")
            except (Disconnected, CommunicatorTimeout) as exc:
                last = exc
            if time.monotonic() + self.poll_interval >= end:
                raise CommunicatorTimeout(
                    f"WinRM on {self.endpoint} did not answer within {timeout:.0f} s "
                    f"({attempts} attempts; last: {last})",
                    hint="Check the guest's serial log/console: the first-boot script enables the WinRM "
                    "HTTPS listener and its firewall rule; the port forward must point at 5986.",
                )
            time.sleep(self.poll_interval)

    def reconnect(self, timeout: float) -> None:
        """Start over with a new HTTP session and shell (the old ShellId is invalid after a reboot)."""
        self._drop()
        self.wait_ready(timeout)

    def close(self) -> None:
        proto, shell = self._protocol, self._shell_id
        self._protocol = None
        self._shell_id = None
        if proto is None:
            return
        try:
            if shell is not None:
                proto.close_shell(shell, close_session=True)
        except Exception as exc:  # the guest may already be off; closing is best effort
            log.debug("closing the WinRM shell failed: %s", exc)
        finally:
            proto.transport.close_session()

    # -- commands ---------------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run a cmd.exe command line; stream output line by line; return the exit code and tails."""
        start = time.monotonic()
        log.debug("winrm: %s", _shorten(command))
        proto, shell = self._shell()
        # With input to send, stdin must be a pipe, not a console (WINRS_CONSOLEMODE_STDIN=FALSE): a
        # console would echo and line-edit it. Ansible's WinRM plugin does the same.
        console = stdin is None
        command_id: str = self._call(
            "start a command", lambda: proto.run_command(shell, command, console_mode_stdin=console)
        )
        if stdin is not None:
            data = stdin
            self._call("send input", lambda: proto.send_command_input(shell, command_id, data, end=True))
        streams = {name: _LineSplitter(name, on_output) for name in ("stdout", "stderr")}
        exit_status = -1
        try:
            while True:
                if timeout is not None and time.monotonic() - start > timeout:
                    self._terminate(proto, shell, command_id)
                    raise CommunicatorTimeout(
                        f"command did not finish within {timeout:g} s: {_shorten(command)}",
                        hint="Raise the step's timeout, or check why the command hangs in the guest.",
                    )
                try:
                    out, err, code, done = self._call(
                        "receive output", lambda: proto.get_command_output_raw(shell, command_id)
                    )
                except winrm.exceptions.WinRMOperationTimeoutError:
                    continue  # no output within the operation timeout (fault 2150858793): ask again
                streams["stdout"].feed(out)
                streams["stderr"].feed(err)
                if done:
                    exit_status = code
                    break
        finally:
            for splitter in streams.values():
                splitter.flush()
        # The command is done; Signal(terminate) releases its resources in the shell.
        self._call("clean up the command", lambda: proto.cleanup_command(shell, command_id))
        return CommandResult(
            exit_status=exit_status,
            stdout_tail=streams["stdout"].tail(),
            stderr_tail=streams["stderr"].tail(),
            duration=time.monotonic() - start,
        )

    def _terminate(self, proto: winrm.protocol.Protocol, shell: str, command_id: str) -> None:
        try:
            proto.cleanup_command(shell, command_id)
        except Exception as exc:  # the timeout is what we report; the guest may be unreachable
            log.debug("terminating the command failed: %s", exc)

    def run_powershell(
        self,
        script: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run a PowerShell script via ``-EncodedCommand`` (no quoting problems, no temp file)."""
        return self.run(powershell_command(script), timeout=timeout, on_output=on_output, stdin=stdin)

    # -- files ------------------------------------------------------------------------------------

    def upload(self, src: Path, dst: str, *, mode: int | None = None) -> None:
        """Copy a local file to ``dst`` in the guest through one command's stdin; verify SHA-256.

        ``mode`` has no meaning on Windows (ACLs are inherited from the parent directory).
        """
        try:
            size = src.stat().st_size
            digest = hashlib.sha256()
            with src.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise CommunicatorError(f"cannot read {src}: {exc.strerror}") from exc
        start = time.monotonic()
        proto, shell = self._shell()
        command_id: str = self._call(
            "start the upload",
            lambda: proto.run_command(
                shell, powershell_command(upload_script(dst), progress=False), console_mode_stdin=False
            ),
        )
        with src.open("rb") as fh:
            while True:
                chunk = fh.read(UPLOAD_CHUNK)
                line = base64.b64encode(chunk) + b"\r\n" if chunk else b""
                last = len(chunk) < UPLOAD_CHUNK
                self._call(
                    "send file data",
                    lambda line=line, last=last: proto.send_command_input(shell, command_id, line, end=last),
                )
                if last:
                    break
        lines: list[str] = []
        splitter = _LineSplitter("stdout", lambda _s, text: lines.append(text))
        errors = _LineSplitter("stderr", None)
        while True:
            try:
                out, err, code, done = self._call(
                    "finish the upload", lambda: proto.get_command_output_raw(shell, command_id)
                )
            except winrm.exceptions.WinRMOperationTimeoutError:
                continue
            splitter.feed(out)
            errors.feed(err)
            if done:
                break
        splitter.flush()
        errors.flush()
        self._call("clean up the upload", lambda: proto.cleanup_command(shell, command_id))
        if code != 0:
            raise CommunicatorError(
                f"upload of {src} to {dst} failed in the guest (exit {code}):\n{errors.tail()}",
                hint="The parent directory must exist in the guest and be writable by the build account.",
            )
        remote = next((ln.split("=", 1)[1].strip().lower() for ln in lines if ln.startswith("sha256=")), "")
        if remote != digest.hexdigest():
            raise CommunicatorError(
                f"upload of {src} to {dst}: checksum mismatch (local {digest.hexdigest()}, "
                f"guest {remote or 'none'})",
                hint="The transfer was corrupted; retry the build.",
            )
        elapsed = time.monotonic() - start
        log.debug("uploaded %s → %s: %d bytes in %.2f s", src, dst, size, elapsed)

    def download(self, src: str, dst: Path) -> None:
        """Fetch a guest file: PowerShell writes it base64-encoded to stdout; SHA-256 checked."""
        chunks: list[str] = []
        def collect(stream: str, text: str) -> None:
            if stream == "stdout":
                chunks.append(text)

        result = self.run_powershell(download_script(src), on_output=collect)
        if not result.ok:
            raise CommunicatorError(
                f"download of {src} failed in the guest (exit {result.exit_status}):\n{result.stderr_tail}"
            )
        if not chunks or not chunks[-1].startswith("sha256="):
            raise CommunicatorError(f"download of {src}: the guest sent no checksum")
        expected = chunks.pop().split("=", 1)[1].strip().lower()
        data = base64.b64decode("".join(chunks))
        if hashlib.sha256(data).hexdigest() != expected:
            raise CommunicatorError(f"download of {src}: checksum mismatch", hint="Retry the build.")
        dst.write_bytes(data)


class _LineSplitter:
    """Incremental UTF-8 decoding, split into lines for ``on_output``; keeps a bounded tail."""

    def __init__(self, stream: str, on_output: OutputCallback | None) -> None:
        self.stream = stream
        self.on_output = on_output
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        text = self.partial + self.decoder.decode(data)
        *complete, self.partial = text.split("\n")
        for line in complete:
            self._emit(line.rstrip("\r"))
        limit = MAX_LINE_CHARS if self.stream == "stdout" else MAX_STDERR_LINE_CHARS
        while len(self.partial) > limit:
            self._emit(self.partial[:limit])
            self.partial = self.partial[limit:]

    def flush(self) -> None:
        text = self.partial + self.decoder.decode(b"", final=True)
        self.partial = ""
        if text:
            self._emit(text.rstrip("\r"))

    def _emit(self, line: str) -> None:
        decoded = decode_clixml(line) if self.stream == "stderr" else None
        for raw in decoded if decoded is not None else [line]:
            text = printable(raw)  # no terminal controls from the guest (communicator.output)
            self.lines.append(text)
            if self.on_output is not None:
                self.on_output(self.stream, text)

    def tail(self) -> str:
        return "\n".join(self.lines)


def _shorten(command: str, limit: int = 120) -> str:
    return command if len(command) <= limit else command[:limit] + " …"
