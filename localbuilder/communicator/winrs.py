"""What goes through Windows Remote Shell: the cmd.exe command lines and PowerShell scripts the WinRM
communicator (and ``localbuilder.windows``) run, and the CLIXML that comes back on stderr.

WinRS runs every command through ``cmd /c``, with cmd.exe's quoting rules and its 8,191-character line
limit. So PowerShell goes in as ``-EncodedCommand`` (``powershell_command``), literals inside a script are
quoted for PowerShell (``ps_quote``), and files travel as base64 lines through one command's stdin
(``upload_script``) or stdout (``download_script``), checked by SHA-256 at both ends. powershell.exe run
this way answers on stderr in CLIXML (``decode_clixml``).

Pure string functions: nothing here talks to a guest, so the Windows steps can spell commands without
importing pywinrm.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET

from localbuilder.errors import CommunicatorError

POWERSHELL = "powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass"
# cmd.exe's command-line limit: WinRS runs every command through cmd /c.
CMD_LINE_LIMIT = 8191


def powershell_command(script: str, *, progress: bool = True) -> str:
    """The cmd.exe line that runs ``script``: ``powershell … -EncodedCommand <UTF-16LE base64>``.

    ``-EncodedCommand`` avoids every cmd.exe/PowerShell quoting rule. The script is prefixed with
    ``$ProgressPreference = 'SilentlyContinue'`` as Packer does: progress records are serialized to
    stderr as CLIXML over WinRM and drown real errors.
    """
    # A begin/process/end script must not have statements before its blocks: it sets the preference itself.
    full = ("$ProgressPreference = 'SilentlyContinue'\n" if progress else "") + script
    encoded = base64.b64encode(full.encode("utf-16-le")).decode("ascii")
    line = f"{POWERSHELL} -EncodedCommand {encoded}"
    if len(line) > CMD_LINE_LIMIT:
        # A programming error on our side: long scripts must be uploaded and run from a file.
        raise CommunicatorError(
            f"PowerShell script too long for one command line ({len(line)} > {CMD_LINE_LIMIT} characters)"
        )
    return line


def ps_quote(text: str) -> str:
    """A PowerShell single-quoted literal: each quote character is doubled. PowerShell also ends a
    single-quoted string at the typographic quotes U+2018–U+201B (about_Quoting_Rules), so a path with
    ``’`` in it would otherwise break out of the literal."""
    return "'" + re.sub("['\u2018-\u201b]", lambda m: m.group() * 2, text) + "'"


def upload_script(dst: str) -> str:
    """PowerShell that writes base64 lines arriving on stdin to ``dst`` and prints its SHA-256.

    The shape (begin/process/end, lines through ``$input``) is how stdin reaches a PowerShell run with
    ``-EncodedCommand``: each stdin line is one pipeline item. The data lands in a temp file next to
    ``dst`` that is moved into place only when complete.
    """
    tmp = f"{dst}.lbupload-{uuid.uuid4().hex[:8]}"
    return f"""begin {{
    $ProgressPreference = 'SilentlyContinue'
    $ErrorActionPreference = 'Stop'
    $dst = {ps_quote(dst)}
    $tmp = {ps_quote(tmp)}
    $parent = Split-Path -Parent $dst
    if ($parent -and -not (Test-Path -LiteralPath $parent -PathType Container)) {{
        [Console]::Error.WriteLine("parent directory does not exist: $parent")
        exit 2
    }}
    $out = [System.IO.File]::Create($tmp)
}}
process {{
    foreach ($line in $input) {{
        if ($line) {{
            $bytes = [Convert]::FromBase64String($line)
            $out.Write($bytes, 0, $bytes.Length)
        }}
    }}
}}
end {{
    $out.Close()
    Move-Item -LiteralPath $tmp -Destination $dst -Force
    $hash = (Get-FileHash -LiteralPath $dst -Algorithm SHA256).Hash.ToLowerInvariant()
    Write-Output "sha256=$hash"
}}
"""


def download_script(src: str) -> str:
    """PowerShell that writes ``src`` to stdout, base64 in lines of 64 KiB, then ``sha256=<hex>``."""
    return f"""$ErrorActionPreference = 'Stop'
$bytes = [System.IO.File]::ReadAllBytes({ps_quote(src)})
$b64 = [Convert]::ToBase64String($bytes)
for ($i = 0; $i -lt $b64.Length; $i += 65536) {{
    Write-Output $b64.Substring($i, [Math]::Min(65536, $b64.Length - $i))
}}
$hash = (Get-FileHash -LiteralPath {ps_quote(src)} -Algorithm SHA256).Hash.ToLowerInvariant()
Write-Output "sha256=$hash"
"""


CLIXML_HEADER = "#< CLIXML"
_CLIXML_NS = "{http://schemas.microsoft.com/powershell/2004/04}"
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def decode_clixml(line: str) -> list[str] | None:
    """PowerShell's serialized stderr → the error text lines; None when ``line`` is not CLIXML.

    powershell.exe run through WinRS writes its error stream as CLIXML (``#< CLIXML`` and then one
    ``<Objs>`` document per line), progress records included; pywinrm's ``run_ps`` and Ansible decode
    it too. Error strings keep their text (``_x000D__x000A_`` escapes decoded); progress is dropped.
    """
    if line.strip() == CLIXML_HEADER:
        return []
    if not line.startswith("<Objs "):
        return None
    try:
        root = ET.fromstring(line)
    except ET.ParseError:
        return None
    text = "".join(
        _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), node.text or "")
        for node in root.iter(f"{_CLIXML_NS}S")
        if node.get("S") == "Error"
    )
    return text.replace("\r\n", "\n").rstrip("\n").split("\n") if text else []
