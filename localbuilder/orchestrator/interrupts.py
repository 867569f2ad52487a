"""The build's deadline and cancel requests, as interrupts of the main thread.

``buildTimeoutInMinutes`` bounds the whole run. Every blocking call gets the remaining time as its
timeout, and this watchdog thread interrupts the main thread (SIGUSR1 → BuildTimeout) in case some call
blocks anyway; ``localbuilder cancel`` works the same way (SIGTERM, or a cancel-request file the watchdog
polls). Interrupts fire once: the cleanup that follows (guest power-down) is not interrupted.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from localbuilder.errors import BuildTimeout, Canceled


class Interrupts:
    """Deadline and cancel-request watchdog; raises into the main thread exactly once per cause."""

    def __init__(self, deadline: float, cancel_file: Path) -> None:
        self.deadline = deadline
        self.cancel_file = cancel_file
        self.armed = True
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="build-watchdog", daemon=True)
        self._main = threading.main_thread().ident
        self._in_main = threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if self._in_main:
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        self._stop.set()
        self._thread.join(timeout=2)
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def disarm(self) -> None:
        self.armed = False

    def check(self) -> None:
        """Raise the pending interrupt, if any (also used between steps)."""
        if self.cancel_file.exists():
            self.reason = "cancel"
        if self.reason == "cancel":
            raise Canceled("the build was canceled")
        if time.monotonic() >= self.deadline:
            self.reason = "timeout"
            raise BuildTimeout("buildTimeoutInMinutes expired")

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            self.reason = self.reason or "cancel"
        if not self.armed:
            return  # cleanup in progress: let it finish (the final state records the cancel)
        self.armed = False  # once: what follows is cleanup
        if self.reason == "timeout":
            raise BuildTimeout("buildTimeoutInMinutes expired")
        raise Canceled("the build was canceled")

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            if not self.armed:
                continue
            if self.cancel_file.exists():
                self.reason = "cancel"
            elif time.monotonic() >= self.deadline:
                self.reason = "timeout"
            else:
                continue
            if self._in_main and self._main is not None:
                signal.pthread_kill(self._main, signal.SIGUSR1)
            return
