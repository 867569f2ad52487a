"""Turning a command's output stream into lines: incremental UTF-8 decoding, bounded line length, a
bounded tail for ``CommandResult``. Shared by the communicators and the fake so they behave alike."""

from __future__ import annotations

import codecs
import collections
import re
from collections.abc import Iterator

from localbuilder.communicator import OutputCallback

# Bounded tails of command output kept for CommandResult (the full output goes through on_output).
TAIL_LINES = 200
TAIL_CHARS = 64 * 1024
# A "line" without a newline is cut at this many characters (a binary blob, a progress bar without \n).
MAX_LINE_CHARS = 16 * 1024

# Guest output ends up on the user's terminal (live console, `localbuilder logs`, error messages), so a
# hostile or careless guest must not be able to send it terminal controls: clear the screen, set the
# window title, write the clipboard (OSC 52), hide text behind \r. Colour sequences (SGR) are common and
# harmless noise (pwsh, systemctl, apt): dropped. Every other control character except tab (C0, DEL,
# C1) is kept visible as \xNN text, so nothing the guest said is lost.
_SGR = re.compile(r"\x1b\[[0-9;:]*m")
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(line: str) -> str:
    """``line`` without terminal control sequences (see above); idempotent, cheap for plain text."""
    if _UNSAFE.search(line) is None:
        return line
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", _SGR.sub("", line))


class StreamTail:
    """Decode one output stream incrementally into lines, hand each to on_output and keep a bounded tail.

    Incremental decoding keeps a multi-byte character that straddles two reads intact; invalid UTF-8
    becomes U+FFFD. A line longer than MAX_LINE_CHARS is emitted in pieces.
    """

    def __init__(self, name: str, on_output: OutputCallback | None) -> None:
        self.name = name
        self.on_output = on_output
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._tail: collections.deque[str] = collections.deque()
        self._tail_chars = 0
        self.total_bytes = 0
        self.dropped_lines = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        self.total_bytes += len(data)
        text = self._partial + self._decoder.decode(data, final)
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line.removesuffix("\r"))
        while len(self._partial) > MAX_LINE_CHARS:
            self._emit(self._partial[:MAX_LINE_CHARS])
            self._partial = self._partial[MAX_LINE_CHARS:]

    def finish(self) -> None:
        self.feed(b"", final=True)
        if self._partial:
            self._emit(self._partial.removesuffix("\r"))
            self._partial = ""

    def _emit(self, line: str) -> None:
        line = printable(line)
        if self.on_output is not None:
            self.on_output(self.name, line)
        self._tail.append(line)
        self._tail_chars += len(line) + 1
        while len(self._tail) > TAIL_LINES or (self._tail_chars > TAIL_CHARS and len(self._tail) > 1):
            self._tail_chars -= len(self._tail.popleft()) + 1
            self.dropped_lines += 1

    def lines(self) -> Iterator[str]:
        yield from self._tail
        if self._partial:
            yield self._partial

    def text(self) -> str:
        return "\n".join(self.lines())


def tails(out: StreamTail, err: StreamTail, lines: int = 10) -> str:
    """The last lines of both streams, indented, for an error message ("" when there was no output)."""
    parts = []
    for stream in (out, err):
        tail = list(stream.lines())[-lines:]
        if tail:
            parts.append(f"\nlast {stream.name}:\n" + "\n".join(f"  | {line}" for line in tail))
    return "".join(parts)
