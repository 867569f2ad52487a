"""Hostile paths: File ``destination`` and ``scriptUri``/``sourceUri`` values with traversal, spaces,
quotes, ``;``, ``$()``, backticks and newlines.

Promises proven here:
- on the host, nothing is ever run through a shell (argv lists only; no ``shell=True``/``os.system``);
- in the guest, a path reaches the command as exactly one word: the command the File customizer sends is
  executed by a real ``/bin/sh`` (a "guest" that is a sandbox directory on the host, with a ``sudo`` that
  just runs its arguments), and the file lands at the hostile path verbatim while no injected command runs;
- inline commands and script names never become part of the command line: they travel as file content;
- traversal out of /tmp (File on Linux) or out of the template's directory (relative script paths) is
  refused before any guest boots, with an error naming the field.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder.__main__ import main
from localbuilder.communicator import CommandResult, OutputCallback
from localbuilder.communicator.fake import FakeCommunicator
from localbuilder.communicator.output import StreamTail
from localbuilder.customizers import StepContext, StepFailed
from localbuilder.customizers.file import File
from localbuilder.customizers.shell import Shell
from localbuilder.errors import CustomizerError
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.run import run
from localbuilder.state import RunState
from localbuilder.template import model
from localbuilder.template.model import OsType
from tests.build.fakes import FakePlatform

REPO = Path(__file__).resolve().parents[2]
# Each piece would run a command or split a word if it reached a shell unquoted.
HOSTILE = 'it\'s "q" ;$(touch PWNED-dollar) `touch PWNED-tick` $HOME *\n|& x'


class SandboxShell:
    """A Communicator whose "guest" is the host, confined to a sandbox: run() hands the command to a real
    ``/bin/sh -c`` (cwd = the sandbox, ``sudo`` = a script that runs its arguments unprivileged), and
    upload() copies the file. It proves how a real POSIX shell parses what the customizers send."""

    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox
        self.bin = sandbox / "bin"
        self.bin.mkdir(parents=True)
        sudo = self.bin / "sudo"
        sudo.write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
        sudo.chmod(0o755)
        self.commands: list[str] = []
        self.uploads: list[str] = []

    def wait_ready(self, timeout: float) -> None:
        pass

    def reconnect(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        self.commands.append(command)
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.sandbox)}
        proc = subprocess.run(
            ["/bin/sh", "-c", command], cwd=self.sandbox, env=env, input=stdin, capture_output=True,
            timeout=timeout or 30,
        )  # fmt: skip
        out, err = StreamTail("stdout", on_output), StreamTail("stderr", on_output)
        for tail, data in ((out, proc.stdout), (err, proc.stderr)):
            tail.feed(data)
            tail.finish()
        return CommandResult(proc.returncode, out.text(), err.text(), 0.0)

    def upload(self, src: Path, dst: str, *, mode: int | None = None) -> None:
        self.uploads.append(dst)
        shutil.copyfile(src, dst)
        if mode is not None:
            os.chmod(dst, mode)

    def download(self, src: str, dst: Path) -> None:
        shutil.copyfile(src, dst)


def pwned(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("PWNED*")]


def context(comm: Any, fetched: dict[str, Path], *, allow_any: bool = False) -> StepContext:
    return StepContext(
        index=0, comm=comm, os=OsType.linux, build_user="packer", deadline=time.monotonic() + 60,
        fetched=fetched, allow_any_destination=allow_any,
    )  # fmt: skip


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp: there the File customizer installs through a shell command (under
    /tmp it uploads over SFTP and runs no command at all)."""
    path = Path(tempfile.mkdtemp(prefix="lb-security-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    return src


# ------------------------------------------------------------------------------------ File destination


def test_hostile_destination_lands_verbatim_and_runs_nothing(
    tmp_path: Path, outside_tmp: Path, payload: Path
) -> None:
    """--allow-any-destination: staged in /tmp, then installed by one shell command in the guest."""
    guest = SandboxShell(tmp_path / "guest")
    parent = outside_tmp / f"dir {HOSTILE}"
    parent.mkdir(parents=True)
    dst = parent / f"file {HOSTILE}.txt"
    step = model.FileCustomizer(name="f", source_uri="payload.txt", destination=str(dst))
    File(step).apply(context(guest, {"payload.txt": payload}, allow_any=True))

    assert dst.read_text() == "payload\n"
    assert len(guest.commands) == 1 and str(dst) not in guest.commands[0]  # quoted, never raw
    assert pwned(tmp_path, outside_tmp) == []
    assert not Path(guest.uploads[0]).exists()  # the staged copy was removed


def test_missing_hostile_parent_is_reported_literally(
    tmp_path: Path, outside_tmp: Path, payload: Path
) -> None:
    """The error path echoes the parent directory: quoting there matters as much (a quote in the path
    used to end the echo's literal and run what followed)."""
    guest = SandboxShell(tmp_path / "guest")
    parent = outside_tmp / "a'$(touch PWNED-echo)'b"
    step = model.FileCustomizer(name="f", source_uri="payload.txt", destination=f"{parent}/x.txt")
    with pytest.raises(StepFailed) as info:
        File(step).apply(context(guest, {"payload.txt": payload}, allow_any=True))
    assert info.value.exit_status == 3
    assert f"parent directory {parent} does not exist" in str(info.value)
    assert pwned(tmp_path, outside_tmp) == []
    assert not Path(guest.uploads[0]).exists()


def test_destination_under_tmp_is_uploaded_without_any_command(tmp_path: Path, payload: Path) -> None:
    comm = FakeCommunicator(connected=True)
    dst = f"/tmp/sub/../{HOSTILE}.txt"
    step = model.FileCustomizer(name="f", source_uri="payload.txt", destination=dst)
    File(step).apply(context(comm, {"payload.txt": payload}))
    assert comm.calls == []  # SFTP only: the path is a protocol field, not shell text
    assert [u.dst for u in comm.uploads] == [f"/tmp/{HOSTILE}.txt"]


@pytest.mark.parametrize(
    "destination", ["/tmp/../etc/cron.d/evil", "/tmp/./../root/.ssh/authorized_keys", "/tmp", "/tmp/.."]
)
def test_traversal_out_of_tmp_is_refused_naming_the_field(destination: str) -> None:
    step = model.FileCustomizer(name="f", source_uri="x", destination=destination)
    with pytest.raises(CustomizerError) as info:
        File(step).preflight(OsType.linux, allow_any_destination=False, where="properties.customize[3]")
    assert str(info.value).startswith("properties.customize[3].destination:")
    assert "--allow-any-destination" in (info.value.hint or "")


def _validate(path: Path) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", "--json", str(path)])
    return code, json.loads(out.getvalue()), err.getvalue()


def _template(tmp_path: Path, customize: list[dict[str, Any]]) -> Path:
    body = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01",
        "location": "westeurope",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12",
                       "version": "latest"},
            "customize": customize,
            "distribute": [{"type": "VHD", "runOutputName": "out"}],
        },
    }  # fmt: skip
    path = tmp_path / "t.json"
    path.write_text(json.dumps(body))
    return path


def test_traversal_destination_fails_validate_and_build_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    tpl = _template(tmp_path, [{"type": "File", "sourceUri": "p.txt", "destination": "/tmp/../etc/passwd"}])
    code, entries, stderr = _validate(tpl)
    assert code == 2 and "Traceback" not in stderr
    paths = [f["path"] for f in entries[0]["findings"] if f["severity"] == "error"]
    assert paths == ["properties.customize[0].destination"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["build", str(tpl)]) == 2
    assert "properties.customize[0].destination" in err.getvalue()
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").rglob("*.qcow2"))


# --------------------------------------------------------------------------- scriptUri / sourceUri paths


def _build(tpl_dir: Path, tmp_path: Path, *steps: Any) -> tuple[Any, FakePlatform]:
    platform = FakePlatform(tmp_path)
    template = model.Template(
        name="paths", api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        customize=steps, distribute=(model.VhdDistributor(run_output_name="out"),),
    )  # fmt: skip
    options = BuildOptions(runs_root=tmp_path / "runs")
    record = Build(template, tpl_dir / "t.json", platform, options).execute()
    return record, platform


@pytest.mark.parametrize(
    ("step", "field"),
    [
        (model.ShellCustomizer(name="s", script_uri="../outside.sh"), "scriptUri"),
        (model.ShellCustomizer(name="s", script_uri="scripts/../../outside.sh"), "scriptUri"),
        (model.FileCustomizer(name="f", source_uri="../outside.sh", destination="/tmp/x"), "sourceUri"),
    ],
)
def test_relative_path_climbing_out_of_the_template_dir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: Any, field: str
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    tpl_dir = tmp_path / "tpl"
    (tpl_dir / "scripts").mkdir(parents=True)
    (tmp_path / "outside.sh").write_text("echo host file\n")
    record, platform = _build(tpl_dir, tmp_path, step)
    assert record.run_state is RunState.Failed
    message = record.last_run_status.message
    assert f"properties.customize[0].{field}" in message and "outside the template's directory" in message
    assert not any(e.startswith("boot") for e in platform.events)  # refused before any guest boots


def test_absolute_path_is_an_explicit_choice_and_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    tpl_dir = tmp_path / "tpl"
    tpl_dir.mkdir()
    script = tmp_path / "shared" / "setup.sh"
    script.parent.mkdir()
    script.write_text("echo shared\n")
    record, platform = _build(tpl_dir, tmp_path, model.ShellCustomizer(name="s", script_uri=str(script)),
                              model.ShellCustomizer(name="u", script_uri=script.as_uri()))  # fmt: skip
    assert record.run_state is RunState.Succeeded, record.last_run_status.message


def test_hostile_script_name_and_inline_never_reach_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    tpl_dir = tmp_path / "tpl"
    (tpl_dir / "scripts").mkdir(parents=True)
    name = f"scripts/{HOSTILE}.sh"
    (tpl_dir / name).write_text("#!/bin/sh\necho from the script\n")
    inline = ('echo "$(id -u)" `date` ; rm -rf "$HOME/x"', "printf '%s\\n' \"it's\"")
    record, platform = _build(tpl_dir, tmp_path, model.ShellCustomizer(name="s", script_uri=name),
                              model.ShellCustomizer(name="i", inline=inline))  # fmt: skip
    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    comm = platform.comms["build"]
    script_upload, inline_upload = comm.uploads[0], comm.uploads[1]
    assert script_upload.data == b"#!/bin/sh\necho from the script\n"
    assert inline_upload.data.decode().splitlines()[1:] == list(inline)
    for call in comm.calls[:2]:
        assert "it's" not in call.command and "$(id -u)" not in call.command and HOSTILE not in call.command
    # The remote names are ours: /tmp/localbuilder-customize-<index>-<random>.sh
    assert all(u.dst.startswith("/tmp/localbuilder-customize-") for u in comm.uploads[:2])
    assert pwned(tmp_path, REPO) == []


def test_run_through_a_real_guest_shell_executes_the_script_not_its_name(tmp_path: Path) -> None:
    """The Shell step's exec line, run by a real /bin/sh, runs the uploaded file (whose content is the
    inline text) and nothing else."""
    guest = SandboxShell(tmp_path / "guest")
    step = model.ShellCustomizer(name="i", inline=("echo 'quoted ; $(not run)'", f"echo {len(HOSTILE)}"))
    lines: list[str] = []
    ctx = context(guest, {})
    ctx.output = lambda stream, line: lines.append(line)
    # systemctl is absent in the sandbox PATH on purpose: the state report must not break the step.
    Shell(step).apply(ctx)
    assert lines == ["quoted ; $(not run)", str(len(HOSTILE))]
    assert pwned(tmp_path) == []


# -------------------------------------------------------------------------------------------- the host


def test_host_commands_never_go_through_a_shell() -> None:
    """Every host subprocess goes through localbuilder.run with an argv list (ruff bans ``subprocess``
    elsewhere); this also rules out the other ways to reach a shell."""
    offenders = []
    for path in sorted((REPO / "localbuilder").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    offenders.append(f"{path}:{node.value.lineno}: shell=")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "os" and node.attr in {"system", "popen", "execl", "execlp", "spawnl"}:
                    offenders.append(f"{path}:{node.lineno}: os.{node.attr}")
            if path.name == "run.py":
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            if any(m.split(".")[0] in {"subprocess", "pty"} for m in modules):
                offenders.append(f"{path}:{node.lineno}: imports {modules}")
    assert offenders == []


def test_run_passes_hostile_arguments_literally(tmp_path: Path) -> None:
    result = run(["printf", "%s", HOSTILE], cwd=tmp_path)
    assert result.stdout == HOSTILE
    assert pwned(tmp_path) == []


def test_unknown_home_directory_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``~name/…`` for a user this machine lacks used to escape as a RuntimeError (an internal error)."""
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    tpl_dir = tmp_path / "tpl"
    tpl_dir.mkdir()
    step = model.ShellCustomizer(name="s", script_uri="~no-such-user-here/x.sh")
    record, platform = _build(tpl_dir, tmp_path, step)
    assert record.run_state is RunState.Failed
    assert "properties.customize[0].scriptUri: ~no-such-user-here/x.sh: cannot expand" in (
        record.last_run_status.message
    )
    assert "internal error" not in record.last_run_status.message
    assert not any(e.startswith("boot") for e in platform.events)


def test_powershell_literals_double_every_quote_character() -> None:
    """Windows destinations go into PowerShell single-quoted literals; PowerShell also takes U+2018–U+201B
    for a single quote (about_Quoting_Rules), so each of them must be doubled like ``'``."""
    from localbuilder.communicator.winrs import ps_quote

    text = "c:\\it’s ‘x’ ‚y‛ 'z'; $(Remove-Item c:\\) `n"
    quoted = ps_quote(text)
    assert quoted == "'c:\\it’’s ‘‘x’’ ‚‚y‛‛ ''z''; $(Remove-Item c:\\) `n'"
    # Inside the literal every quote character comes in pairs: none can end it early.
    inner = quoted[1:-1]
    runs = re.findall("['\u2018-\u201b]+", inner)
    assert runs and all(len(run) % 2 == 0 for run in runs)
