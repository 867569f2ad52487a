"""A structural check of every PowerShell text we ship or generate (no PowerShell on this machine).

Not a parser: it tokenizes strings (single/double quoted, here-strings, backtick escapes) and comments,
and checks that (), {}, [] balance and that no string is left open. That catches the typical breakage
of hand-written or templated scripts; whether PowerShell *runs* them is not verified (docs/windows.md).
"""

from __future__ import annotations

import pytest

from localbuilder.communicator.winrs import download_script, upload_script
from localbuilder.windows.powershell import elevated_launcher, plain_wrapper, task_runner
from localbuilder.windows.restart import BOOT_TIME_SCRIPT, CHECK_SCRIPT
from localbuilder.windows.scripts import guest_script
from localbuilder.windows.update import UpdateOptions, invocation

PAIRS = {")": "(", "}": "{", "]": "["}


def check(text: str) -> None:
    stack: list[tuple[str, int]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        if text.startswith("@'\n", i) or text.startswith("@'\r\n", i) or text.startswith('@"\n', i):
            quote = text[i + 1]
            end = text.find("\n" + quote + "@", i)
            assert end > 0, f"here-string opened on line {line} is not closed"
            line += text.count("\n", i, end + 1)
            i = end + 3
            continue
        if c == "#" and (i == 0 or text[i - 1] in " \t\n;{("):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "<" and text.startswith("<#", i):
            end = text.find("#>", i)
            assert end > 0, f"block comment on line {line} is not closed"
            i = end + 2
            continue
        if c in "'\"":
            j = i + 1
            while True:
                assert j < n, f"string opened on line {line} is not closed"
                if c == '"' and text[j] == "`":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:  # doubled quote = literal quote
                        j += 2
                        continue
                    break
                j += 1
            line += text.count("\n", i, j)
            i = j + 1
            continue
        if c == "`":
            i += 2
            continue
        if c in "({[":
            stack.append((c, line))
        elif c in ")}]":
            assert stack, f"unbalanced {c!r} on line {line}"
            opened, at = stack.pop()
            assert opened == PAIRS[c], f"{c!r} on line {line} closes {opened!r} from line {at}"
        i += 1
    assert not stack, f"unclosed {stack[-1][0]!r} from line {stack[-1][1]}"


SCRIPT = "C:\\Windows\\Temp\\localbuilder-customize-0-0123abcd.ps1"
TEXTS = {
    "windows-update.ps1": lambda: guest_script("windows-update.ps1"),
    "sysprep.ps1": lambda: guest_script("sysprep.ps1"),
    "windows-setup.ps1": lambda: guest_script("windows-setup.ps1"),
    "plain wrapper": lambda: plain_wrapper(SCRIPT),
    "task runner": lambda: task_runner(SCRIPT),
    "launcher (user)": lambda: elevated_launcher(SCRIPT, task_name="t", run_as="packer"),
    "launcher (SYSTEM)": lambda: elevated_launcher(SCRIPT, task_name="t", run_as="SYSTEM"),
    "upload": lambda: upload_script("C:\\it's here\\a.bin"),
    "download": lambda: download_script("C:\\a.bin"),
    "update invocation": lambda: invocation(UpdateOptions(filters=("exclude:$_.Title -like '*Preview*'",))),
    "restart check": lambda: CHECK_SCRIPT,
    "boot time": lambda: BOOT_TIME_SCRIPT,
}


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_balanced(name: str) -> None:
    check(TEXTS[name]())


@pytest.mark.parametrize(
    "broken",
    ["if ($a) { exit 1", "Write-Output 'open", "$x = @(1, 2", "@'\nno end", "foo) bar", "{ ( } )"],
)
def test_checker_finds_breakage(broken: str) -> None:
    with pytest.raises(AssertionError):
        check(broken)


def test_guest_script_headers() -> None:
    for name in ("windows-update.ps1", "sysprep.ps1", "windows-setup.ps1"):
        text = guest_script(name)
        assert text.startswith(f"# localbuilder {name} — ")
        header = text[: text.index("\nparam(")]  # the comment block before the parameters
        for word in ("Inputs", "Exit codes", "Idempotency"):
            assert word in header, f"{name}: the header does not document {word}"
