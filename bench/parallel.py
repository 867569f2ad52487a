"""Two builds at once vs one build: ``localbuilder build T T --parallel 2`` against ``build T``, on this host.

The bundled example (``examples/debian-hello.json``; override ``LB_BENCH_TEMPLATE``) is built once
alone, then twice in one ``--parallel 2`` command, with the same accelerator (the probe's verdict),
``--no-cache`` both times (the checkpoint cache would otherwise make the later builds replay the first
one's steps instead of running them), and the Debian 12 test image as the source
(``.cache/test-images/READY``, or ``LB_BENCH_SOURCE``). Timed: the wall clock of each whole command.

Reported: ``ratio`` = two-in-parallel / one (1.0 would be perfect scaling, 2.0 no gain over running
them one after the other), the throughput gain ``2 × one / two``, and each build's phase timings, which
show where sharing the cores costs (under TCG: the boot).

Both commands run while this process holds ``/tmp/lb-guest.lock``, so no other guest competes for the
cores — do not wrap the benchmark in ``flock`` on that file: it would wait for itself. Other engineers'
non-guest work still does; the 1-minute load average at each start is recorded next to the numbers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.boot import guest_lock
from bench.packer import _catalog_urn, load_template, source_image
from localbuilder.errors import LocalBuilderError
from localbuilder.hypervisor.probe import resolve_accel
from localbuilder.run import run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE = REPO / "examples" / "debian-hello.json"
TIMEOUT = 45 * 60  # a hang must not hold the guest lock forever


def _build(argv: list[str], env: dict[str, str], log_file: Path) -> tuple[float, Any]:
    load = round(os.getloadavg()[0], 2)
    start = time.monotonic()
    proc = run(argv, check=False, env=env, timeout=TIMEOUT)
    seconds = time.monotonic() - start
    log_file.write_text(proc.stderr)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    records = data if isinstance(data, list) else [data]
    states = [r.get("lastRunStatus", {}).get("runState") if isinstance(r, dict) else None for r in records]
    if proc.returncode != 0 or any(s != "Succeeded" for s in states):
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise LocalBuilderError(f"{' '.join(argv[3:])} failed (exit {proc.returncode}, {states}):\n{tail}")
    print(
        f"[bench parallel] {seconds:.1f} s (load {load}): {' '.join(argv[3:])}", file=sys.stderr, flush=True
    )
    return seconds, {"load_1min_at_start": load, "records": records}


def _phases(record: dict[str, Any]) -> dict[str, float]:
    return {str(p["name"]): float(p["seconds"]) for p in record.get("phases", [])}


def main() -> dict[str, Any]:
    template_file = Path(os.environ.get("LB_BENCH_TEMPLATE", DEFAULT_TEMPLATE)).absolute()
    template = load_template(template_file)
    source, _ = source_image()
    accel = resolve_accel("auto").value
    lb = [sys.executable, "-m", "localbuilder"]
    # A short private home: QMP socket paths must fit in 108 bytes, and the runs stay out of the user's.
    with tempfile.TemporaryDirectory(prefix="lbp-", dir="/tmp") as tmp:
        work = Path(tmp)
        env = {"LOCALBUILDER_HOME": str(work / "h")}
        add = [*lb, "image", "add", str(source), "--urn", _catalog_urn(template), "--os", "linux", "--link"]
        run(add, env=env)
        common = ["--no-cache", "--accel", accel, "--json"]
        with guest_lock():
            one, single = _build([*lb, "build", str(template_file), *common], env, work / "one.log")
            two, double = _build(
                [*lb, "build", str(template_file), str(template_file), "--parallel", "2", *common],
                env,
                work / "two.log",
            )
    ratio = two / one
    phases = {
        "one": _phases(single["records"][0]),
        "parallel_a": _phases(double["records"][0]),
        "parallel_b": _phases(double["records"][1]),
    }
    result: dict[str, Any] = {
        "template": str(
            template_file.relative_to(REPO) if template_file.is_relative_to(REPO) else template_file
        ),
        "accel": accel,
        "cpus": os.cpu_count(),
        "one_build_seconds": round(one, 1),
        "two_parallel_builds_seconds": round(two, 1),
        "ratio_two_parallel_over_one": round(ratio, 2),
        "throughput_gain": round(2 / ratio, 2),
        "load_1min_at_start": {"one": single["load_1min_at_start"], "two": double["load_1min_at_start"]},
        "phases": phases,
    }
    print(
        f"\nparallel builds ({accel}, {os.cpu_count()} cores): one build {one:.1f} s, two in parallel "
        f"{two:.1f} s → ratio {ratio:.2f} (throughput ×{2 / ratio:.2f} vs one after the other)"
    )
    for key, timings in phases.items():
        print(f"  {key:<11} " + ", ".join(f"{name} {sec:.1f}" for name, sec in timings.items()))
    return result
