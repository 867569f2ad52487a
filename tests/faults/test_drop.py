"""A dropped SSH connection without a guest reset fails the step quickly; a reboot still waits.

``StepContext.wait_for_reboot`` used to wait the whole bound (20 min) for a reset after any drop. It now
probes the guest: SSH answering from a system that is not going down means "dropped, not rebooting".
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from localbuilder import customizers
from localbuilder.communicator.fake import FakeCommunicator, FakeReply
from localbuilder.customizers import StepContext
from localbuilder.errors import CommunicatorTimeout, CustomizerError
from localbuilder.hypervisor.fake import FakeBehaviour, FakeGuest
from localbuilder.hypervisor.spec import GuestSpec
from localbuilder.template.model import OsType

PROBE = re.compile(r"is-system-running")


@pytest.fixture(autouse=True)
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(customizers, "DROP_PROBE_AFTER", 0.05)


def context(comm: FakeCommunicator, guest: FakeGuest, os: OsType = OsType.linux) -> StepContext:
    return StepContext(index=0, comm=comm, os=os, build_user="packer", deadline=time.monotonic() + 60,
                       guest=guest)  # fmt: skip


def fake_guest(tmp_path: Path) -> FakeGuest:
    return FakeGuest(GuestSpec(name="lb-fake", disk=tmp_path / "d.qcow2", workdir=tmp_path), FakeBehaviour())


def reset_later(guest: FakeGuest, seconds: float) -> threading.Thread:
    t = threading.Timer(seconds, guest.simulate_reset)
    t.start()
    return t


def test_guest_still_up_means_the_connection_dropped(tmp_path: Path) -> None:
    comm = FakeCommunicator({PROBE: FakeReply(stdout="running\n")})
    start = time.monotonic()
    with pytest.raises(CustomizerError, match="SSH connection dropped while the step was running") as info:
        context(comm, fake_guest(tmp_path)).wait_for_reboot(0)
    assert time.monotonic() - start < 5
    assert "--on-error abort" in (info.value.hint or "")
    assert comm.reconnects == 1


@pytest.mark.parametrize("state", ["stopping", "running,shutdown-job", "unknown", "offline", ""])
def test_a_guest_going_down_is_waited_for(tmp_path: Path, state: str) -> None:
    comm = FakeCommunicator({PROBE: FakeReply(stdout=state + "\n")}, strict=True)
    guest = fake_guest(tmp_path)
    timer = reset_later(guest, 0.5)
    context(comm, guest).wait_for_reboot(0)
    timer.join()
    assert guest.reset_count() == 1
    assert comm.reconnects >= 2  # the probes, then the reconnect after the reset


def test_a_guest_refusing_ssh_is_waited_for(tmp_path: Path) -> None:
    refusals = [CommunicatorTimeout("no banner") for _ in range(1000)]
    comm = FakeCommunicator(wait_ready_errors=refusals)
    guest = fake_guest(tmp_path)
    timer = reset_later(guest, 0.5)
    with pytest.raises(CommunicatorTimeout):
        # The reconnect after the reset meets the same (scripted) refusal: what matters is that the
        # probes kept waiting for the reset instead of declaring a drop.
        context(comm, guest).wait_for_reboot(0)
    timer.join()
    assert guest.reset_count() == 1
    assert not any(PROBE.search(c) for c in comm.commands)


def test_windows_guests_are_not_probed(tmp_path: Path) -> None:
    comm = FakeCommunicator({PROBE: FakeReply(stdout="running\n")})
    guest = fake_guest(tmp_path)
    timer = reset_later(guest, 0.3)
    context(comm, guest, OsType.windows).wait_for_reboot(0)
    timer.join()
    assert comm.commands == [] and comm.reconnects == 1
