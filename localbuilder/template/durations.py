"""Go durations (``5m``, ``2h``, ``1h30m``, ``1.5h``): the syntax of WindowsRestart's ``restartTimeout``.

AIB hands ``restartTimeout`` to Packer's windows-restart provisioner, which reads it with Go's
``time.ParseDuration`` (https://pkg.go.dev/time#ParseDuration): one or more ``<number><unit>`` with
the units ns, us (µs), ms, s, m and h. This is the one parser of that syntax; the validator reports a
malformed value as a finding and ``windows.restart`` as a step error.
"""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> int:
    """Seconds of a Go duration, rounded up; ValueError when ``text`` is not one."""
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{text!r} is not a duration")
    pos = 0
    total = 0.0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return math.ceil(total)
