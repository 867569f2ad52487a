"""Fixtures for the communicator tests: keys, the in-process SSH server, a connected SSHCommunicator."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from localbuilder import keys
from localbuilder.communicator.ssh import SSHCommunicator
from tests.communicator.sshserver import SSHTestServer


def _pkey(pair: keys.KeyPair) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh.decode()))


@pytest.fixture(autouse=True)
def no_leaks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test must leave no thread behind and no paramiko warning/traceback on the client side.

    (Leaked sockets are caught by ResourceWarning, which filterwarnings=error turns into a failure.)
    """
    caplog.set_level(logging.DEBUG)
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        # tqdm's monitor thread (started by the session's progress bar) lives for the whole process.
        extra = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and t.name != "tqdm_monitor"
        ]
        if not extra:
            break
        time.sleep(0.05)
    assert not extra, f"threads left running: {extra}"
    noisy = [r for r in caplog.records if r.name.startswith("paramiko") and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


@pytest.fixture(scope="session")
def host_pair() -> keys.KeyPair:
    return keys.generate_ed25519("test-host")


@pytest.fixture(scope="session")
def client_pair() -> keys.KeyPair:
    return keys.generate_ed25519("test-client")


@pytest.fixture
def key_file(tmp_path: Path, client_pair: keys.KeyPair) -> Path:
    return keys.write_private_key(tmp_path / "keys" / "id_ed25519", client_pair)


@pytest.fixture
def server(tmp_path: Path, host_pair: keys.KeyPair, client_pair: keys.KeyPair) -> Iterator[SSHTestServer]:
    root = tmp_path / "guest"
    (root / "tmp").mkdir(parents=True)
    srv = SSHTestServer(root, _pkey(host_pair), [_pkey(client_pair)])
    yield srv
    srv.stop()


MakeComm = Callable[..., SSHCommunicator]


@pytest.fixture
def make_comm(key_file: Path, host_pair: keys.KeyPair, server: SSHTestServer) -> Iterator[MakeComm]:
    """make_comm(port=None, host_keys=None, **options): an unconnected SSHCommunicator, closed at teardown."""
    made: list[SSHCommunicator] = []

    def make(
        port: int | None = None, host_keys: list[str] | None = None, **options: object
    ) -> SSHCommunicator:
        options.setdefault("poll_interval", 0.1)
        comm = SSHCommunicator(
            "127.0.0.1",
            server.port if port is None else port,
            "builder",
            key_file,
            [host_pair.public_line] if host_keys is None else host_keys,
            **options,  # type: ignore[arg-type]
        )
        made.append(comm)
        return comm

    yield make
    for comm in made:
        comm.close()


@pytest.fixture
def comm(make_comm: MakeComm) -> SSHCommunicator:
    c = make_comm()
    c.wait_ready(10)
    return c
