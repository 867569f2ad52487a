"""`localbuilder show-runs [TEMPLATE]`: the runs kept under the localbuilder home, newest last."""

from __future__ import annotations

import argparse
import datetime as dt
import json

from localbuilder.log import format_duration
from localbuilder.recovery import recover_and_warn
from localbuilder.state import iter_runs, reconcile

NAME = "show-runs"
HELP = "list build runs with their lastRunStatus and runOutputs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("template", nargs="?", help="only the runs of this template name")
    parser.add_argument("--json", action="store_true", help="print the state.json records as a JSON list")


def _duration(start: str, end: str | None) -> str:
    try:
        t0 = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        t1 = dt.datetime.fromisoformat(end.replace("Z", "+00:00")) if end else dt.datetime.now(dt.UTC)
    except ValueError:
        return "?"
    return format_duration((t1 - t0).total_seconds())


def run(args: argparse.Namespace) -> int:
    recover_and_warn()  # builds that were killed: stop their guests, mark their runs
    records = [(r, reconcile(r)) for r in iter_runs(args.template)]
    if args.json:
        print(json.dumps([rec.as_dict() | {"runDir": str(r.path)} for r, rec in records], indent=2))
        return 0
    if not records:
        print("no runs" + (f" of {args.template}" if args.template else ""))
        return 0
    rows = [("RUN", "TEMPLATE", "STATE", "SUBSTATE", "STARTED", "DURATION", "OUTPUTS")]
    for _, rec in records:
        st = rec.last_run_status
        outputs = ", ".join(f"{o.name}:{o.provisioning_state}" for o in rec.run_outputs) or "-"
        rows.append((rec.run_id, rec.template_name, str(st.run_state), str(st.run_sub_state),
                     st.start_time, _duration(st.start_time, st.end_time), outputs))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    for _, rec in records[-1:]:
        if rec.last_run_status.message:
            first = rec.last_run_status.message.splitlines()[0]
            print(f"\nlast run {rec.run_id}: {first}")
    return 0
