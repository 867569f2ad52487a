"""One build's use of the checkpoint cache (``localbuilder.checkpoints``): its chain of keys, where it
resumes, the checkpoints it saves after each step, and the pins that keep them while the run needs them.

Every entry is proven before it is used (``BuildChain.restore_point``: digests and ``qemu-img check``;
then ``quiesce.confirm`` in the guest): what this module logs is what was verified, discarded or refused.
A checkpoint is an optimization: when one cannot be saved, the build goes on without checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from localbuilder import pins
from localbuilder.checkpoints import (
    MAX_SIZE_ENV,
    CheckpointCache,
    Entry,
    LiveMeta,
    chain_keys,
    default_max_size,
)
from localbuilder.customizers import customizer_for
from localbuilder.errors import BuildTimeout, Canceled, LocalBuilderError
from localbuilder.guest import BootedGuest, Platform, SourceImage
from localbuilder.log import complete_step
from localbuilder.orchestrator.chain import BuildChain
from localbuilder.runlog import CustomizationLog
from localbuilder.state import RunRecord
from localbuilder.template import model

log = logging.getLogger("localbuilder.build")

# Saving a checkpoint: ~0.5 s pause + the memory write under TCG here (FACTS §3e).
CHECKPOINT_SECONDS = 5 * 60


def chain_for(
    template: model.Template,
    image: SourceImage,
    traits: Mapping[str, Any],
    digests: Mapping[str, str],
    *,
    disk_bytes: int | None,
    run_id: str,
    check_layer: Callable[[Path], str | None],
) -> BuildChain | None:
    """The keys of every checkpoint this build could take or use: one per step, each covering the
    source image, the guest's shape (``traits``), and every step up to it with the digests of the files
    it fetched. None when the source image cannot be identified."""
    try:
        st = image.path.stat()
    except OSError:
        return None
    base = {
        # The catalog stores images under their digest; size + mtime catch an in-place change.
        "source": {"path": str(image.path.absolute()), "format": image.format, "size": st.st_size,
                   "mtime_ns": st.st_mtime_ns},
        "diskBytes": disk_bytes,
        "uefi": image.uefi,
        "vmSize": template.vm_profile.vm_size,
        "os": str(image.os),
        **traits,
    }  # fmt: skip
    steps = list(template.customize)
    fetched = [
        {uri: digests[uri] for attr in ("script_uri", "source_uri")
         if (uri := getattr(step, attr, None)) and uri in digests}
        for step in steps
    ]  # fmt: skip
    titles = ["booted source"] + [customizer_for(s).describe(i, "customize") for i, s in enumerate(steps)]
    return BuildChain(
        CheckpointCache(), chain_keys(base, steps, fetched), titles,
        template=template.name, run_id=run_id, source=image.path.absolute(),
        source_format=image.format, layer_check=check_layer,
    )


class Checkpointing:
    """The chain of one build, with the customization log it reports to."""

    def __init__(self, chain: BuildChain, platform: Platform, clog: CustomizationLog, run_path: Path) -> None:
        self.chain = chain
        self.platform = platform
        self.clog = clog
        self.run_path = run_path
        self.seconds = 0.0  # spent saving checkpoints (the phase table's "checkpoints")

    def restore_point(self, record: RunRecord) -> Entry | None:
        """The deepest entry that proves sound (or None: boot the source); logs what was verified and
        what was discarded on the way."""
        chain = self.chain
        entry = chain.restore_point()
        if chain.verified_bytes:
            self.clog.event(f"checkpoints verified: {chain.verified_bytes / 1e6:.0f} MB in "
                            f"{chain.verify_seconds:.2f} s")
        for bad, why in chain.rejected:
            self.clog.event(f"checkpoint {bad.key[:12]} after {bad.meta.title} discarded: {why}")
        chain.rejected.clear()
        self.pin(record)
        return entry

    def refuse(self, entry: Entry, why: str) -> None:
        """A resumed guest did not say it is ``entry``: discard it (and what is stacked on it)."""
        self.chain.reject(entry, why)
        self.clog.event(f"checkpoint {entry.key[:12]} refused: {why}")

    def note_restored(self, entry: Entry, steps: Sequence[Any]) -> None:
        """Record which steps did not run because the checkpoint already holds their result."""
        kind = "live" if entry.meta.live is not None else "disk"
        for index, step in enumerate(steps[: entry.meta.depth]):
            title = customizer_for(step).describe(index, "customize")
            self.clog.event(f"{title}: restored from checkpoint {entry.key[:12]} (not run again)")
        log.info("continuing from the %s checkpoint after %s (%s, saved by run %s): %d of %d steps to run",
                 kind, entry.meta.title, entry.key[:12], entry.meta.run_id or "?",
                 len(steps) - entry.meta.depth, len(steps))

    def save(self, depth: int, booted: BootedGuest, *, timeout: float, record: RunRecord) -> None:
        """The checkpoint after step ``depth`` (0: the booted source), unless checkpoints are off."""
        chain = self.chain
        if not chain.enabled:
            return
        start = time.monotonic()
        title = chain.titles[depth]

        def capture(staging: Path, backing: Path, backing_format: str) -> LiveMeta | None:
            return self.platform.checkpoint(booted, staging, backing=backing, backing_format=backing_format,
                                            timeout=min(CHECKPOINT_SECONDS, timeout),
                                            mark=chain.keys[depth], room_for=self.run_path)

        try:
            with complete_step(f"Saving a checkpoint after {title}"):
                entry = chain.save(depth, capture)
        except (BuildTimeout, Canceled):
            raise
        except (LocalBuilderError, OSError) as exc:
            # Later checkpoints would lack a parent: the build goes on without any.
            chain.enabled = False
            message = exc.message if isinstance(exc, LocalBuilderError) else str(exc)
            log.warning("could not save a checkpoint after %s (%s); continuing without checkpoints",
                        title, message)
            self.clog.event(f"checkpoint after {title} failed: {message}")
            return
        finally:
            self.seconds += time.monotonic() - start
        if entry is not None:
            self.clog.event(f"checkpoint {entry.key[:12]} after {title} "
                            f"({'live' if entry.meta.live else 'disk only'})")
            self.pin(record)

    def _keys(self) -> list[str]:
        return [entry.key for _, entry in sorted(self.chain.saved.items())]

    def pin(self, record: RunRecord) -> None:
        """Pin this run's chain as it grows, not only when the run ends: a build that is SIGKILLed never
        reaches its end, and recovery then marks it Failed — resumable, so its chain must stay."""
        if not self.chain.saved:
            return
        try:
            pins.record_run(self.chain.cache.root, self.run_path, record, self._keys())
        except OSError as exc:
            log.debug("could not pin the checkpoints of this run yet: %s", exc)

    def release(self, record: RunRecord) -> None:
        """The end of this build's use of the cache: pin what the run still needs (a kept guest, a
        ``--resume``), then release its locks and prune. The pin is written while the locks are still
        held, so no prune in between can take the chain."""
        chain = self.chain
        keys = self._keys()
        try:
            pin = pins.record_run(chain.cache.root, self.run_path, record, keys)
        except OSError as exc:
            log.warning("could not pin the checkpoints of run %s: %s", record.run_id, exc)
            pin = None
        if pin is not None:
            log.info("checkpoints of run %s pinned (%s): prune keeps them while the run needs them",
                     record.run_id, "kept guest" if record.kept_guest else "resumable with --resume")
        try:
            result = chain.close(prune_to=default_max_size())
        except (OSError, LocalBuilderError) as exc:
            log.warning("could not prune the checkpoint cache: %s", exc)
            return
        if result is None:
            return
        others = [(e, why) for e, why in result.pinned if e.key not in keys]
        for reason in sorted({why for _, why in others}):
            n = sum(1 for _, why in others if why == reason)
            log.info("checkpoint cache: kept %d pinned checkpoints: %s", n, reason)
        if result.removed:
            log.info("checkpoint cache: removed %d old checkpoints (%.1f GiB) to stay under %s",
                     len(result.removed), result.freed / 1024**3, MAX_SIZE_ENV)
