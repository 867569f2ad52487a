"""Hostile guests without a VM: what tests/communicator/test_ssh.py does not already cover.

Covered there (not repeated): a command that never ends (timeout fires, the connection stays usable), a
50 MiB flood of lines (memory < 16 MiB), invalid UTF-8, a guest that stops answering mid-command, a
dropped connection, a wrong host key. Here:
- terminal control sequences from the guest never reach a line, a result tail, an error message, the
  customization log or the console raw (they are dropped or shown as ``\\xNN``);
- 50 MiB on one line without a newline keeps memory bounded too;
- the customization log is private (0600) whatever the umask.
"""

from __future__ import annotations

import logging
import os
import stat
import tracemalloc
from pathlib import Path

import pytest

from localbuilder.communicator.output import MAX_LINE_CHARS, printable
from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.errors import CommunicatorTimeout
from localbuilder.runlog import CustomizationLog
from tests.communicator.conftest import (  # noqa: F401 - fixtures
    client_pair,
    comm,
    host_pair,
    key_file,
    make_comm,
    no_leaks,
    server,
)

# Clear screen, colour, set the window title, write the clipboard (OSC 52), C1 CSI, a bell, a backspace
# and a carriage return that would hide what came before it.
HOSTILE = "a\x1b[2J\x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b]52;c;cHduZWQ=\x07 \x9b6n \x08\x07 hidden\rshown"
DEFANGED = "a\\x1b[2Jred \\x1b]0;title\\x07 \\x1b]52;c;cHduZWQ=\\x07 \\x9b6n \\x08\\x07 hidden\\x0dshown"


# The test server's interpreter splits commands at ';' and words at whitespace (\r too): the same
# without those.
HOSTILE_SSH = HOSTILE.replace(";", ":").replace("hidden\rshown", "end")
DEFANGED_SSH = DEFANGED.replace(";", ":").replace("hidden\\x0dshown", "end")


def raw_control(text: str) -> list[str]:
    return sorted({c for c in text if (ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F})


def test_printable() -> None:
    assert printable(HOSTILE) == DEFANGED
    assert printable(DEFANGED) == DEFANGED  # idempotent: the SSH path and the log may both apply it
    assert printable("tabs\tand ünïcödé ✓ stay") == "tabs\tand ünïcödé ✓ stay"


def test_control_sequences_never_reach_lines_tails_or_errors(comm: SSHCommunicator) -> None:  # noqa: F811
    seen: list[str] = []
    result = comm.run(f"echo {HOSTILE_SSH}; err {HOSTILE_SSH}", on_output=lambda s, line: seen.append(line))
    assert seen == [DEFANGED_SSH, DEFANGED_SSH]
    assert result.stdout_tail == DEFANGED_SSH and result.stderr_tail == DEFANGED_SSH
    with pytest.raises(CommunicatorTimeout) as info:
        comm.run(f"echo {HOSTILE_SSH}; hang", timeout=0.5)
    assert DEFANGED_SSH in str(info.value)
    # The message names the command it ran: the command text is ours, not the guest's, but it still
    # reaches the terminal; only its first line is shown.
    assert raw_control(str(info.value).split("\n", 1)[1]) == []


def test_one_giant_line_keeps_memory_bounded(comm: SSHCommunicator) -> None:  # noqa: F811
    pieces = 0
    longest = 0

    def count(stream: str, line: str) -> None:
        nonlocal pieces, longest
        pieces += 1
        longest = max(longest, len(line))

    tracemalloc.start()
    try:
        result = comm.run(f"longline {50 * 1024 * 1024}", on_output=count, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    assert pieces == 50 * 1024 * 1024 // MAX_LINE_CHARS and longest == MAX_LINE_CHARS
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for one 50 MiB line"


def test_customization_log_defangs_and_is_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "customization.log"
        with CustomizationLog(path) as clog:
            clog.begin("customize[0] PowerShell 'x'", "PowerShell")
            # WinRM lines arrive raw (the SSH path has defanged them already): both end up the same.
            clog.output("stdout", HOSTILE)
            clog.output("stderr", DEFANGED)
            clog.output("localbuilder", f"note about {HOSTILE}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    text = path.read_text()
    assert text.count(DEFANGED) == 3 and raw_control(text) == []
    assert list(clog.tail) == [DEFANGED, DEFANGED]
    console = [r.getMessage() for r in caplog.records if r.name == "localbuilder.guest"]
    assert console and all(raw_control(m) == [] for m in console)
    assert logging.getLogger("localbuilder.guest")  # the logger the console handler shows


def test_winrm_output_is_bounded_and_defanged_too() -> None:
    """The WinRM communicator splits output itself (stderr may hold CLIXML documents, one per line)."""
    from localbuilder.communicator.winrm import MAX_STDERR_LINE_CHARS, _LineSplitter

    lengths: dict[str, list[int]] = {"stdout": [], "stderr": []}
    lines: list[str] = []

    def collect(stream: str, line: str) -> None:
        lengths[stream].append(len(line))
        if len(lines) < 3:
            lines.append(line)

    out, err = _LineSplitter("stdout", collect), _LineSplitter("stderr", collect)
    out.feed(HOSTILE.encode() + b"\n")
    assert out.tail() == DEFANGED  # the tail feeds error messages
    chunk = b"z" * 65536
    tracemalloc.start()
    try:
        for _ in range(50 * 16):  # 50 MiB on stdout, one line
            out.feed(chunk)
        for _ in range(8 * 16):  # 8 MiB on stderr, one line
            err.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out.flush()
    err.flush()
    assert lines[0] == DEFANGED
    assert max(lengths["stdout"]) == MAX_LINE_CHARS and sum(lengths["stdout"]) == len(DEFANGED) + 50 * 2**20
    assert max(lengths["stderr"]) == MAX_STDERR_LINE_CHARS and sum(lengths["stderr"]) == 8 * 2**20
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
