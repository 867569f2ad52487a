"""`localbuilder logs RUN [--follow]`: a run's customization.log (guest output with timestamps)."""

from __future__ import annotations

import argparse
import sys
import time

from localbuilder.state import find_run, reconcile

NAME = "logs"
HELP = "print a run's customization.log (--follow while it runs; --debug-log for build.log)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_ref", metavar="RUN", help="run id, unique prefix, or TEMPLATE/RUN")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    parser.add_argument("--debug-log", action="store_true", help="print build.log (everything) instead")


def run(args: argparse.Namespace) -> int:
    rundir = find_run(args.run_ref)
    path = rundir.build_log if args.debug_log else rundir.customization_log
    pos = 0
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read()
            # Only whole lines: a half-written line is printed once it is complete.
            cut = chunk.rfind(b"\n") + 1 if args.follow else len(chunk)
            if cut:
                sys.stdout.write(chunk[:cut].decode("utf-8", errors="replace"))
                sys.stdout.flush()
                pos += cut
        if not args.follow:
            break
        if reconcile(rundir).run_state.finished:
            args.follow = False  # one last read picks up what was written before the end
            continue
        time.sleep(0.5)
    if not path.exists():
        print(f"({path} does not exist yet)", file=sys.stderr)
    return 0
