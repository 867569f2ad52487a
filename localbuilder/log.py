"""Logging: one console format, per-run log files, and ``complete_step()`` for timed, nested steps.

The console shows the steps a user cares about (``‣ Booting guest … 64.2 s``); files attached with
``add_file_handler()`` (a run's ``build.log``) get everything at debug, guest output included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOGGER = "localbuilder"
log = logging.getLogger(LOGGER)

_depth = 0
# Steps finished in this process, with their durations: the phase table at the end of a build.
STEP_TIMES: list[tuple[str, float]] = []


def _use_colour(stream: object) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("NO_COLOR") is None


class ConsoleFormatter(logging.Formatter):
    """``‣ message`` for info, ``warning: …`` / ``error: …`` coloured when on a terminal."""

    COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31;1m", logging.CRITICAL: "\033[31;1m"}

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        indent = "  " * getattr(record, "depth", _depth)
        if record.levelno >= logging.WARNING:
            prefix = "warning: " if record.levelno == logging.WARNING else "error: "
            text = f"{indent}{prefix}{msg}"
        elif record.levelno <= logging.DEBUG:
            text = f"{indent}  {msg}"
        else:
            text = f"{indent}‣ {msg}"
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        colour = self.COLOURS.get(record.levelno)
        if self.colour and colour:
            text = f"{colour}{text}\033[0m"
        return text


def setup_logging(*, debug: bool = False, quiet: bool = False) -> None:
    """Configure the ``localbuilder`` logger once per process (console on stderr)."""
    root = logging.getLogger(LOGGER)
    for handler in list(root.handlers):
        if getattr(handler, "_localbuilder_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter(_use_colour(sys.stderr)))
    handler.setLevel(logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO))
    handler._localbuilder_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    root.propagate = False
    # paramiko logs handshake noise at INFO; keep it in the run log only.
    logging.getLogger("paramiko").setLevel(logging.WARNING)


def add_file_handler(path: Path) -> logging.Handler:
    """Send everything (debug included) to ``path`` until the returned handler is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger(LOGGER).addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    logging.getLogger(LOGGER).removeHandler(handler)
    handler.close()


@contextlib.contextmanager
def complete_step(text: str, done: str | None = None) -> Iterator[None]:
    """Log ``text``, indent what is logged inside, and log the elapsed time when it ends."""
    global _depth
    log.info(text)
    start = time.monotonic()
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        elapsed = time.monotonic() - start
        STEP_TIMES.append((text, elapsed))
        if ok:
            log.info("%s (%.1f s)", done or "done", elapsed, extra={"depth": _depth + 1})


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
