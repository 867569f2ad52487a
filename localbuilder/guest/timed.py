"""``TimedGuest``: a Guest whose waits for power-off are timed (deprovision's phase table splits the
script's time from the guest's power-off). Used by the Linux and the Windows deprovision alike."""

from __future__ import annotations

import time

from localbuilder.hypervisor import Guest


class TimedGuest:
    """Wraps a Guest to time ``wait_shutdown``: the power-off part of deprovision, for the phase table."""

    def __init__(self, guest: Guest) -> None:
        self._guest = guest
        self.spec = guest.spec
        self.wait_seconds = 0.0

    def is_running(self) -> bool:
        return self._guest.is_running()

    def reset_count(self) -> int:
        return self._guest.reset_count()

    def wait_shutdown(self, timeout: float) -> bool:
        start = time.monotonic()
        try:
            return self._guest.wait_shutdown(timeout)
        finally:
            self.wait_seconds += time.monotonic() - start

    def shutdown(self, timeout: float) -> bool:
        return self._guest.shutdown(timeout)

    def destroy(self) -> None:
        self._guest.destroy()
