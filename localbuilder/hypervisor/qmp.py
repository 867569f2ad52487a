"""A small QMP (QEMU Machine Protocol) client over a unix socket.

Protocol [qemu docs, "QEMU Machine Protocol Specification"]: the server greets with ``{"QMP": …}``;
the client must send ``qmp_capabilities`` before anything else; each command gets exactly one
``{"return": …}`` or ``{"error": {"class", "desc"}}``; asynchronous ``{"event": …}`` messages can arrive at
any time, also between a command and its reply. Messages are JSON objects separated by CRLF.

No background thread: events wait in the socket buffer until ``events()`` or ``execute()`` reads
them, and are kept in ``self.seen``. A guest reboot produces one ``RESET`` event, so counting them
needs no polling while the guest runs.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localbuilder.errors import BackendError

log = logging.getLogger("localbuilder.hypervisor.qmp")

Message = dict[str, Any]


class QMPError(BackendError):
    """QEMU answered a command with an error (``error.class`` / ``error.desc``)."""


class QMPClosed(BackendError):
    """The QMP connection ended: qemu has exited (or is exiting)."""


class QMPClient:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._pending: list[Message] = []  # messages read but not yet consumed
        self.seen: list[Message] = []  # every event, in order
        self.closed = False
        greeting = self._read_message(timeout=10.0)
        if greeting is None or "QMP" not in greeting:
            raise BackendError(f"unexpected QMP greeting: {greeting!r}")
        self.version = greeting["QMP"].get("version", {}).get("qemu", {})
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: Path, *, deadline: float, alive: Callable[[], bool]) -> QMPClient:
        """Connect to qemu's QMP socket, retrying until ``deadline`` (monotonic) while ``alive()``.

        qemu creates the socket during start-up; until then connect() fails with ENOENT/ECONNREFUSED.
        """
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if not alive():
                    raise QMPClosed("qemu exited before its QMP socket was ready") from exc
                if time.monotonic() > deadline:
                    raise BackendError(f"qemu's QMP socket {path} did not become ready",
                                       hint="Is the machine overloaded? Rerun with --debug.") from exc
                time.sleep(0.05)
            except BaseException:
                sock.close()
                raise

    # ---- reading -----------------------------------------------------------------------------------

    def _fill(self, timeout: float | None) -> bool:
        """Read what is available (waiting up to ``timeout``); False if nothing came."""
        if self.closed:
            return False
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return False
        try:
            data = self._sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._buffer += data
        return True

    def _parse_buffer(self) -> None:
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                log.debug("ignoring malformed QMP line: %r", line[:200])
                continue
            if isinstance(msg, dict):
                if "event" in msg:
                    log.debug("QMP event: %s", msg.get("event"))
                    self.seen.append(msg)
                else:
                    self._pending.append(msg)

    def _read_message(self, timeout: float) -> Message | None:
        end = time.monotonic() + timeout
        while True:
            self._parse_buffer()
            if self._pending:
                return self._pending.pop(0)
            remaining = end - time.monotonic()
            if self.closed:
                raise QMPClosed("QMP connection closed: qemu has exited")
            if remaining <= 0:
                return None
            self._fill(remaining)

    # ---- API ------------------------------------------------------------------------------------

    def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        fds: list[int] | None = None,
    ) -> Any:
        """Run one QMP command and return its ``return`` value; QMPError on an error reply.

        ``fds`` travel with the command's message as SCM_RIGHTS ancillary data (what ``getfd`` needs)."""
        if self.closed:
            raise QMPClosed(f"cannot run {command}: QMP connection closed (qemu has exited)")
        request: Message = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\r\n"
        try:
            if fds:
                socket.send_fds(self._sock, [data], fds)
            else:
                self._sock.sendall(data)
        except OSError as exc:
            self.closed = True
            raise QMPClosed(f"cannot run {command}: QMP connection closed ({exc})") from exc
        reply = self._read_message(timeout)
        if reply is None:
            raise BackendError(f"QMP command {command} got no answer within {timeout:.0f} s")
        if "error" in reply:
            err = reply["error"]
            raise QMPError(f"QMP {command} failed: {err.get('class')}: {err.get('desc')}")
        return reply.get("return")

    def pass_fd(self, name: str, fd: int, *, timeout: float = 30.0) -> None:
        """Hand ``fd`` to qemu under ``name`` (QMP ``getfd``). Used for migration streams (``migrate
        uri=fd:NAME``), so that no path ever reaches a shell (``exec:`` URIs run /bin/sh inside qemu)."""
        self.execute("getfd", {"fdname": name}, timeout=timeout, fds=[fd])

    def events(self, name: str | None = None) -> list[Message]:
        """All events seen so far (reading what is waiting, without blocking), optionally by name."""
        while self._fill(0):
            pass
        self._parse_buffer()
        return [e for e in self.seen if name is None or e.get("event") == name]

    def close(self) -> None:
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass
