"""``localbuilder validate`` of all 40 corpus templates in one call, the way a user runs it.

Runs ``python -m localbuilder validate --json <40 files>`` as a subprocess several times and reports the
wall-clock times (target: < 2 s for the whole corpus), plus the in-process time of load + validate alone,
which separates interpreter start-up and imports from the validation work.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from localbuilder.template import parse_template
from localbuilder.template.load import load_documents

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "aib-templates"
RUNS = 5
TARGET_SECONDS = 2.0


def main() -> dict[str, Any]:
    files = sorted(str(p) for p in CORPUS.glob("*.json"))
    if not files:
        raise SystemExit(f"no corpus at {CORPUS}")
    cmd = [sys.executable, "-m", "localbuilder", "validate", "--json", *files]
    times = []
    entries: list[dict[str, Any]] = []
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 2):
            raise RuntimeError(f"validate exited {proc.returncode}: {proc.stderr[-2000:]}")
        entries = json.loads(proc.stdout)

    start = time.perf_counter()
    for file in files:
        for loaded in load_documents(Path(file)):
            parse_template(loaded)
    in_process = time.perf_counter() - start

    return {
        "files": len(files),
        "templates": len(entries),
        "buildable": sum(1 for e in entries if e["ok"]),
        "findings": sum(len(e["findings"]) for e in entries),
        "runs": RUNS,
        "seconds_min": round(min(times), 3),
        "seconds_median": round(statistics.median(times), 3),
        "seconds_max": round(max(times), 3),
        "in_process_seconds": round(in_process, 3),
        "target_seconds": TARGET_SECONDS,
        "meets_target": statistics.median(times) < TARGET_SECONDS,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
