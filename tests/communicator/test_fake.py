"""FakeCommunicator: the scripted guest used by the orchestrator's unit tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localbuilder.communicator import Communicator
from localbuilder.communicator.fake import FakeCall, FakeCommunicator, FakeReply
from localbuilder.communicator.output import TAIL_LINES
from localbuilder.errors import CommunicatorError, CommunicatorTimeout, Disconnected


def test_it_is_a_communicator() -> None:
    comm: Communicator = FakeCommunicator()
    assert comm is not None


def test_must_be_connected_first() -> None:
    comm = FakeCommunicator()
    with pytest.raises(CommunicatorError, match="not connected") as info:
        comm.run("true")
    assert not isinstance(info.value, Disconnected)
    comm.wait_ready(10)
    assert comm.run("true").ok


def test_exact_and_pattern_rules_in_order_with_streaming() -> None:
    comm = FakeCommunicator(
        {
            "uname -r": "6.1.0-13-amd64",
            re.compile(r"^apt-get"): FakeReply(exit_status=100, stdout="E: no\n", stderr="boom\nagain"),
            re.compile(r"apt"): 7,  # never reached for apt-get: the first matching rule wins
        },
        connected=True,
    )
    assert comm.run("uname -r").stdout_tail == "6.1.0-13-amd64"
    seen: list[tuple[str, str]] = []
    result = comm.run("apt-get install -y nginx", on_output=lambda s, line: seen.append((s, line)))
    assert result.exit_status == 100 and not result.ok
    assert seen == [("stdout", "E: no"), ("stderr", "boom"), ("stderr", "again")]
    assert result.stderr_tail == "boom\nagain"
    assert comm.run("aptitude").exit_status == 7
    assert comm.run("uname -r -v").ok  # not an exact match: the default reply
    assert comm.commands == ["uname -r", "apt-get install -y nginx", "aptitude", "uname -r -v"]


def test_reply_lists_are_used_in_turn_and_the_last_repeats() -> None:
    comm = FakeCommunicator({"check": [1, 1, FakeReply(stdout="ok")]}, connected=True)
    assert [comm.run("check").exit_status for _ in range(4)] == [1, 1, 0, 0]


def test_callable_replies_see_the_call() -> None:
    def handler(call: FakeCall) -> FakeReply:
        return FakeReply(stdout=f"{len(call.stdin or b'')} bytes, timeout {call.timeout}")

    comm = FakeCommunicator({re.compile("^cat"): handler}, connected=True)
    assert comm.run("cat", stdin=b"abc", timeout=5).stdout_tail == "3 bytes, timeout 5"
    assert comm.calls[0] == FakeCall(command="cat", stdin=b"abc", timeout=5)


def test_strict_mode_fails_on_unexpected_commands() -> None:
    comm = FakeCommunicator({"a": 0}, strict=True, connected=True)
    with pytest.raises(AssertionError, match="no reply for 'rm -rf /'.*known: 'a'"):
        comm.run("rm -rf /")


def test_scripted_reboot_disconnects_until_reconnect() -> None:
    comm = FakeCommunicator({re.compile("reboot"): FakeReply(stdout="going down", disconnect=True)})
    comm.wait_ready(60)
    seen: list[str] = []
    with pytest.raises(Disconnected, match="going down"):
        comm.run("sudo reboot", on_output=lambda s, line: seen.append(line))
    assert seen == ["going down"]
    with pytest.raises(Disconnected):
        comm.run("echo still there?")
    comm.reconnect(300)
    assert comm.run("uptime").ok
    assert comm.events == [
        "wait_ready: 60",
        "run: sudo reboot",
        "reconnect: 300",
        "wait_ready: 300",
        "run: uptime",
    ]
    assert comm.reconnects == 1


def test_scripted_hang_is_a_timeout() -> None:
    comm = FakeCommunicator({"sleep infinity": FakeReply(stdout="started", hang=True)}, connected=True)
    with pytest.raises(CommunicatorTimeout, match="within 30 s") as info:
        comm.run("sleep infinity", timeout=30)
    assert "started" in str(info.value)


def test_wait_ready_errors_are_raised_in_turn() -> None:
    comm = FakeCommunicator(wait_ready_errors=[CommunicatorTimeout("no SSH")])
    with pytest.raises(CommunicatorTimeout):
        comm.wait_ready(1)
    comm.wait_ready(1)
    assert comm.connected


def test_files_upload_and_download(tmp_path: Path) -> None:
    comm = FakeCommunicator(files={"/var/log/cloud-init.log": b"log"}, connected=True)
    src = tmp_path / "s.sh"
    src.write_bytes(b"#!/bin/sh\n")
    comm.upload(src, "/tmp/s.sh", mode=0o755)
    assert comm.files["/tmp/s.sh"] == b"#!/bin/sh\n" and comm.modes["/tmp/s.sh"] == 0o755
    assert comm.uploads[0].dst == "/tmp/s.sh" and comm.uploads[0].mode == 0o755
    comm.download("/var/log/cloud-init.log", tmp_path / "out" / "ci.log")
    assert (tmp_path / "out" / "ci.log").read_bytes() == b"log"
    with pytest.raises(CommunicatorError, match="no such file"):
        comm.download("/nope", tmp_path / "x")
    with pytest.raises(CommunicatorError, match="cannot read"):
        comm.upload(tmp_path / "missing", "/tmp/x")


def test_output_tail_is_bounded_like_the_real_one() -> None:
    comm = FakeCommunicator({"flood": "\n".join(str(i) for i in range(1000))}, connected=True)
    tail = comm.run("flood").stdout_tail.splitlines()
    assert len(tail) == TAIL_LINES and tail[-1] == "999"


def test_bad_reply_values_are_rejected() -> None:
    comm = FakeCommunicator({"x": True}, connected=True)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cannot be a bool"):
        comm.run("x")
