"""FakeCommunicator: a scripted guest for unit tests of the build orchestrator and the customizers.

Like httpx's ``MockTransport``, it is the interface with a handler behind it instead of a network::

    comm = FakeCommunicator({
        "cloud-init status --wait": FakeReply(stdout="status: done"),
        re.compile(r"^sudo reboot"): FakeReply(disconnect=True),      # the connection drops: a reboot
        re.compile(r"apt-get install"): [FakeReply(exit_status=100), 0],  # fails once, then succeeds
        "uname -r": lambda call: FakeReply(stdout="6.1.0-13-amd64"),
    }, connected=True)
    ...
    assert comm.commands == ["cloud-init status --wait", ...]
    assert comm.files["/tmp/script.sh"] == b"#!/bin/sh\\n..."

Replies are matched in insertion order: a ``str`` key matches the whole command, a compiled pattern
``search``es it. A value is a FakeReply, an ``int`` (exit status), a ``str`` (stdout), a callable taking
the FakeCall and returning any of these, or a list of them, used one per call (the last one repeats).
Unmatched commands get ``default`` (success, no output) or, with ``strict=True``, fail the test.

It behaves like SSHCommunicator where a caller can tell the difference: it must be connected
(``wait_ready``/``reconnect``) before ``run``; output goes line by line to ``on_output`` and only a
bounded tail is kept; a ``disconnect`` reply raises Disconnected and leaves it disconnected until
``reconnect``; uploads land in ``files`` and downloads read from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from localbuilder.communicator import CommandResult, Held, OutputCallback
from localbuilder.communicator.output import StreamTail, tails
from localbuilder.errors import CommunicatorError, CommunicatorTimeout, Disconnected


@dataclasses.dataclass(frozen=True)
class FakeReply:
    """What the fake guest does for one command.

    ``stdout``/``stderr`` are streamed line by line (stdout first). ``disconnect`` drops the connection
    after the output, as a reboot or a crash would; ``hang`` makes the command outlast its timeout
    (CommunicatorTimeout; without a timeout the fake cannot wait forever, so it raises as well).
    ``duration`` is the reported CommandResult.duration (the fake never sleeps).
    """

    exit_status: int = 0
    stdout: str | bytes = ""
    stderr: str | bytes = ""
    disconnect: bool = False
    hang: bool = False
    duration: float = 0.0


@dataclasses.dataclass(frozen=True)
class FakeCall:
    """One run() as the fake saw it."""

    command: str
    stdin: bytes | None
    timeout: float | None


@dataclasses.dataclass(frozen=True)
class FakeUpload:
    src: Path
    dst: str
    mode: int | None
    data: bytes


ReplyValue: TypeAlias = "FakeReply | int | str | Callable[[FakeCall], FakeReply | int | str]"
Replies: TypeAlias = "Mapping[str | re.Pattern[str], ReplyValue | list[ReplyValue]]"


class FakeCommunicator:
    """A Communicator whose guest is a table of replies. Everything it is asked is recorded in order:
    ``calls`` (run), ``uploads``, ``downloads`` and ``events`` (all of them plus wait_ready, reconnect
    and close, as short strings such as ``"run: uname -r"``)."""

    def __init__(
        self,
        replies: Replies | None = None,
        *,
        default: FakeReply | None = FakeReply(),
        strict: bool = False,
        connected: bool = False,
        files: Mapping[str, bytes] | None = None,
        wait_ready_errors: Sequence[CommunicatorError] = (),
    ) -> None:
        self._rules: list[tuple[str | re.Pattern[str], list[ReplyValue]]] = []
        for key, value in (replies or {}).items():
            values = list(value) if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"FakeCommunicator: empty reply list for {key!r}")
            self._rules.append((key, values))
        self._used: dict[int, int] = {}
        self.default = None if strict else default
        self.connected = connected
        self._dropped = False  # a scripted disconnect happened and no reconnect yet
        self.files: dict[str, bytes] = dict(files or {})
        self.modes: dict[str, int] = {}
        self._wait_ready_errors = list(wait_ready_errors)
        self.calls: list[FakeCall] = []
        self.uploads: list[FakeUpload] = []
        self.downloads: list[tuple[str, Path]] = []
        self.events: list[str] = []
        self.wait_ready_calls = 0
        self.reconnects = 0

    @property
    def commands(self) -> list[str]:
        return [call.command for call in self.calls]

    # -------------------------------------------------------------------------------- Communicator

    def wait_ready(self, timeout: float, *, progress: Callable[[float, str], None] | None = None) -> None:
        self.wait_ready_calls += 1
        self.events.append(f"wait_ready: {timeout:g}")
        if progress is not None:
            progress(0.0, "waiting for the fake guest (attempt 1)")
        if self._wait_ready_errors:
            raise self._wait_ready_errors.pop(0)
        self.connected = True
        self._dropped = False

    def reconnect(self, timeout: float, *, progress: Callable[[float, str], None] | None = None) -> None:
        self.reconnects += 1
        self.events.append(f"reconnect: {timeout:g}")
        self.connected = False
        self.wait_ready(timeout, progress=progress)

    def close(self) -> None:
        self.events.append("close")
        self.connected = False
        self._dropped = False

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        self._require_connection(f"run {command!r}")
        call = FakeCall(command=command, stdin=stdin, timeout=timeout)
        self.calls.append(call)
        self.events.append(f"run: {command}")
        reply = self._reply_for(call)
        out = StreamTail("stdout", on_output)
        err = StreamTail("stderr", on_output)
        for tail, data in ((out, reply.stdout), (err, reply.stderr)):
            tail.feed(data.encode() if isinstance(data, str) else data)
            tail.finish()
        if reply.hang:
            raise CommunicatorTimeout(
                f"{command!r} did not finish within {timeout if timeout is not None else 'its'} s "
                "(fake: scripted hang)" + tails(out, err),
                hint="(FakeCommunicator)",
            )
        if reply.disconnect:
            self.connected = False
            self._dropped = True
            raise Disconnected(
                f"the connection to the fake guest was lost while running {command!r} (scripted)"
                + tails(out, err),
                hint="reconnect() if a reboot was expected",
            )
        return CommandResult(
            exit_status=reply.exit_status,
            stdout_tail=out.text(),
            stderr_tail=err.text(),
            duration=reply.duration,
        )

    @contextlib.contextmanager
    def hold(self, command: str, *, ready: str, timeout: float) -> Iterator[Held]:
        """The reply's stdout must contain a line starting with ``ready`` (else CommunicatorError, as a
        command that ended early); ``result`` is the whole reply once the block is done."""
        result = self.run(command, timeout=timeout)
        self.events[-1] = f"hold: {command}"
        line = next((x for x in result.stdout_tail.splitlines() if x.startswith(ready)), None)
        if line is None:
            raise CommunicatorError(
                f"{command!r} ended (exit {result.exit_status}) before it printed {ready!r}"
            )
        held = Held(line=line)
        try:
            yield held
        finally:
            self.events.append(f"released: {command}")
        held.result = result

    def upload(self, src: Path, dst: str, *, mode: int | None = None) -> None:
        self._require_connection(f"upload to {dst}")
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise CommunicatorError(
                f"cannot read {src} for upload to {dst}: {exc.strerror}", hint="check the local path"
            ) from None
        self.uploads.append(FakeUpload(src=src, dst=dst, mode=mode, data=data))
        self.events.append(f"upload: {dst}")
        self.files[dst] = data
        if mode is not None:
            self.modes[dst] = mode

    def download(self, src: str, dst: Path) -> None:
        self._require_connection(f"download {src}")
        self.downloads.append((src, dst))
        self.events.append(f"download: {src}")
        if src not in self.files:
            raise CommunicatorError(
                f"cannot download {src} from the guest: no such file", hint="check the remote path"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(self.files[src])

    # ------------------------------------------------------------------------------------- helpers

    def _require_connection(self, what: str) -> None:
        if not self.connected:
            raise (Disconnected if self._dropped else CommunicatorError)(
                f"cannot {what}: the fake guest is not connected",
                hint="call wait_ready() (or reconnect() after a scripted disconnect) first, or create the "
                "fake with connected=True",
            )

    def _reply_for(self, call: FakeCall) -> FakeReply:
        for index, (key, values) in enumerate(self._rules):
            matched = key == call.command if isinstance(key, str) else key.search(call.command) is not None
            if not matched:
                continue
            used = self._used.get(index, 0)
            self._used[index] = used + 1
            return _normalise(values[min(used, len(values) - 1)], call)
        if self.default is None:
            known = ", ".join(repr(k if isinstance(k, str) else k.pattern) for k, _ in self._rules) or "none"
            raise AssertionError(
                f"FakeCommunicator(strict=True): no reply for {call.command!r} (known: {known})"
            )
        return self.default


def _normalise(value: ReplyValue, call: FakeCall) -> FakeReply:
    if callable(value) and not isinstance(value, FakeReply):
        value = value(call)
    if isinstance(value, FakeReply):
        return value
    if isinstance(value, bool):
        raise TypeError(
            f"FakeCommunicator: a reply cannot be a bool ({value!r}); use FakeReply(exit_status=…)"
        )
    if isinstance(value, int):
        return FakeReply(exit_status=value)
    if isinstance(value, str):
        return FakeReply(stdout=value)
    raise TypeError(f"FakeCommunicator: unsupported reply {value!r} for {call.command!r}")
