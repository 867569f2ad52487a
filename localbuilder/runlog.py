"""The live ``customization.log`` of a run, and the phase-timing table printed at the end.

AIB keeps a ``customization.log`` in its staging storage account, readable only after the build and
deleted with the staging resources — a top complaint (FACTS §9). Ours is written line by line while
the build runs (``localbuilder logs RUN --follow`` tails it), with UTC timestamps, the step each line
belongs to and the stream, and it stays in the run directory after the build.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from localbuilder.communicator.output import printable
from localbuilder.log import format_duration
from localbuilder.state import PhaseTiming

guest_log = logging.getLogger("localbuilder.guest")


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class CustomizationLog:
    """Append-only, flushed per line; also keeps the last lines of the current step for messages."""

    TAIL = 20

    def __init__(self, path: Path) -> None:
        self.path = path
        # 0600 whatever the umask: guest output can hold whatever the scripts print.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = open(fd, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self._step = "-"
        self.tail: collections.deque[str] = collections.deque(maxlen=self.TAIL)

    def __enter__(self) -> CustomizationLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def _write(self, text: str) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.write(text + "\n")

    def event(self, text: str) -> None:
        """A line of localbuilder's own (step start/end, reboot, note)."""
        text = printable(text)
        self._write(f"{_stamp()} [{self._step}] ==> {text}")
        guest_log.debug("%s", text)

    def begin(self, step: str, type_name: str) -> None:
        self._step = step
        self.tail.clear()
        self.event(f"start: {step} (type {type_name})")

    def end(self, step: str, type_name: str, seconds: float, ok: bool, detail: str = "") -> None:
        status = "succeeded" if ok else "FAILED"
        extra = f": {detail}" if detail else ""
        self.event(f"end: {step} (type {type_name}) {status} after {seconds:.1f} s{extra}")
        self._step = "-"

    def output(self, stream: str, line: str) -> None:
        """The OutputCallback given to the communicator: every guest line, as it arrives."""
        if stream == "localbuilder":
            self.event(line)
            return
        # The SSH path has cleaned the line already (communicator.output); WinRM lines arrive raw.
        line = printable(line)
        self.tail.append(line)
        self._write(f"{_stamp()} [{self._step}] {stream}: {line}")
        # Guest output is what AIB users miss most: show it live on the console too (indented under
        # the step); --quiet hides it, build.log keeps it.
        guest_log.info("%s", line, extra={"guest_stream": stream})


def phase_table(phases: Iterable[PhaseTiming]) -> str:
    rows = list(phases)
    if not rows:
        return ""
    width = max(len(p.name) for p in rows)
    total = sum(p.seconds for p in rows)
    lines = [f"{'phase':<{width}}  {'duration':>12}  status", f"{'-' * width}  {'-' * 12}  ------"]
    for p in rows:
        lines.append(f"{p.name:<{width}}  {format_duration(p.seconds):>12}  {'ok' if p.ok else 'FAILED'}")
    lines.append(f"{'total':<{width}}  {format_duration(total):>12}")
    return "\n".join(lines)
