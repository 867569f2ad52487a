"""Fixtures for the Windows tests: the WS-Man test server running the guest model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.windows.guest_model import WindowsGuest
from tests.windows.helpers import PASSWORD, USER
from tests.windows.wsman_server import WSManServer


@pytest.fixture
def wsman(tmp_path: Any) -> Iterator[Callable[..., tuple[WSManServer, WindowsGuest]]]:
    servers: list[WSManServer] = []

    def start(model: WindowsGuest | None = None, **kwargs: Any) -> tuple[WSManServer, WindowsGuest]:
        model = model or WindowsGuest(password=PASSWORD)
        kwargs.setdefault("users", {USER: PASSWORD})
        srv = WSManServer(model, **kwargs)
        srv.start()
        servers.append(srv)
        return srv, model

    yield start
    for srv in servers:
        srv.stop()
        assert srv.errors == [], srv.errors
