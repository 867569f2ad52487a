"""``localbuilder cache list|prune`` on a cache made of real entry directories (no VM)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from localbuilder.__main__ import main
from localbuilder.checkpoints import CheckpointCache, Holder
from tests.build.test_checkpoints import k, make_entry


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def filled() -> CheckpointCache:
    cache = CheckpointCache()
    for key, parent, depth in ((1, None, 0), (2, 1, 1), (3, None, 0)):
        make_entry(cache, k(key), k(parent) if parent else None, depth, size=64 * 1024)
    now = time.time()
    for key, ago in ((1, 600), (2, 600), (3, 5)):  # one chain (1→2) used together, then 3
        os.utime(cache.root / k(key) / "lock", (now - ago, now - ago))
    return cache


def test_list_shows_newest_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "list"]) == 0
    assert "no checkpoints" in capsys.readouterr().out
    filled()
    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["KEY", "TEMPLATE", "AFTER"]
    assert [line.split()[0] for line in lines[1:4]] == [k(3)[:12], k(1)[:12], k(2)[:12]]
    assert lines[-1].startswith("3 checkpoints")
    assert main(["cache", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["checkpoints"]
    assert [d["key"] for d in data] == [k(3), k(1), k(2)] and data[2]["parent"] == k(1)
    assert data[0]["pinnedBy"] == []


def test_prune_to_a_size_keeps_the_newest_and_spares_held_entries(capsys: pytest.CaptureFixture[str]) -> None:
    cache = filled()
    one = max(e.size() for e in cache.entries())
    assert main(["cache", "prune", "--max-size", str(one), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kept"] == [k(3)] and sorted(out["removed"]) == [k(1), k(2)] and out["freedBytes"] > 0

    make_entry(cache, k(4), k(3), 1)
    holder = Holder()
    entry = cache.get(k(4))
    assert entry is not None and holder.hold(entry) and holder.hold(cache.get(k(3)))  # type: ignore[arg-type]
    assert main(["cache", "prune", "--all"]) == 0
    captured = capsys.readouterr()
    assert "removed 0 checkpoints" in captured.out and "in use" in captured.err
    holder.close()
    assert main(["cache", "prune", "--all"]) == 0
    assert CheckpointCache().entries() == []


def test_bad_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "prune", "--max-size", "huge"]) == 2
    err = capsys.readouterr().err
    assert "'huge' is not a size" in err and "20G" in err


def test_env_default_bounds_prune(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    filled()
    monkeypatch.setenv("LOCALBUILDER_CACHE_MAX_SIZE", "0")
    assert main(["cache", "prune"]) == 0
    assert "removed 3 checkpoints" in capsys.readouterr().out
    assert not os.listdir(CheckpointCache().root)
