"""The paramiko layer under ``ssh.SSHCommunicator``: opening a verified transport to a guest that may not
be up yet, and bounding the paramiko calls that have no timeout of their own.

* ``wait_banner``: QEMU's user-mode network (slirp) accepts the TCP connection before the guest's sshd
  listens, and a handshake against that socket only produces tracebacks from paramiko's transport thread
  (FACTS §3), so paramiko starts only once the peer has sent ``SSH-``;
* ``handshake``: key exchange offering only the pinned host-key types (``hostkeys``); a booting guest that
  cuts it short is ``NotYet``, a server key that is not pinned a ``HostKeyMismatch``;
* ``authenticate``: public-key authentication; a refused key is ``AuthRefused``;
* ``watchdog``: exec_command and invoke_subsystem wait for the server's reply forever, and a frozen guest
  behind slirp never resets the connection; ``lost``: the error for a connection that dropped;
* paramiko's transport-thread log goes to ``PARAMIKO_LOG``, demoted to DEBUG.

``NotYet`` (retry until the deadline) and ``AuthRefused`` (retry for a grace period) never leave the
package: ``SSHCommunicator.wait_ready`` retries on them and reports the last one. Everything else raised
here is already a ``localbuilder.errors`` type.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko

from localbuilder.communicator.hostkeys import HostKeyPins
from localbuilder.errors import CommunicatorError, Disconnected, HostKeyMismatch
from localbuilder.keys import fingerprint_blob

# paramiko's transport thread logs a dropped connection (every reboot) at ERROR. Its records go to this
# logger instead of "paramiko.transport" and are demoted to DEBUG: they belong in build.log, not on the
# console — the exception we raise is what the user needs to see.
PARAMIKO_LOG = "localbuilder.communicator.ssh.paramiko"


class NotYet(Exception):
    """The guest is not ready yet: retry until the deadline (never leaves the communicator package)."""


class AuthRefused(Exception):
    """The server refused the key: retried for auth_grace seconds (never leaves the communicator package)."""


class _DemoteToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return True


def route_paramiko_logging() -> None:
    for name in (PARAMIKO_LOG, PARAMIKO_LOG + ".sftp"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DemoteToDebug) for f in logger.filters):
            logger.addFilter(_DemoteToDebug())


def load_pkey(path: Path) -> paramiko.PKey:
    """The build's private key (the client key), read from ``path``."""
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise CommunicatorError(
            f"SSH key file {path} does not exist", hint="generate it with localbuilder.keys.write_private_key"
        ) from None
    except OSError as exc:
        raise CommunicatorError(f"cannot read SSH key file {path}: {exc.strerror}") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise CommunicatorError(
            f"{path} is not a usable unencrypted SSH private key: {exc}",
            hint="use an ed25519 key without passphrase (localbuilder.keys.generate_ed25519)",
        ) from None


def wait_banner(host: str, port: int, timeout: float) -> socket.socket:
    """A connected socket whose peer has sent ``SSH-`` (peeked, so paramiko still reads it)."""
    end = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise NotYet("TCP connect timed out") from None
    except OSError as exc:
        raise NotYet(f"TCP connect: {exc.strerror or exc}") from None
    try:
        seen = b""
        while True:
            left = end - time.monotonic()
            if left <= 0:
                if seen:
                    raise NotYet(f"the port answers, but not with an SSH banner: {seen[:60]!r}")
                raise NotYet("connected, but no SSH banner yet (sshd not listening behind the forward)")
            sock.settimeout(left)
            try:
                seen = sock.recv(4096, socket.MSG_PEEK)
            except TimeoutError:
                continue
            except OSError as exc:
                raise NotYet(f"connection reset before the SSH banner: {exc.strerror or exc}") from None
            if not seen:
                raise NotYet("connection closed before the SSH banner (sshd not listening yet)")
            # RFC 4253 §4.2: the server may send other lines before the "SSH-" identification line.
            if seen.startswith(b"SSH-") or b"\nSSH-" in seen:
                sock.settimeout(None)
                return sock
            if len(seen) >= 4096:
                raise NotYet(f"the port answers, but not with an SSH banner: {seen[:60]!r}")
            # Peeking again at once would return the same bytes: give the peer a moment to send more.
            time.sleep(0.05)
    except BaseException:
        sock.close()
        raise


def handshake(
    sock: socket.socket,
    pins: HostKeyPins,
    *,
    where: str,
    banner_timeout: float,
    handshake_timeout: float,
    deadline: float,
    mismatch: Callable[[str], HostKeyMismatch],
) -> paramiko.Transport:
    """Key exchange on ``sock`` (the server at ``where``, host:port) until ``deadline``; the server key must
    be pinned. ``mismatch(what)`` makes the error for one that is not."""
    transport = paramiko.Transport(sock)
    transport.set_log_channel(PARAMIKO_LOG)
    # Offer only the pinned key types, so that a guest which also has other (unpinned) host keys
    # presents the pinned one instead of whichever it prefers.
    wanted = pins.algorithms(transport.get_security_options().key_types)
    if not wanted:
        discard(transport)
        raise pins.unsupported()
    transport.get_security_options().key_types = wanted
    # The banner is already there (peeked); key exchange is slow on a TCG guest that is busy booting.
    transport.banner_timeout = banner_timeout
    transport.handshake_timeout = handshake_timeout
    try:
        transport.start_client(timeout=max(1.0, min(handshake_timeout, deadline - time.monotonic())))
    except paramiko.ssh_exception.IncompatiblePeer as exc:
        discard(transport)
        if "host key" in str(exc):
            raise mismatch(
                f"the SSH server at {where} has none of the pinned host key types "
                f"({', '.join(wanted)}): {exc}"
            ) from None
        raise NotYet(f"SSH negotiation failed: {exc}") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        discard(transport)
        if isinstance(exc, EOFError):
            # paramiko ends a key exchange that outlives handshake_timeout with a bare EOFError.
            raise NotYet(
                f"SSH key exchange did not complete within {handshake_timeout:g} s, or the server "
                "closed the connection"
            ) from None
        raise NotYet(f"SSH handshake: {describe(exc)}") from None
    # start_client() returns quietly when its timeout passes mid-negotiation: check that it finished.
    try:
        if not transport.is_active():
            raise paramiko.SSHException("negotiation failed")
        server_key = transport.get_remote_server_key()
    except paramiko.SSHException:
        discard(transport)
        raise NotYet("SSH key exchange did not complete in time") from None
    blob = server_key.asbytes()
    if not pins.accepts(blob):
        discard(transport)
        raise mismatch(
            f"the SSH server at {where} presented host key {server_key.get_name()} "
            f"{fingerprint_blob(blob)}, expected {pins.expected()}"
        )
    return transport


def authenticate(transport: paramiko.Transport, username: str, pkey: paramiko.PKey, target: str) -> None:
    try:
        transport.auth_publickey(username, pkey)
    except paramiko.BadAuthenticationType as exc:
        raise CommunicatorError(
            f"the guest at {target} does not accept public-key authentication "
            f"(it allows: {', '.join(exc.allowed_types) or 'nothing'})",
            hint="the image's sshd_config must allow PubkeyAuthentication",
        ) from None
    except paramiko.AuthenticationException as exc:
        raise AuthRefused(str(exc) or "authentication failed") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise NotYet(f"connection lost during authentication: {describe(exc)}") from None


def discard(transport: paramiko.Transport) -> None:
    # close() joins the transport thread. A negotiation that failed leaves paramiko's handshake timer
    # thread running until handshake_timeout; completing the handshake bookkeeping cancels it.
    transport.close()
    transport.packetizer.complete_handshake()


@contextlib.contextmanager
def watchdog(transport: paramiko.Transport, timeout: float, *, target: str, what: str) -> Iterator[None]:
    """Bound a paramiko call that has no timeout of its own (exec_command and invoke_subsystem wait for
    the server's reply forever): after ``timeout`` seconds, close the transport, which wakes the waiting
    call, and raise Disconnected."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        transport.close()

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (paramiko.SSHException, EOFError, OSError):
        if not fired.is_set():
            raise
    finally:
        timer.cancel()
        timer.join()
    if fired.is_set():
        raise Disconnected(
            f"the guest at {target} stopped answering while {what} (no reply for {timeout:g} s)",
            hint="the guest hung, crashed or was paused; the console log may say why",
        )


def lost(target: str, during: str, exc: BaseException | None) -> Disconnected:
    """The error for a connection to ``target`` that dropped ``during`` something (``exc``: paramiko's
    reason, if it kept one)."""
    detail = f": {exc}" if exc is not None and str(exc) else ""
    return Disconnected(
        f"the SSH connection to {target} was lost {during}{detail}",
        hint="the guest rebooted, shut down or crashed; reconnect() if a reboot was expected",
    )


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
