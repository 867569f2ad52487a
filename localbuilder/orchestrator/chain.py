"""``BuildChain``: one build's view of the checkpoint cache — the key of every step's checkpoint, the
deepest entry that proves sound to start from, and saving new entries as the steps succeed.

The cache itself (entries, digests, locks, pruning) is ``localbuilder.checkpoints``; what the build logs
and pins around the chain is ``orchestrator.checkpointing``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localbuilder.checkpoints import DISK, CheckpointCache, Entry, EntryMeta, Holder, LayerCheck, PruneResult
from localbuilder.state import now_iso

log = logging.getLogger("localbuilder.checkpoints")


class BuildChain:
    """One build's view of the cache: which checkpoint to start from, and saving new ones as it goes.

    ``capture(staging, backing, backing_format)`` writes the entry's files (the platform's job) and
    returns the live-resume metadata, or None for a disk-only checkpoint.
    """

    def __init__(
        self,
        cache: CheckpointCache,
        keys: Sequence[str],
        titles: Sequence[str],
        *,
        template: str,
        run_id: str,
        source: Path,
        source_format: str,
        layer_check: LayerCheck | None = None,
    ) -> None:
        if len(titles) != len(keys):
            raise ValueError("one title per key")
        self.cache = cache
        self.keys = list(keys)
        self.titles = list(titles)
        self.template = template
        self.run_id = run_id
        self.source = source
        self.source_format = source_format
        self.holder = Holder()
        self.saved: dict[int, Entry] = {}  # depth → entry this build can build on
        self.enabled = True
        self.layer_check = layer_check
        self._verified: set[tuple[str, bool]] = set()  # (key, whole entry or only its disk)
        self.verify_seconds = 0.0
        self.verified_bytes = 0
        self.rejected: list[tuple[Entry, str]] = []
        self._refused: set[str] = set()  # rejected keys: never used again by this build, even if they stay

    def restore_point(self) -> Entry | None:
        """The deepest cached point of this chain that proves whole (held: no prune can take it away).

        Every layer below it must match its digests and pass ``qemu-img check``, and the point itself
        every file (memory state, seed, key). A damaged entry is discarded together with the entries
        stacked on it, with a warning naming it, and the build continues from the deepest good ancestor.
        """
        hits = self.cache.deepest(self.keys)
        chain: list[Entry] = []
        for entry in hits:
            if entry.key in self._refused or not self.holder.hold(entry):
                break
            chain.append(entry)
        while chain:
            bad = next((i for i, e in enumerate(chain) if self._check(e, whole=False)), None)
            if bad is None and not self._check(chain[-1], whole=True):
                break
            index = bad if bad is not None else len(chain) - 1
            chain = chain[:index]
        self.saved = dict(enumerate(chain))
        if chain:
            log.debug("verified the checkpoint chain up to %s: %.1f MB in %.2f s", chain[-1].key[:12],
                      self.verified_bytes / 1e6, self.verify_seconds)
        return chain[-1] if chain else None

    def _check(self, entry: Entry, *, whole: bool) -> bool:
        """True when ``entry`` is damaged (and then rejected). ``whole``: every file, else its disk."""
        disk_ok = (entry.key, False) in self._verified
        if (entry.key, True) in self._verified or (disk_ok and not whole):
            return False
        names: list[str] | None = None if whole else [DISK]
        if whole and disk_ok:
            names = [n for n in entry.meta.files if n != DISK]
        start = time.monotonic()
        problem, read = self.cache.verify(entry, names, layer_check=self.layer_check)
        self.verify_seconds += time.monotonic() - start
        self.verified_bytes += read
        if problem is None:
            self._verified.add((entry.key, whole))
            self._verified.add((entry.key, False))
            return False
        self.reject(entry, problem)
        return True

    def reject(self, entry: Entry, why: str) -> None:
        """Never use ``entry`` again: drop it and everything stacked on it, from this build and the cache."""
        log.warning("checkpoint %s (after %s) is not usable: %s; discarding it and every checkpoint after it",
                    entry.key[:12], entry.meta.title, why)
        self.rejected.append((entry, why))
        self._refused.add(entry.key)
        for depth in [d for d in self.saved if d >= entry.meta.depth]:
            del self.saved[depth]
        for key in self.keys[entry.meta.depth:]:
            self.holder.release(key)
            self._verified.discard((key, True))
            self._verified.discard((key, False))
        removed = self.cache.discard(entry)
        if entry not in removed and self.cache.get(entry.key) is not None:
            log.warning("checkpoint %s is in use by another build and stays until it ends", entry.key[:12])

    def save(self, depth: int, capture: Any) -> Entry | None:
        """Checkpoint the point ``depth`` (0 = booted source, i+1 = after customize[i])."""
        if not self.enabled:
            return None
        if depth > 0 and depth - 1 not in self.saved:
            return None  # the parent could not be saved: a child would have no backing file
        key = self.keys[depth]
        if self.cache.get(key) is not None:
            self._diverged(key)
            return None
        parent = self.saved.get(depth - 1)
        if parent is not None:
            backing, backing_format = parent.disk, "qcow2"
        else:
            backing, backing_format = self.source, self.source_format
        with self.cache.staging(key) as tmp:
            live = capture(tmp, backing, backing_format)
            meta = EntryMeta(key=key, parent=parent.key if parent else None, depth=depth,
                             title=self.titles[depth], template=self.template, run_id=self.run_id,
                             created=now_iso(), backing=str(backing), backing_format=backing_format,
                             live=live)
            entry = self.cache.commit(tmp, meta)
        if entry is None:
            self._diverged(key)
            return None
        if self.holder.hold(entry):
            self.saved[depth] = entry
        return entry

    def _diverged(self, key: str) -> None:
        """Another build (a parallel one) saved this point first. Its disk is not byte-for-byte ours, so
        our later layers cannot sit on it: this build takes no more checkpoints."""
        log.info("checkpoint %s was saved by another build meanwhile; this build takes no more checkpoints",
                 key[:12])
        self.enabled = False

    def close(self, *, prune_to: int | None = None) -> PruneResult | None:
        """Release this build's hold; with ``prune_to``, first prune the cache to that size (the
        entries this build used are newest and held, so they stay)."""
        result = None
        try:
            self.holder.touch_all()
            if prune_to is not None:
                result = self.cache.prune(prune_to)
        finally:
            self.holder.close()
        return result
