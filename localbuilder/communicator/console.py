"""The guest's serial console as a communicator quotes it: its last lines, as a terminal would show them.

A guest that never answers has usually said why on its console (a kernel panic, a cloud-init error, an
fsck prompt). The SSH communicator has no other view into such a guest, so its timeout message ends with
the console's last lines. Reading them is a file matter, not an SSH one, hence this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# How long a serial console tail shown in a timeout message is.
SERIAL_TAIL_LINES = 25

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>78cM]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def console_tail(serial_log: Path | None, lines: int = SERIAL_TAIL_LINES) -> str:
    """The end of a timeout message: the console's last ``lines`` lines, or why there are none ("" when
    the guest has no console log)."""
    if serial_log is None:
        return ""
    tail = serial_tail(serial_log, lines)
    if tail is None:
        return f"\n(the guest console log {serial_log} does not exist)"
    if not tail:
        return f"\n(the guest console log {serial_log} is empty: the guest printed nothing)"
    body = "\n".join(f"  | {line}" for line in tail)
    return f"\nlast lines of the guest console ({serial_log}):\n{body}"


def serial_tail(path: Path, lines: int) -> list[str] | None:
    """The last ``lines`` non-empty lines of a serial console log, without terminal escapes; None if the
    file does not exist. Reads at most the last 64 KiB."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return [f"(cannot read: {exc.strerror})"]
    text = data.decode("utf-8", errors="replace")
    result = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        # A console line redrawn with \r keeps only its last state, as a terminal would show it.
        line = _CONTROL.sub("", _ANSI.sub("", raw.rsplit("\r", 1)[-1])).rstrip()
        if line:
            result.append(line)
    return result[-lines:]
