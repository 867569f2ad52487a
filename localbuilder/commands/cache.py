"""``localbuilder cache list|prune``: the customizer checkpoints kept between builds."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence

from localbuilder import checkpoints, pins
from localbuilder.errors import UsageError

log = logging.getLogger("localbuilder.commands.cache")

NAME = "cache"
HELP = "list and prune the checkpoints that make rebuilds incremental"
DESCRIPTION = (
    "Every build keeps a checkpoint of the booted guest and of the guest after each successful customizer "
    "(disk layer, and memory on the direct QEMU backend) so that the next build of the same or an edited "
    "template continues from the longest unchanged prefix. 'list' shows them; 'prune' removes the least "
    "recently used ones beyond --max-size (whole chains, never one a running build uses, nor one pinned by a "
    "failed run that kept its guest or can be resumed with --resume). Builds prune "
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
    pr.add_argument("--force", action="store_true",
                    help="remove pinned checkpoints too: first stop the guests that failed runs kept "
                    "(--on-error abort) on them; those runs can then no longer be resumed from them")
    pr.add_argument("--json", action="store_true", help="print what was removed as JSON")


def _size(n: int) -> str:
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _as_dict(entry: checkpoints.Entry, size: int, holders: list[pins.ActivePin]) -> dict[str, object]:
    return {
        "key": entry.key, "parent": entry.meta.parent, "depth": entry.meta.depth, "after": entry.meta.title,
        "template": entry.meta.template, "runId": entry.meta.run_id, "created": entry.meta.created,
        "lastUsed": _when(entry.last_used), "live": entry.meta.live is not None, "bytes": size,
        "path": str(entry.path),
        "pinnedBy": [{"runId": ap.run_id, "runDir": ap.pin.run_dir, "kind": ap.kind, "reason": ap.reason()}
                     for ap in holders],
    }  # fmt: skip


def _staging_dict(staged: checkpoints.StagingDir, size: int) -> dict[str, object]:
    return {
        "path": str(staged.path), "key": staged.key_prefix, "ownerPid": staged.pid,
        "ownerAlive": staged.owner_alive(), "bytes": size, "modified": _when(staged.modified),
    }  # fmt: skip


def _owner(staged: checkpoints.StagingDir) -> str:
    alive = staged.owner_alive()
    if alive is None:
        return "owner unknown (removed after an hour)"
    return f"pid {staged.pid} ({'writing' if alive else 'dead: removed by the next prune'})"


def _print_table(table: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _list(args: argparse.Namespace, cache: checkpoints.CheckpointCache) -> int:
    entries = sorted(cache.entries(), key=lambda e: (-e.last_used, e.meta.depth))
    rows = [(e, e.size()) for e in entries]
    pinned = pins.pinned_keys(pins.load(cache.root, [e.key for e in entries]),
                              {e.key: e.meta.parent for e in entries})
    staging = [(s, s.size()) for s in cache.staging_dirs()]
    if args.json:
        print(json.dumps({
            "checkpoints": [_as_dict(e, size, pinned.get(e.key, [])) for e, size in rows],
            "staging": [_staging_dict(s, size) for s, size in staging],
        }, indent=2))  # fmt: skip
        return 0
    if not rows and not staging:
        print(f"no checkpoints in {cache.root}")
        return 0
    if rows:
        header = ("KEY", "TEMPLATE", "AFTER", "KIND", "SIZE", "LAST USED", "PINNED BY")
        _print_table([header] + [
            (e.key[:12], e.meta.template, e.meta.title, "live" if e.meta.live else "disk", _size(size),
             _when(e.last_used), ", ".join(f"{ap.run_id} ({ap.kind})" for ap in pinned.get(e.key, [])))
            for e, size in rows
        ])  # fmt: skip
    if staging:
        print("being written (staging directories):")
        _print_table([("DIRECTORY", "SIZE", "OWNER")] + [
            (s.path.name, _size(size), _owner(s)) for s, size in staging
        ])  # fmt: skip
    total = sum(size for _, size in rows)
    line = f"{len(rows)} checkpoints, {_size(total)} in {cache.root}"
    if pinned:
        line += f"; {sum(1 for e, _ in rows if e.key in pinned)} pinned"
    if staging:
        line += f"; {len(staging)} being written ({_size(sum(size for _, size in staging))})"
    print(line)
    return 0


def _prune(args: argparse.Namespace, cache: checkpoints.CheckpointCache) -> int:
    limit = checkpoints.default_max_size()
    if args.max_size is not None:
        limit = checkpoints.parse_size(args.max_size)
    result = cache.prune(limit, everything=args.all, force=args.force)
    if args.json:
        print(json.dumps({
            "removed": [e.key for e in result.removed], "kept": [e.key for e in result.kept],
            "inUse": [e.key for e in result.in_use],
            "pinned": [{"key": e.key, "reason": why} for e, why in result.pinned],
            "stoppedGuests": list(result.stopped), "freedBytes": result.freed,
        }, indent=2))  # fmt: skip
        return 0
    for line in result.stopped:
        print(line)
    for e in result.removed:
        print(f"removed {e.key[:12]}  {e.meta.template}: after {e.meta.title}")
    for e in result.in_use:
        print(f"kept    {e.key[:12]}  in use by a running build (or needed by one)", file=sys.stderr)
    # One line per pinning reason, not per entry: a chain is pinned as a whole.
    reasons: dict[str, list[checkpoints.Entry]] = {}
    for e, why in result.pinned:
        reasons.setdefault(why, []).append(e)
    for why, held in reasons.items():
        keys = " ".join(e.key[:12] for e in sorted(held, key=lambda e: e.meta.depth))
        print(f"kept    {keys}  pinned: {why}", file=sys.stderr)
    if reasons:
        print("        ('cache prune --force' stops the kept guests and removes pinned checkpoints too)",
              file=sys.stderr)
    kept = len(result.kept) + len(result.in_use) + len(result.pinned)
    print(f"removed {len(result.removed)} checkpoints ({_size(result.freed)}); {kept} kept")
    return 0


def run(args: argparse.Namespace) -> int:
    cache = checkpoints.CheckpointCache()
    if args.cache_command == "list":
        return _list(args, cache)
    if args.cache_command == "prune":
        return _prune(args, cache)
    raise UsageError("localbuilder cache needs a command",
                     hint="Use 'localbuilder cache list' or 'localbuilder cache prune'.")
