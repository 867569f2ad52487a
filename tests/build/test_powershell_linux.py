"""PowerShell steps on a Linux guest: pwsh when present, a clear failure when not."""

from __future__ import annotations

import re
import time

import pytest

from localbuilder.communicator.fake import FakeCommunicator, FakeReply
from localbuilder.customizers import StepContext, StepFailed, customizer_for
from localbuilder.template.model import OsType, PowerShellCustomizer


def _ctx(comm: FakeCommunicator) -> StepContext:
    return StepContext(
        index=1, comm=comm, os=OsType.linux, build_user="packer", deadline=time.monotonic() + 60
    )


def _step(**kw: object) -> PowerShellCustomizer:
    base: dict[str, object] = {"name": "ps", "inline": ("Write-Output hello",)}
    base.update(kw)
    return PowerShellCustomizer(**base)  # type: ignore[arg-type]


def test_runs_with_pwsh_as_build_user() -> None:
    comm = FakeCommunicator({re.compile("pwsh"): FakeReply(stdout="hello\n")}, connected=True)
    customizer_for(_step()).apply(_ctx(comm))
    (cmd,) = comm.commands
    assert "pwsh -NoLogo -NoProfile -NonInteractive -File /tmp/localbuilder-customize-1-" in cmd
    assert "sudo" not in cmd
    (upload,) = comm.uploads
    assert upload.data.endswith(b"Write-Output hello\r\n")


def test_run_elevated_uses_sudo() -> None:
    comm = FakeCommunicator(connected=True)
    customizer_for(_step(run_elevated=True)).apply(_ctx(comm))
    assert "sudo -n pwsh" in comm.commands[0]


def test_missing_pwsh_fails_clearly() -> None:
    comm = FakeCommunicator(
        {re.compile("pwsh"): FakeReply(exit_status=127, stderr="__localbuilder_no_pwsh\n")}, connected=True
    )
    with pytest.raises(StepFailed, match="PowerShell is not installed in this Linux guest") as err:
        customizer_for(_step()).apply(_ctx(comm))
    assert err.value.hint and "Shell step" in err.value.hint


def test_valid_exit_codes_are_honoured() -> None:
    comm = FakeCommunicator({re.compile("pwsh"): FakeReply(exit_status=3, stderr="oops\n")}, connected=True)
    customizer_for(_step(valid_exit_codes=(0, 3))).apply(_ctx(comm))
    with pytest.raises(StepFailed, match="exited with code 3") as err:
        customizer_for(_step()).apply(_ctx(comm))
    assert "oops" in str(err.value)
