"""``localbuilder cache list|prune``: the customizer checkpoints kept between builds."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

from localbuilder import checkpoints
from localbuilder.errors import UsageError

log = logging.getLogger("localbuilder.commands.cache")

NAME = "cache"
HELP = "list and prune the checkpoints that make rebuilds incremental"
DESCRIPTION = (
    "Every build keeps a checkpoint of the booted guest and of the guest after each successful customizer "
    "(disk layer, and memory on the direct QEMU backend) so that the next build of the same or an edited "
    "template continues from the longest unchanged prefix. 'list' shows them; 'prune' removes the least "
    "recently used ones beyond --max-size (whole chains, never one a running build uses). Builds prune "
    f"to ${checkpoints.MAX_SIZE_ENV} (default {checkpoints.DEFAULT_MAX_SIZE // 1024**3}G) when they end."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="COMMAND", parser_class=type(parser))
    ls = sub.add_parser("list", help="show the checkpoints, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr = sub.add_parser("prune", help="remove least recently used checkpoints")
    what = pr.add_mutually_exclusive_group()
    what.add_argument("--max-size", metavar="SIZE", default=None,
                      help="keep at most this much, newest first (e.g. 5G, 500M; default: "
                      f"${checkpoints.MAX_SIZE_ENV} or {checkpoints.DEFAULT_MAX_SIZE // 1024**3}G)")
    what.add_argument("--all", action="store_true", help="remove every checkpoint not in use")
    pr.add_argument("--json", action="store_true", help="print what was removed as JSON")


def _size(n: int) -> str:
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _as_dict(entry: checkpoints.Entry, size: int) -> dict[str, object]:
    return {
        "key": entry.key, "parent": entry.meta.parent, "depth": entry.meta.depth, "after": entry.meta.title,
        "template": entry.meta.template, "runId": entry.meta.run_id, "created": entry.meta.created,
        "lastUsed": _when(entry.last_used), "live": entry.meta.live is not None, "bytes": size,
        "path": str(entry.path),
    }  # fmt: skip


def _list(args: argparse.Namespace, cache: checkpoints.CheckpointCache) -> int:
    entries = sorted(cache.entries(), key=lambda e: (-e.last_used, e.meta.depth))
    rows = [(e, e.size()) for e in entries]
    if args.json:
        print(json.dumps([_as_dict(e, size) for e, size in rows], indent=2))
        return 0
    if not rows:
        print(f"no checkpoints in {cache.root}")
        return 0
    header = ("KEY", "TEMPLATE", "AFTER", "KIND", "SIZE", "LAST USED")
    table = [header] + [
        (e.key[:12], e.meta.template, e.meta.title, "live" if e.meta.live else "disk", _size(size),
         _when(e.last_used))
        for e, size in rows
    ]  # fmt: skip
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    total = sum(size for _, size in rows)
    print(f"{len(rows)} checkpoints, {_size(total)} in {cache.root}")
    return 0


def _prune(args: argparse.Namespace, cache: checkpoints.CheckpointCache) -> int:
    limit = checkpoints.default_max_size()
    if args.max_size is not None:
        limit = checkpoints.parse_size(args.max_size)
    result = cache.prune(limit, everything=args.all)
    if args.json:
        print(json.dumps({
            "removed": [e.key for e in result.removed], "kept": [e.key for e in result.kept],
            "inUse": [e.key for e in result.in_use], "freedBytes": result.freed,
        }, indent=2))  # fmt: skip
        return 0
    for e in result.removed:
        print(f"removed {e.key[:12]}  {e.meta.template}: after {e.meta.title}")
    for e in result.in_use:
        print(f"kept    {e.key[:12]}  in use by a running build (or needed by one)", file=sys.stderr)
    print(f"removed {len(result.removed)} checkpoints ({_size(result.freed)}); {len(result.kept)} kept")
    return 0


def run(args: argparse.Namespace) -> int:
    cache = checkpoints.CheckpointCache()
    if args.cache_command == "list":
        return _list(args, cache)
    if args.cache_command == "prune":
        return _prune(args, cache)
    raise UsageError("localbuilder cache needs a command",
                     hint="Use 'localbuilder cache list' or 'localbuilder cache prune'.")
