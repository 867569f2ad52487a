"""Helpers for the Windows tests: a Guest view of the modelled guest, a connected communicator."""

from __future__ import annotations

import time
from typing import Any

from localbuilder.communicator.winrm import WinRMCommunicator
from localbuilder.hypervisor import GuestSpec
from tests.windows.guest_model import WindowsGuest
from tests.windows.wsman_server import WSManServer

PASSWORD = "Secret-Pa55word!"
USER = "lbuild"


class ServerGuest:
    """The hypervisor's view of the modelled guest: resets and power state come from the server."""

    def __init__(self, server: WSManServer, model: WindowsGuest, spec: GuestSpec) -> None:
        self.server = server
        self.model = model
        self.spec = spec

    def is_running(self) -> bool:
        return not self.model.powered_off

    def reset_count(self) -> int:
        return self.server.resets

    def wait_shutdown(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.model.powered_off and self.server.down.is_set():
                return True
            time.sleep(0.02)
        return False

    def shutdown(self, timeout: float) -> bool:
        self.model.powered_off = True
        return True

    def destroy(self) -> None:
        self.model.powered_off = True


def connect(srv: WSManServer, **kwargs: Any) -> WinRMCommunicator:
    kwargs.setdefault("transport", srv.auth)
    kwargs.setdefault("https", srv.https)
    if srv.https and "insecure_self_signed" not in kwargs:
        kwargs.setdefault("cert_fingerprint", srv.fingerprint)
    kwargs.setdefault("poll_interval", 0.05)
    user, password = kwargs.pop("user", USER), kwargs.pop("password", PASSWORD)
    return WinRMCommunicator("127.0.0.1", srv.port, user, password, **kwargs)


def server_guest(srv: WSManServer, model: WindowsGuest, tmp_path: Any) -> ServerGuest:
    return ServerGuest(srv, model, GuestSpec(name="win", disk=tmp_path / "d.qcow2", workdir=tmp_path))
