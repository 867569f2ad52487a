"""``make bench`` / ``python -m bench [NAME…]``: run the benchmark modules in bench/ and record the results.

A benchmark is any ``bench/<name>.py`` (not starting with ``_``) that defines ``main() -> dict``; its dict
is printed and written to ``bench/results/<name>.json`` together with the time, host and Python version.
One benchmark failing does not stop the others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.name.startswith("_"))


def run_one(name: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "benchmark": name,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            raise RuntimeError(f"bench/{name}.py defines no main()")
        record["result"] = entry()
        record["ok"] = True
    except (Exception, SystemExit) as exc:  # one broken benchmark must not hide the others' numbers
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    record["elapsed_seconds"] = round(time.perf_counter() - start, 3)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {available()})"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available()))
        return 0
    unknown = sorted(set(args.names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available())}")
    RESULTS.mkdir(exist_ok=True)
    failed = 0
    for name in args.names or available():
        print(f"== bench {name}", flush=True)
        record = run_one(name)
        failed += not record["ok"]
        print(json.dumps(record, indent=2), flush=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
