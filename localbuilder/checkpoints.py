"""Customizer checkpoints: the guest's state after each successful step, reused by later builds.

A build of a template is a chain: the booted source image, then one step after another. After the
guest is up and after each customizer succeeds, the build keeps that moment as a *checkpoint*: a qcow2
layer with the disk's changes since the previous checkpoint and, on the direct QEMU backend, the guest's
memory (a live snapshot, FACTS §3e). A later build of the same or an edited template looks its chain up
and continues from the deepest checkpoint it shares — editing customizer 7 of 8 re-runs only 7 and 8,
and a live checkpoint even skips the boot (~2 s instead of ~75 s under TCG).

Keys. ``chain_keys()`` derives one key per point of the chain: key 0 from the source image's identity
and everything that shapes the booted guest (disk size, firmware, network, VM shape, accelerator), and
key i+1 = sha256(key i, customizer i's full definition, the sha256 of every file it fetched). A key
therefore names exactly one history; two builds with the same prefix find the same entries.

Layout: ``<cache>/checkpoints/<key>/`` holds ``disk.qcow2`` (backed by the parent entry's disk, or by the
source image for key 0), optionally ``vmstate`` + ``seed.iso`` + ``build-key`` for a live resume, and
``meta.json``, written last. An entry is created in a ``.tmp-*`` directory beside it and renamed into
place in one step, so a crash never leaves a half-written checkpoint that a build would use. Checkpoints
are never generalized: deprovision always runs in a fresh layer above the last one.

In use: a build holds a shared ``flock`` on the ``lock`` file of every entry of its chain until it
ends; ``prune`` takes an exclusive non-blocking lock before deleting, so it never deletes a layer in use.
The cache holds the build key of live checkpoints (it must, to reach the resumed guest): entries are
0700 directories with 0600 files, under the private cache directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import xxhash

from localbuilder import paths, pins
from localbuilder.errors import CommandError, UsageError
from localbuilder.run import run
from localbuilder.state import ProcessInfo, _start_ticks, write_json_atomic

log = logging.getLogger("localbuilder.checkpoints")

# 2: entries carry a digest of every file and were cut from a quiesced guest (localbuilder.quiesce).
# The format is part of every key, so entries of an older format are never used (prune removes them).
FORMAT = 2
META = "meta.json"
DISK = "disk.qcow2"
STATE = "vmstate"
SEED = "seed.iso"
KEY = "build-key"
LOCK = "lock"
# Default bound of the cache after each build; `localbuilder cache prune --max-size` for more control.
DEFAULT_MAX_SIZE = 20 * 1024**3
MAX_SIZE_ENV = "LOCALBUILDER_CACHE_MAX_SIZE"
STALE_TMP_SECONDS = 3600  # staging dirs without an owner in their name (older versions)
# .tmp-<key[:12]>-<owner pid>-<owner start ticks>-<random>: who is writing it, proof against pid reuse.
_STAGING_RE = re.compile(r"^\.tmp-([0-9a-f]{1,12})-(\d+)-(\d+)-")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
DIGEST_CHUNK = 4 * 1024 * 1024
# A structural check of one disk layer: None when sound, else what is wrong (default: qemu-img check).
LayerCheck = Callable[[Path], "str | None"]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def step_definition(step: Any) -> Any:
    """A customizer as plain data: every field of the frozen model object, recursively."""
    if dataclasses.is_dataclass(step) and not isinstance(step, type):
        return {"__type__": type(step).__name__, **dataclasses.asdict(step)}
    return step


def chain_keys(
    base: Mapping[str, Any], steps: Sequence[Any], digests: Sequence[Mapping[str, str]]
) -> list[str]:
    """Key 0 for the booted source (``base``), then one key after each step.

    ``digests[i]`` maps every URI customizer i fetches to the file's sha256: a changed script behind the
    same URL is a different step.
    """
    if len(digests) != len(steps):
        raise ValueError("one digest mapping per step")
    key = hashlib.sha256(_canonical({"format": FORMAT, "base": dict(base)})).hexdigest()
    keys = [key]
    for step, fetched in zip(steps, digests, strict=True):
        body = {"parent": key, "step": step_definition(step), "fetched": dict(sorted(fetched.items()))}
        key = hashlib.sha256(_canonical(body)).hexdigest()
        keys.append(key)
    return keys


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1.5T``, ``0`` or a byte count → bytes (binary units, like qemu-img)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise UsageError(f"{text!r} is not a size", hint="Use a number with an optional unit: 500M, 20G, 1T.")
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[m.group(2).lower()]
    return int(float(m.group(1)) * factor)


def default_max_size() -> int:
    raw = os.environ.get(MAX_SIZE_ENV)
    return parse_size(raw) if raw else DEFAULT_MAX_SIZE


@dataclasses.dataclass(frozen=True)
class LiveState:
    """A guest frozen by a live checkpoint (``QemuGuest.checkpoint``), ready to resume (FACTS §3e).

    The resumed guest must see the same devices, so it gets the very seed it booted with; and it has
    the same SSH user, build key and host keys as when it was frozen."""

    disk: Path  # the frozen qcow2 layer (never written again; the resumed guest gets an overlay)
    state_file: Path  # RAM + device state
    seed_iso: Path
    key_file: Path
    host_keys: tuple[str, ...]
    user: str


@dataclasses.dataclass(frozen=True)
class LiveMeta:
    """What a live resume needs besides the files: the guest's SSH identity and the exact VM shape."""

    user: str
    host_keys: tuple[str, ...]
    cpus: int
    memory_mib: int
    accel: str
    qemu_version: str

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "hostKeys": list(self.host_keys), "cpus": self.cpus,
                "memoryMiB": self.memory_mib, "accel": self.accel, "qemuVersion": self.qemu_version}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LiveMeta:
        return cls(user=str(d["user"]), host_keys=tuple(str(k) for k in d["hostKeys"]), cpus=int(d["cpus"]),
                   memory_mib=int(d["memoryMiB"]), accel=str(d["accel"]), qemu_version=str(d["qemuVersion"]))


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """Size and xxh3-128 of one file of an entry, taken when the entry is committed.

    xxh3 rather than sha256: it guards against damage (a bit flip, a truncated or half-copied file),
    not against someone who can write the private cache anyway, and it is ~5× faster here
    (400 MB: 0.09-0.14 s against 0.46 s), which keeps verification far below what a checkpoint saves."""

    size: int
    xxh3: str

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "xxh3_128": self.xxh3}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileDigest:
        return cls(size=int(d["size"]), xxh3=str(d["xxh3_128"]))

    @classmethod
    def of(cls, path: Path) -> FileDigest:
        digest = xxhash.xxh3_128()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(DIGEST_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return cls(size=size, xxh3=digest.hexdigest())


@dataclasses.dataclass(frozen=True)
class EntryMeta:
    key: str
    parent: str | None  # None: key 0, backed by the source image
    depth: int  # 0 = the booted source; i+1 = after customize[i]
    title: str  # "booted source" or the customizer's title
    template: str
    run_id: str
    created: str
    backing: str  # the disk's backing file: the parent's disk.qcow2 or the source image
    backing_format: str
    live: LiveMeta | None = None
    files: Mapping[str, FileDigest] = dataclasses.field(default_factory=dict)  # name → size + digest

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "parent": self.parent, "depth": self.depth,
                "title": self.title, "template": self.template, "runId": self.run_id, "created": self.created,
                "backing": self.backing, "backingFormat": self.backing_format,
                "live": self.live.as_dict() if self.live else None,
                "files": {name: d.as_dict() for name, d in sorted(self.files.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EntryMeta:
        return cls(key=str(d["key"]), parent=d.get("parent"), depth=int(d["depth"]), title=str(d["title"]),
                   template=str(d.get("template", "")), run_id=str(d.get("runId", "")),
                   created=str(d.get("created", "")), backing=str(d["backing"]),
                   backing_format=str(d.get("backingFormat", "qcow2")),
                   live=LiveMeta.from_dict(d["live"]) if d.get("live") else None,
                   files={str(k): FileDigest.from_dict(v) for k, v in (d.get("files") or {}).items()})


@dataclasses.dataclass(frozen=True)
class Entry:
    path: Path
    meta: EntryMeta

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def disk(self) -> Path:
        return self.path / DISK

    @property
    def last_used(self) -> float:
        try:
            return (self.path / LOCK).stat().st_mtime
        except OSError:
            return 0.0

    def size(self) -> int:
        """Bytes on disk (allocated blocks: qcow2 layers and memory states are sparse-friendly)."""
        total = 0
        with contextlib.suppress(OSError):  # removed meanwhile (another prune): counts as empty
            for f in list(self.path.iterdir()):
                with contextlib.suppress(OSError):
                    total += f.stat().st_blocks * 512
        return total

    def live_state(self) -> LiveState | None:
        live = self.meta.live
        if live is None or not all((self.path / n).is_file() for n in (STATE, SEED, KEY)):
            return None
        return LiveState(disk=self.disk, state_file=self.path / STATE, seed_iso=self.path / SEED,
                         key_file=self.path / KEY, host_keys=live.host_keys, user=live.user)


@dataclasses.dataclass(frozen=True)
class PruneResult:
    removed: tuple[Entry, ...]
    kept: tuple[Entry, ...]
    in_use: tuple[Entry, ...]  # would have been removed, but a build holds them
    freed: int
    pinned: tuple[tuple[Entry, str], ...] = ()  # would have been removed, but a run needs them (why)
    stopped: tuple[str, ...] = ()  # kept guests stopped by force=True


@dataclasses.dataclass(frozen=True)
class StagingDir:
    """A ``.tmp-*`` directory an entry is being written in, and the process writing it."""

    path: Path
    key_prefix: str
    pid: int | None  # None: a staging dir of an older version (no owner in its name)
    start_ticks: int | None

    @classmethod
    def parse(cls, path: Path) -> StagingDir:
        m = _STAGING_RE.match(path.name)
        if m is None:
            return cls(path, path.name[len(".tmp-"):].split("-", 1)[0], None, None)
        ticks = int(m.group(3))
        return cls(path, m.group(1), int(m.group(2)), ticks or None)

    def owner_alive(self) -> bool | None:
        """True/False; None when the owner is unknown."""
        if self.pid is None:
            return None
        # The cache is local: the owner is a process of this host.
        return ProcessInfo(self.pid, socket.gethostname(), self.start_ticks).is_alive() is not False

    def size(self) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for f in list(self.path.rglob("*")):
                with contextlib.suppress(OSError):
                    total += f.lstat().st_blocks * 512
        return total

    @property
    def modified(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0


def _make_private(path: Path) -> None:
    """0700 for the directory, 0600 for every file in it, whatever the umask of whoever wrote them
    (qemu-img and qemu create files 0644 under the usual umask 022)."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
        for f in path.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o600)


class Holder:
    """Shared locks on the entries a build uses; released by ``close()`` (or when the process dies)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._paths: dict[str, Path] = {}

    def hold(self, entry: Entry) -> bool:
        """Lock ``entry`` shared; False when it vanished (pruned) before the lock was taken."""
        if entry.key in self._fds:
            return True
        try:
            fd = os.open(entry.path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not (entry.path / META).is_file():  # deleted while we waited for the lock
            os.close(fd)
            return False
        self._fds[entry.key] = fd
        self._paths[entry.key] = entry.path
        os.utime(entry.path / LOCK)  # last used: what prune orders by
        return True

    def release(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        self._paths.pop(key, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def touch_all(self) -> None:
        """Give every held entry the same last-used time: a chain then ages as one, and prune (which
        breaks ties parent-first) never keeps a child without its parent."""
        now = time.time()
        for path in self._paths.values():
            with contextlib.suppress(OSError):
                os.utime(path / LOCK, (now, now))

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._paths.clear()


class CheckpointCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.cache_dir() / "checkpoints"

    def _ensure(self) -> Path:
        return paths.ensure_private_dir(self.root)

    def get(self, key: str) -> Entry | None:
        if not _KEY_RE.match(key):
            return None
        path = self.root / key
        try:
            meta = EntryMeta.from_dict(json.loads((path / META).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if meta.key != key or not (path / DISK).is_file():
            return None
        return Entry(path, meta)

    def deepest(self, keys: Sequence[str]) -> list[Entry]:
        """The entries of the longest prefix of ``keys`` present in the cache (each one's parent is the
        previous one, so the chain of backing files is whole)."""
        found: list[Entry] = []
        for key in keys:
            entry = self.get(key)
            if entry is None or (found and entry.meta.parent != found[-1].key):
                break
            found.append(entry)
        return found

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        out = [e for p in sorted(self.root.iterdir()) if (e := self.get(p.name)) is not None]
        return out

    def staging_dirs(self) -> list[StagingDir]:
        """Entries being written (or left behind by a build that died before it committed)."""
        if not self.root.is_dir():
            return []
        return [StagingDir.parse(p) for p in sorted(self.root.glob(".tmp-*")) if p.is_dir()]

    @contextlib.contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A private directory to build entry ``key`` in; removed unless ``commit`` took it over.

        Its name carries the owner (pid and /proc start time): prune removes it as soon as the owner is
        dead, and never while it lives. In the name rather than in a file inside, so the directory is
        never ownerless, not even between its creation and a first write.
        """
        me = os.getpid()
        owner = f"{me}-{_start_ticks(me) or 0}"
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-{owner}-", dir=self._ensure()))  # 0700
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            elif (self.root / key).is_dir():
                _make_private(self.root / key)  # committed: its files were written with the umask

    def commit(self, staging: Path, meta: EntryMeta) -> Entry | None:
        """Make the staged entry visible in one rename; None when another build committed the same key
        first. Theirs then stays and ours is discarded: the two have the same history but not the same
        bytes (timestamps, logs, allocation), so nothing of ours may ever be stacked on theirs."""
        files: dict[str, FileDigest] = {}
        for f in sorted(staging.iterdir()):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            files[f.name] = FileDigest.of(f)  # just written: read back from the page cache
        meta = dataclasses.replace(meta, files=files)
        write_json_atomic(staging / META, meta.as_dict())
        (staging / LOCK).touch()
        final = self.root / meta.key
        try:
            os.rename(staging, final)
        except OSError:
            if self.get(meta.key) is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
            log.debug("checkpoint %s was committed by another build first", meta.key[:12])
            return None
        entry = self.get(meta.key)
        if entry is None:
            raise OSError(f"checkpoint {meta.key[:12]} vanished right after it was committed")
        return entry

    def verify(
        self, entry: Entry, names: Iterable[str] | None = None, *, layer_check: LayerCheck | None = None
    ) -> tuple[str | None, int]:
        """Check ``entry``'s files (all, or ``names``) against the sizes and digests recorded when it was
        committed, and its disk layer with ``qemu-img check``. Returns (what is wrong or None, bytes read)."""
        recorded = entry.meta.files
        if not recorded or DISK not in recorded:
            return "it has no recorded digests", 0
        wanted = list(recorded) if names is None else [n for n in names if n in recorded]
        read = 0
        for name in wanted:
            path = entry.path / name
            try:
                size = path.stat().st_size
            except OSError as exc:
                return f"{name} is missing ({exc.strerror})", read
            if size != recorded[name].size:
                return f"{name} has {size} bytes, {recorded[name].size} were written", read
            try:
                found = FileDigest.of(path)
            except OSError as exc:
                return f"{name} cannot be read ({exc.strerror})", read
            read += found.size
            if found != recorded[name]:
                return f"{name} does not match its digest (damaged after it was written)", read
        if DISK in wanted:
            problem = (layer_check or check_layer)(entry.disk)
            if problem:
                return f"{DISK}: {problem}", read
        return None, read

    def discard(self, entry: Entry) -> list[Entry]:
        """Remove ``entry`` and every entry stacked on it (children first); entries another build holds
        stay (it verified them before it took them). Returns what was removed."""
        entries = self.entries()
        children = self._descendants(entries)
        by_key = {e.key: e for e in entries}
        doomed: list[Entry] = []
        todo = [entry.key]
        while todo:
            key = todo.pop()
            if key in by_key:
                doomed.append(by_key[key])
            todo.extend(children.get(key, ()))
        if entry.key not in by_key:
            doomed.append(entry)
        return [e for e in sorted(doomed, key=lambda e: -e.meta.depth) if self.remove(e)]

    def _descendants(self, entries: Iterable[Entry]) -> dict[str, list[str]]:
        children: dict[str, list[str]] = {}
        for e in entries:
            if e.meta.parent:
                children.setdefault(e.meta.parent, []).append(e.key)
        return children

    def remove(self, entry: Entry) -> bool:
        """Delete ``entry`` unless a build holds it; True when deleted."""
        try:
            fd = os.open(entry.path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # meta.json first: from here on no build can pick this entry up (see Holder.hold).
            (entry.path / META).unlink(missing_ok=True)
            shutil.rmtree(entry.path, ignore_errors=True)
            return True
        finally:
            os.close(fd)

    def prune(self, max_size: int, *, everything: bool = False, force: bool = False) -> PruneResult:
        """Keep the most recently used entries that fit in ``max_size`` bytes; remove the rest, children
        before parents, never an entry in use (nor the ancestors of one), nor one pinned by a finished run
        that still needs it (``localbuilder.pins``) unless ``force``: that first stops the guests kept by
        the runs whose entries it removes."""
        entries = self.entries()
        self._remove_stale_tmp()
        pinned = pins.pinned_keys(pins.load(self.root, [e.key for e in entries]),
                                  {e.key: e.meta.parent for e in entries})
        by_key = {e.key: e for e in entries}
        # A parent counts as recent as its most recent descendant (it is needed by it); newest first and,
        # among equals, parents first — so what is kept is always whole chains from their roots.
        recency = {e.key: e.last_used for e in entries}
        for e in sorted(entries, key=lambda e: -e.meta.depth):
            parent = e.meta.parent
            if parent in recency:
                recency[parent] = max(recency[parent], recency[e.key])
        order = sorted(entries, key=lambda e: (-recency[e.key], e.meta.depth))
        kept: list[Entry] = []
        doomed: list[Entry] = []
        used = 0
        for e in order:
            size = e.size()
            parent_kept = e.meta.parent is None or any(k.key == e.meta.parent for k in kept)
            if not everything and parent_kept and used + size <= max_size:
                kept.append(e)
                used += size
            else:
                doomed.append(e)
        removed: list[Entry] = []
        in_use: list[Entry] = []
        held_by_pins: list[tuple[Entry, str]] = []
        stopped: list[str] = []
        if force:
            affected = {id(ap): ap for e in doomed for ap in pinned.get(e.key, ())}
            stopped = pins.stop_kept_guests(affected.values())
        freed = 0
        children = self._descendants(entries)
        blocked: set[str] = set()
        # Deepest first, so children go before their parents; a held child keeps its ancestors.
        for e in sorted(doomed, key=lambda e: -e.meta.depth):
            if not force and e.key in pinned:
                blocked.add(e.key)
                held_by_pins.append((e, pins.describe(pinned[e.key])))
                continue
            if any(c in blocked or (c in by_key and by_key[c] in kept) for c in children.get(e.key, ())):
                blocked.add(e.key)
                in_use.append(e)
                continue
            size = e.size()
            if self.remove(e):
                removed.append(e)
                freed += size
            else:
                blocked.add(e.key)
                in_use.append(e)
        return PruneResult(tuple(removed), tuple(kept), tuple(in_use), freed, pinned=tuple(held_by_pins),
                           stopped=tuple(stopped))

    def _remove_stale_tmp(self) -> None:
        """Staging directories of builds that died (SIGKILL, power loss) before they committed: as soon as
        their owner is gone; one without an owner in its name (older versions) after an hour."""
        if not self.root.is_dir():
            return
        now = time.time()
        for staged in self.staging_dirs():
            alive = staged.owner_alive()
            if alive is False or (alive is None and now - staged.modified > STALE_TMP_SECONDS):
                log.debug("removing %s (its build is gone)", staged.path.name)
                shutil.rmtree(staged.path, ignore_errors=True)


def check_layer(disk: Path) -> str | None:
    """``qemu-img check`` of one qcow2 layer (its metadata, and that its backing chain opens); None = ok."""
    try:
        run(["qemu-img", "check", "-q", "-f", "qcow2", disk])
    except CommandError as exc:
        return (exc.stderr_tail.strip().splitlines() or [f"qemu-img check exit {exc.returncode}"])[-1]
    return None
