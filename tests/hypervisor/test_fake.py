"""The fake backend behaves like the Guest protocol says (used by build/session unit tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbuilder.errors import BackendError
from localbuilder.hypervisor import Guest, GuestSpec
from localbuilder.hypervisor.backends import get_backend
from localbuilder.hypervisor.fake import FakeBehaviour, FakeHypervisor


def spec(name: str = "g") -> GuestSpec:
    return GuestSpec(name=name, disk=Path("/x.qcow2"), workdir=Path("/w"))


def test_records_and_scripts() -> None:
    hv = get_backend("fake", script=lambda s: FakeBehaviour(clean_shutdown=s.name != "stubborn"))
    assert isinstance(hv, FakeHypervisor)
    a, b = hv.start(spec("a")), hv.start(spec("stubborn"))
    assert isinstance(a, Guest) and [s.name for s in hv.specs] == ["a", "stubborn"]
    a.simulate_reset()
    a.simulate_reset()
    assert a.reset_count() == 2
    assert a.wait_shutdown(1) is False
    a.simulate_poweroff()
    assert a.wait_shutdown(1) is True and not a.is_running()
    assert b.shutdown(1) is False and not b.is_running()
    b.destroy()
    assert b.calls == ["shutdown", "destroy"]


def test_start_error() -> None:
    hv = FakeHypervisor(script=lambda s: FakeBehaviour(start_error="disk is broken"))
    with pytest.raises(BackendError, match="disk is broken"):
        hv.start(spec())
    assert len(hv.specs) == 1 and hv.guests == []
