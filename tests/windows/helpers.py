"""Helpers for the Windows tests: a Guest view of the modelled guest, a connected communicator."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pycdlib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

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


def read_iso(path: Path, name: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
        return out.getvalue()
    finally:
        iso.close()


def server_from_media(spec: GuestSpec, model: WindowsGuest, scratch: Path) -> WSManServer:
    """The "booted guest" of a first-boot ISO: a WS-Man server on the forwarded port, serving the
    certificate from the ISO and accepting the password from the ISO (as windows-setup.ps1 would set up)."""
    assert spec.seed_iso is not None and spec.forwards[0].guest_port == 5986
    config = json.loads(read_iso(spec.seed_iso, "localbuilder-setup.json"))
    key, cert, _ = pkcs12.load_key_and_certificates(
        read_iso(spec.seed_iso, config["pfx"]), config["pfx_password"].encode()
    )
    assert key is not None and cert is not None
    cert_pem, key_pem = scratch / "listener.crt", scratch / "listener.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    model.password = config["password"]
    srv = WSManServer(model, https=True, auth="ntlm", users={config["username"]: config["password"]},
                      port=spec.forwards[0].host_port, cert_files=(cert_pem, key_pem))
    srv.start()
    return srv
