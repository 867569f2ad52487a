"""A stand-in for ``python -m localbuilder build TEMPLATE … --json`` in the parallel-build tests.

Invoked as ``fake_build_child.py [--debug|--quiet] build TEMPLATE [options…] --json``. What it does is
read from ``TEMPLATE.behaviour.json`` next to the template:

    {"state": "Succeeded"|"Failed", "exit": 0, "sleep": 0.0, "stderr": ["line", …],
     "message": "…", "json": true, "cleanup_seconds": 0.5, "kill_self": false}

It records its argv, session id, start/end times and the signals it got in ``TEMPLATE.trace.json``,
and on SIGTERM behaves like a build being canceled: a little cleanup, then a Canceled record, exit 130.
SIGINT is recorded too (it must never come: the parent forwards SIGTERM, and the child's own session
keeps a terminal Ctrl-C away from it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

argv = sys.argv[1:]
template = Path(argv[argv.index("build") + 1])
behaviour: dict[str, Any] = json.loads(template.with_suffix(".behaviour.json").read_text())
trace_file = template.with_suffix(".trace.json")
trace: dict[str, Any] = {"argv": argv, "sid": os.getsid(0), "pid": os.getpid(), "start": time.time(),
                         "signals": []}  # fmt: skip


def save() -> None:
    tmp = trace_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(trace))
    os.replace(tmp, trace_file)


def record(state: str, message: str) -> dict[str, Any]:
    outputs = []
    if state == "Succeeded":
        outputs = [{"name": template.stem, "type": "VHD", "provisioningState": "Succeeded",
                    "artifactUri": (template.parent / f"{template.stem}.vhd").as_uri()}]  # fmt: skip
    return {"runId": f"run-{template.stem}", "templateName": template.stem, "templateFile": str(template),
            "lastRunStatus": {"runState": state, "message": message}, "runOutputs": outputs}  # fmt: skip


def on_signal(signum: int, frame: object) -> None:
    trace["signals"].append(signal.Signals(signum).name)
    save()
    if signum != signal.SIGTERM:
        return
    print("canceling: powering the guest down", file=sys.stderr, flush=True)
    time.sleep(float(behaviour.get("cleanup_seconds", 0.5)))
    trace["cleaned"] = True
    trace["end"] = time.time()
    save()
    print(json.dumps(record("Canceled", "the build was canceled; nothing was left running")))
    sys.exit(130)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
save()
for line in behaviour.get("stderr", []):
    print(line, file=sys.stderr, flush=True)
if behaviour.get("kill_self"):
    os.kill(os.getpid(), signal.SIGKILL)
deadline = time.monotonic() + float(behaviour.get("sleep", 0))
while time.monotonic() < deadline:
    time.sleep(0.05)
trace["end"] = time.time()
save()
if behaviour.get("json", True):
    print(json.dumps(record(behaviour.get("state", "Succeeded"), behaviour.get("message", ""))))
sys.exit(int(behaviour.get("exit", 0)))
