"""Root conftest: loads shared fixtures from tests/fixtures/ and keeps CI honest about skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_FIXTURES = Path(__file__).parent / "fixtures"
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in _FIXTURES.glob("*.py") if not p.name.startswith("_")
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI, a real-guest test must never be skipped: turn its skip into a failure."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("integration") is not None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"integration test skipped in CI (not allowed): {reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules that boot guests first, the fast ones after them, each module's tests kept together.

    pytest-xdist (``--dist loadfile``) hands whole modules to the workers in this order: started early,
    the long real-guest modules run side by side and the quick modules fill the end, instead of one
    worker finishing a five-minute module alone while the other idles.
    """
    heavy = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in heavy)  # stable: order kept within
