"""``--network``: the guest is isolated by default and gets outbound NAT only when asked.

The default (no outbound network, not even to the host) is proven in a real build by
test_isolation_integration.py. Here:
- fast: ``localbuilder build --network`` reaches the guest session as ``NetworkMode.user`` and plain
  ``build`` as ``NetworkMode.restricted`` (the session is replaced by a recorder); the golden qemu argv
  tests (tests/hypervisor) pin what those modes become (``restrict=off`` / ``restrict=on``);
- real: one throw-away guest started with ``localbuilder shell --network`` reaches a TCP server on the
  host at 10.0.2.2 — the documented "local package mirror on the host" case.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder.__main__ import main
from localbuilder.errors import BackendError
from localbuilder.guest import SourceImage
from localbuilder.guest.local import LocalPlatform
from localbuilder.hypervisor.spec import NetworkMode
from localbuilder.template.model import OsType
from tests.build.test_build_integration import URN, home, write_template  # noqa: F401
from tests.security.test_isolation_integration import HostServer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("flag", "mode"), [([], NetworkMode.restricted), (["--network"], NetworkMode.user)])
def test_build_network_flag_reaches_the_guest_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str], mode: NetworkMode
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    seen: list[Any] = []

    def resolve(self: LocalPlatform, source: Any) -> SourceImage:
        return SourceImage(tmp_path / "source.qcow2", "qcow2", OsType.linux, "test source")

    @contextlib.contextmanager
    def recorder(*args: Any, **kwargs: Any) -> Iterator[None]:
        seen.append(kwargs.get("network"))
        raise BackendError("recorded the session request; not booting")
        yield  # pragma: no cover - a generator context manager needs a yield

    monkeypatch.setattr(LocalPlatform, "resolve", resolve)
    monkeypatch.setattr("localbuilder.guest.local.linux_guest", recorder)
    tpl = write_template(tmp_path / "tpl", "net", [{"type": "Shell", "inline": ["true"]}])
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["build", str(tpl), "--accel", "tcg", *flag]) == 1
    assert seen == [mode]


@pytest.mark.integration
def test_shell_with_network_reaches_the_host(home: Path) -> None:  # noqa: F811
    server = HostServer()
    try:
        probe = f"exec 3<>/dev/tcp/10.0.2.2/{server.port} && echo host-reached"
        proc = subprocess.run(
            [sys.executable, "-m", "localbuilder", "shell", URN, "--network", "--", "bash", "-c", probe],
            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "host-reached" in proc.stdout
    assert server.accepted == 1
