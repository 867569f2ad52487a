"""One command's session channel, driven to its end: what ``SSHCommunicator.run`` and ``.hold`` share.

``pump`` sends the command's stdin as the SSH window allows, feeds stdout and stderr into bounded tails
(``output.StreamTail``) as they arrive, and bounds the wait: the command's timeout, and a liveness probe while
it is silent (``LivenessProbe``: a frozen guest behind QEMU's slirp never resets the TCP connection, and
paramiko's own keepalive expects no answer). ``wait_for_line`` reads until a command says it got
somewhere (``hold``). Both tell a dropped connection (Disconnected) from a command that failed.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time

import paramiko

from localbuilder.communicator.output import StreamTail, tails
from localbuilder.communicator.sshtransport import lost
from localbuilder.errors import CommunicatorError, CommunicatorTimeout, Disconnected


def pump(
    chan: paramiko.Channel,
    transport: paramiko.Transport,
    command: str,
    *,
    timeout: float | None,
    start: float,
    stdin: bytes | None,
    out: StreamTail,
    err: StreamTail,
    target: str,
    liveness_after: float,
    liveness_timeout: float,
) -> None:
    """Drive ``command``'s channel until it ends: send ``stdin`` (then close it), feed its output to ``out``
    and ``err``, raise CommunicatorTimeout ``timeout`` seconds after ``start`` and Disconnected when the
    connection drops or the guest stops answering (a liveness probe after ``liveness_after`` quiet seconds,
    answered within ``liveness_timeout``)."""
    pending = memoryview(stdin) if stdin else None
    if pending is None:
        chan.shutdown_write()
    last_activity = time.monotonic()
    probe: LivenessProbe | None = None
    while True:
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            raise CommunicatorTimeout(
                f"{short(command)!r} did not finish within {timeout:g} s; the channel was closed (the "
                "process may still run in the guest)" + tails(out, err),
                hint="raise the step's timeout, or make the command end on its own (no prompts, no "
                "daemons in the foreground)",
            )
        # Channels can only be selected for reading; while stdin is pending, poll send_ready() often.
        wait = 0.01 if pending is not None else 0.5
        if timeout is not None:
            wait = max(0.0, min(wait, start + timeout - now))
        if not chan.eof_received:
            select.select([chan], [], [], wait)
        got = False
        streams = ((chan.recv_ready, chan.recv, out), (chan.recv_stderr_ready, chan.recv_stderr, err))
        for ready, recv, tail in streams:
            while ready():
                data = recv(65536)
                if not data:
                    break
                tail.feed(data)
                got = True
        # Fill the SSH window; when it is full, send_ready() is False until the guest reads.
        while pending is not None and chan.send_ready():
            try:
                sent = chan.send(bytes(pending[:32768]))
            except OSError:
                sent = -1  # the command no longer reads stdin, or the channel is going away
            if sent > 0:
                pending = pending[sent:]
                got = True
            if sent <= 0 or not len(pending):
                pending = None
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    chan.shutdown_write()
        if got:
            last_activity = time.monotonic()
            probe = None
        finished = chan.closed or (chan.eof_received and chan.exit_status_ready())
        if finished and not chan.recv_ready() and not chan.recv_stderr_ready():
            if not transport.is_active() and not chan.exit_status_ready():
                raise lost(target, f"running {short(command)!r}", transport.get_exception())
            return
        if not transport.is_active():
            raise lost(target, f"running {short(command)!r}", transport.get_exception())
        if chan.eof_received:
            # EOF makes the channel's pipe readable forever; wait for exit status/close without spinning.
            time.sleep(min(0.05, wait))
        # A frozen guest behind slirp never resets the TCP connection, so silence alone proves nothing:
        # after liveness_after quiet seconds, ask sshd for a reply and give it liveness_timeout.
        if time.monotonic() - last_activity >= liveness_after:
            if probe is None:
                probe = LivenessProbe(transport)
            elif probe.answered():
                last_activity = time.monotonic()
                probe = None
            elif probe.age() >= liveness_timeout:
                transport.close()
                raise Disconnected(
                    f"the guest stopped answering while running {short(command)!r} (no reply to a "
                    f"keepalive for {liveness_timeout:g} s)" + tails(out, err),
                    hint="the guest hung, crashed or was paused; the console log may say why",
                )


def wait_for_line(
    chan: paramiko.Channel,
    transport: paramiko.Transport,
    command: str,
    *,
    ready: str,
    timeout: float,
    seen: list[str],
    out: StreamTail,
    err: StreamTail,
    target: str,
) -> str:
    """The first stdout line of ``command`` (collected in ``seen``) that starts with ``ready``; raise when
    the command ends first, the connection drops, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        match = next((line for line in seen if line.startswith(ready)), None)
        if match is not None:
            return match
        if chan.exit_status_ready() and not chan.recv_ready():
            out.finish()
            err.finish()
            raise CommunicatorError(
                f"{short(command)!r} ended (exit {chan.recv_exit_status()}) before it printed {ready!r}"
                + tails(out, err)
            )
        if not transport.is_active():
            raise lost(target, f"running {short(command)!r}", transport.get_exception())
        if time.monotonic() > deadline:
            raise CommunicatorTimeout(
                f"{short(command)!r} did not print {ready!r} within {timeout:g} s" + tails(out, err)
            )
        select.select([chan], [], [], 0.05)
        while chan.recv_ready():
            out.feed(chan.recv(65536))
        while chan.recv_stderr_ready():
            err.feed(chan.recv_stderr(65536))


def short(command: str, limit: int = 80) -> str:
    """A command as messages name it: its first line, cut at ``limit`` characters."""
    first = command.strip().splitlines()[0] if command.strip() else ""
    more = len(first) > limit or "\n" in command.strip()
    return first[:limit] + (" …" if more else "")


class LivenessProbe:
    """Ask sshd for a reply (a global request with want-reply) in a helper thread.

    paramiko's global_request(wait=True) has no timeout, hence the thread: the caller polls answered()
    and gives up after its own deadline; closing the transport then ends the thread.
    """

    def __init__(self, transport: paramiko.Transport) -> None:
        self._started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._ask, args=(transport,), name="ssh-liveness", daemon=True)
        self._thread.start()

    def _ask(self, transport: paramiko.Transport) -> None:
        # OpenSSH answers an unknown global request with REQUEST_FAILURE: any answer proves it is alive.
        with contextlib.suppress(Exception):
            transport.global_request("keepalive@openssh.com", wait=True)
        if transport.is_active():
            self._done.set()

    def answered(self) -> bool:
        return self._done.is_set()

    def age(self) -> float:
        return time.monotonic() - self._started
