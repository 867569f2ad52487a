"""In-memory backend for unit tests: records every spec and plays a scripted guest.

Like httpx's MockTransport, it ships with the library so that orchestration code (build, session)
can be tested without qemu: ``FakeHypervisor(script=...)`` decides how each guest behaves.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from localbuilder.errors import BackendError
from localbuilder.hypervisor.spec import GuestSpec


@dataclasses.dataclass
class FakeBehaviour:
    """How a fake guest behaves. Mutable on purpose: a test can change it while the guest "runs"."""

    clean_shutdown: bool = True  # does an ACPI power-down power it off?
    powers_off_by_itself: bool = False  # wait_shutdown() succeeds (a guest-initiated power-off)
    start_error: str | None = None  # start() raises BackendError with this message


class FakeGuest:
    def __init__(self, spec: GuestSpec, behaviour: FakeBehaviour) -> None:
        self.spec = spec
        self.behaviour = behaviour
        self.running = True
        self.resets = 0
        self.calls: list[str] = []  # "shutdown", "destroy", "wait_shutdown" in call order
        self._lock = threading.Lock()

    # Test-side controls
    def simulate_reset(self) -> None:
        with self._lock:
            self.resets += 1

    def simulate_poweroff(self) -> None:
        with self._lock:
            self.running = False

    # Guest protocol
    def is_running(self) -> bool:
        return self.running

    def reset_count(self) -> int:
        return self.resets

    def wait_shutdown(self, timeout: float) -> bool:
        self.calls.append("wait_shutdown")
        if self.running and self.behaviour.powers_off_by_itself:
            self.running = False
        return not self.running

    def shutdown(self, timeout: float) -> bool:
        self.calls.append("shutdown")
        if not self.running:
            return True
        self.running = False
        return self.behaviour.clean_shutdown

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.running = False


class FakeHypervisor:
    name = "fake"

    def __init__(self, script: Callable[[GuestSpec], FakeBehaviour] | None = None) -> None:
        self.script = script or (lambda spec: FakeBehaviour())
        self.specs: list[GuestSpec] = []
        self.guests: list[FakeGuest] = []

    def start(self, spec: GuestSpec) -> FakeGuest:
        self.specs.append(spec)
        behaviour = self.script(spec)
        if behaviour.start_error is not None:
            raise BackendError(behaviour.start_error, hint="(fake backend)")
        guest = FakeGuest(spec, behaviour)
        self.guests.append(guest)
        return guest
