"""The image catalog: which local disk file stands in for which Azure source image.

An AIB template names its source the Azure way — a marketplace URN (``PlatformImage``), a managed image
resource id (``ManagedImage``) or an Azure Compute Gallery image version id (``SharedImageVersion``).
Locally there is no Azure, so the user registers a file once for each such name::

    localbuilder image add debian.qcow2 --urn Debian:debian-12:12:0.20250101.1
    localbuilder image add win.vhd --id /subscriptions/…/galleries/g/images/win/versions/1.0.0 --os windows

and a build resolves its source through ``Catalog.resolve(template.source)``. Matching follows Azure:
publisher, offer, sku and resource ids are case-insensitive; ``version: latest`` (and a gallery image
*definition* id, or ``…/versions/latest``) picks the highest version comparing the dot-separated integers
numerically (``1.10.0`` > ``1.9.0``).

Storage: ``<images_dir>/catalog.json``, rewritten atomically (temp file + ``os.replace``) under an
exclusive ``flock`` on ``<images_dir>/.catalog.lock``; readers never see a half-written file. With
``--copy`` the image file is copied into ``<images_dir>/files/``; with ``--link`` (the default, images are
many GiB) the entry points at the user's file, and its size and mtime are checked at every resolve.

The catalog treats image files as read-only: nothing in localbuilder writes to one (builds boot a qcow2
overlay on top). The sha256 of the file is computed once, when it is added, and is the image's identity in
cache keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from localbuilder import paths
from localbuilder import run as runmod
from localbuilder.diskformat import DiskFormat, inspect_disk
from localbuilder.errors import CatalogError, CommandError
from localbuilder.images import progress_enabled
from localbuilder.template.model import (
    ManagedImageSource,
    OsType,
    PlatformImageSource,
    SharedImageVersionSource,
    SourceType,
)

log = logging.getLogger("localbuilder.catalog")

CATALOG_VERSION = 1


class Generation(enum.StrEnum):
    """Hyper-V generation, spelled as Azure spells it (``hyperVGeneration``)."""

    V1 = "V1"  # BIOS
    V2 = "V2"  # UEFI


# Resource ids, case-insensitive like ARM. Gallery versions may also come from community or direct-shared
# galleries (``/CommunityGalleries/…``, ``/SharedGalleries/…``), which AIB accepts as imageVersionId.
_MANAGED_RE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/images/[^/]+$", re.I
)
_GALLERY_RE = re.compile(
    r"^(?P<definition>(?:/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/galleries/[^/]+"
    r"|/(?:Community|Shared)Galleries/[^/]+)/images/[^/]+)(?:/versions/(?P<version>[^/]+))?$",
    re.I,
)
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def parse_version(text: str) -> tuple[int, ...] | None:
    """``1.2.3`` → ``(1, 2, 3)``; None unless it is Azure's Major.Minor.Build form of three integers."""
    if not _VERSION_RE.match(text):
        return None
    return tuple(int(part) for part in text.split("."))


def _norm_id(resource_id: str) -> str:
    return resource_id.strip().rstrip("/").casefold()


def _definition_of(gallery_id: str) -> str | None:
    m = _GALLERY_RE.match(gallery_id.strip().rstrip("/"))
    return m.group("definition").casefold() if m else None


@dataclasses.dataclass(frozen=True)
class CatalogImage:
    """One registered image. ``ref`` is the URN or resource id exactly as it was added."""

    kind: SourceType
    ref: str
    path: Path
    format: DiskFormat
    virtual_size: int
    os: OsType
    generation: Generation
    sha256: str
    added: str  # ISO 8601 UTC
    stored: bool  # the file was copied into the catalog's own store (``image rm`` deletes it)
    file_size: int
    mtime_ns: int

    @property
    def identity(self) -> str:
        """What cache keys use for "this source image": the content hash, not the path."""
        return self.sha256

    @property
    def version(self) -> str:
        if self.kind is SourceType.PlatformImage:
            return self.ref.split(":")[3]
        if self.kind is SourceType.SharedImageVersion:
            m = _GALLERY_RE.match(self.ref)
            return (m.group("version") or "") if m else ""
        return ""

    @property
    def version_key(self) -> tuple[int, ...]:
        return parse_version(self.version) or ()

    def matches_ref(self, ref: str) -> bool:
        if self.kind is SourceType.PlatformImage:
            return _urn_key(self.ref) == _urn_key(ref)
        return _norm_id(self.ref) == _norm_id(ref)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path | enum.Enum) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CatalogImage:
        try:
            return cls(
                kind=SourceType(str(data["kind"])),
                ref=str(data["ref"]),
                path=Path(str(data["path"])),
                format=DiskFormat(str(data["format"])),
                virtual_size=int(str(data["virtual_size"])),
                os=OsType(str(data["os"])),
                generation=Generation(str(data["generation"])),
                sha256=str(data["sha256"]),
                added=str(data["added"]),
                stored=bool(data["stored"]),
                file_size=int(str(data["file_size"])),
                mtime_ns=int(str(data["mtime_ns"])),
            )
        except (KeyError, ValueError) as exc:
            raise CatalogError(
                f"catalog entry {data.get('ref', '?')!r} is malformed: {exc}",
                hint="Remove it with 'localbuilder image rm REF' and add the image again.",
            ) from exc


def _urn_key(urn: str) -> tuple[str, str, str, tuple[int, ...] | str]:
    publisher, offer, sku, version = (urn.split(":") + ["", "", "", ""])[:4]
    parsed = parse_version(version)
    return (publisher.casefold(), offer.casefold(), sku.casefold(), parsed if parsed else version.casefold())


def check_urn(urn: str) -> str:
    """Validate a URN given to ``image add``: four non-empty parts and an exact numeric version."""
    parts = urn.split(":")
    if len(parts) != 4 or not all(p.strip() for p in parts):
        raise CatalogError(
            f"--urn {urn!r} is not publisher:offer:sku:version",
            hint="Write it as Azure does, e.g. "
            "--urn Canonical:0001-com-ubuntu-server-jammy:22_04-lts:22.04.202401010",
        )
    if parse_version(parts[3]) is None:
        raise CatalogError(
            f"--urn {urn!r}: version {parts[3]!r} is not Major.Minor.Build (three integers)",
            hint="A catalog entry needs an exact version such as 1.0.0; templates that say 'latest' get the "
            "highest registered version.",
        )
    return ":".join(p.strip() for p in parts)


def classify_id(resource_id: str) -> SourceType:
    """ManagedImage or SharedImageVersion from the shape of an image resource id (for ``image add``)."""
    rid = resource_id.strip().rstrip("/")
    if _MANAGED_RE.match(rid):
        return SourceType.ManagedImage
    m = _GALLERY_RE.match(rid)
    if m and m.group("version") and parse_version(m.group("version")):
        return SourceType.SharedImageVersion
    if m:
        raise CatalogError(
            f"--id {resource_id!r} names a gallery image definition, not an exact version",
            hint=f"Register a concrete version: --id {m.group('definition')}/versions/1.0.0 "
            "(templates that ask for the definition or for 'latest' get the highest registered version).",
        )
    raise CatalogError(
        f"--id {resource_id!r} is neither a managed image id nor a gallery image version id",
        hint="Use /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/images/NAME or "
        "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/DEF/versions/1.0.0",
    )


def guess_os(ref: str) -> OsType:
    # Azure's Windows publishers (MicrosoftWindowsServer, MicrosoftWindowsDesktop, …) all say "windows".
    return OsType.windows if "windows" in ref.casefold() else OsType.linux


def guess_generation(ref: str) -> Generation:
    # Azure marks Gen2 skus with "gen2" / "-g2" (12-gen2, 2022-datacenter-g2, 22_04-lts-gen2).
    tail = ref.split(":")[2] if ref.count(":") == 3 else ref
    return Generation.V2 if re.search(r"gen2|-g2\b", tail, re.I) else Generation.V1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with (
        open(path, "rb") as fh,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
             disable=not progress_enabled(), leave=False) as bar,
    ):
        while chunk := fh.read(4 * 1024**2):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def add_command_hint(kind: SourceType, ref: str, *, os_type: OsType | None = None) -> str:
    """The exact ``localbuilder image add`` command that would make ``ref`` resolvable."""
    if kind is SourceType.PlatformImage:
        publisher, offer, sku, version = (ref.split(":") + ["", "", "", ""])[:4]
        if parse_version(version) is None:
            version = "1.0.0"  # any exact version satisfies "latest"
        arg = f"--urn {publisher}:{offer}:{sku}:{version}"
    else:
        rid = ref.strip().rstrip("/")
        m = _GALLERY_RE.match(rid)
        if m and (m.group("version") is None or parse_version(m.group("version")) is None):
            rid = f"{m.group('definition')}/versions/1.0.0"
        arg = f"--id {rid}"
    osf = os_type or guess_os(ref)
    extra = " --os windows" if osf is OsType.windows else ""
    return f"localbuilder image add FILE {arg}{extra}"


class Catalog:
    """The catalog under ``root`` (default ``paths.images_dir()``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else paths.images_dir()
        self.file = self.root / "catalog.json"
        self.store = self.root / "files"

    # -- storage --------------------------------------------------------------------------------------

    def entries(self) -> list[CatalogImage]:
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(text)
            raw = doc["images"]
            if not isinstance(raw, list):
                raise TypeError("'images' is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(
                f"{self.file} is not a valid catalog: {exc}",
                hint=f"Fix or move {self.file} away; 'localbuilder image add' starts a new one.",
            ) from exc
        return [CatalogImage.from_dict(item) for item in raw]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".catalog.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, entries: Sequence[CatalogImage]) -> None:
        doc = {"version": CATALOG_VERSION, "images": [e.as_dict() for e in entries]}
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as fh:
                json.dump(doc, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.file)
        finally:
            tmp.unlink(missing_ok=True)

    # -- add / remove ---------------------------------------------------------------------------------

    def add(
        self,
        path: Path,
        *,
        urn: str | None = None,
        resource_id: str | None = None,
        os_type: OsType | None = None,
        generation: Generation | None = None,
        copy: bool = False,
        replace: bool = False,
        sha256: str | None = None,
    ) -> CatalogImage:
        """Register ``path`` under ``urn`` or ``resource_id``. ``sha256`` skips hashing when the caller
        already knows it (a freshly built image)."""
        if (urn is None) == (resource_id is None):
            raise CatalogError("give exactly one of --urn or --id",
                               hint="e.g. localbuilder image add FILE --urn Debian:debian-12:12:1.0.0")
        if urn is not None:
            kind, ref = SourceType.PlatformImage, check_urn(urn)
        else:
            assert resource_id is not None
            ref = resource_id.strip().rstrip("/")
            kind = classify_id(ref)
        info = inspect_disk(path)
        existing = [e for e in self.entries() if e.kind is kind and e.matches_ref(ref)]
        if existing and not replace:
            raise CatalogError(
                f"{ref} is already in the catalog ({existing[0].path})",
                hint="Add it with a new version, or pass --replace, or remove it first: "
                f"localbuilder image rm {existing[0].ref}",
            )
        chosen_os = os_type or guess_os(ref)
        chosen_gen = generation or guess_generation(ref)
        if os_type is None or generation is None:
            log.info("%s: assuming --os %s --generation %s", ref, chosen_os, chosen_gen)
        digest = sha256 or sha256_file(info.path)
        target = info.path
        if copy:
            target = self._copy_in(info.path, digest, info.format)
        st = target.stat()
        entry = CatalogImage(
            kind=kind, ref=ref, path=target, format=info.format, virtual_size=info.virtual_size,
            os=chosen_os, generation=chosen_gen, sha256=digest,
            added=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            stored=copy, file_size=st.st_size, mtime_ns=st.st_mtime_ns,
        )
        with self._locked():
            entries = self.entries()
            replaced = [e for e in entries if e.kind is kind and e.matches_ref(ref)]
            if replaced and not replace:  # someone added it while we were hashing
                raise CatalogError(f"{ref} was added to the catalog meanwhile ({replaced[0].path})",
                                   hint="Pass --replace to overwrite it.")
            kept = [e for e in entries if e not in replaced]
            self._write([*kept, entry])
            for old in replaced:
                self._drop_file(old, kept + [entry])
        return entry

    def _copy_in(self, src: Path, digest: str, fmt: DiskFormat) -> Path:
        self.store.mkdir(parents=True, exist_ok=True)
        dest = self.store / f"{digest}.{fmt}"
        if dest.exists():
            return dest  # same content already stored (content-addressed)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            # cp keeps the holes of sparse images (a 30 GiB fixed VHD with 2 GiB of data stays small)
            # and reflinks where the file system can.
            runmod.run(["cp", "--sparse=always", "--reflink=auto", src, tmp])
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except CommandError as exc:
            raise CatalogError(
                f"copying {src} into {self.store} failed: {exc.stderr_tail.strip()}",
                hint="Check the free space there, or register the file in place with --link.",
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _drop_file(self, entry: CatalogImage, remaining: Sequence[CatalogImage]) -> None:
        if entry.stored and not any(e.path == entry.path for e in remaining):
            entry.path.unlink(missing_ok=True)
            log.info("deleted %s", entry.path)

    def remove(self, ref: str) -> CatalogImage:
        """Remove the entry whose URN or resource id is ``ref`` (exact version; case-insensitive)."""
        with self._locked():
            entries = self.entries()
            hits = [e for e in entries if e.matches_ref(ref.strip())]
            if not hits:
                raise CatalogError(f"{ref} is not in the catalog",
                                   hint="'localbuilder image list' shows the registered URNs and ids.")
            kept = [e for e in entries if e not in hits]
            self._write(kept)
            for e in hits:
                self._drop_file(e, kept)
        return hits[0]

    # -- resolution -----------------------------------------------------------------------------------

    def resolve(
        self, source: PlatformImageSource | ManagedImageSource | SharedImageVersionSource
    ) -> CatalogImage:
        """The catalog image for a template's ``source``; CatalogError with the fix when there is none."""
        if isinstance(source, PlatformImageSource):
            return self.resolve_urn(f"{source.publisher}:{source.offer}:{source.sku}:{source.version}")
        if isinstance(source, ManagedImageSource):
            return self.resolve_id(source.image_id, SourceType.ManagedImage)
        if isinstance(source, SharedImageVersionSource):
            return self.resolve_id(source.image_version_id, SourceType.SharedImageVersion)
        raise CatalogError(f"source type {type(source).__name__} cannot come from the catalog",
                           hint="Use a PlatformImage, ManagedImage or SharedImageVersion source.")

    def resolve_ref(self, ref: str) -> CatalogImage:
        """A URN or an image resource id as a user types it (``localbuilder shell SOURCE``); gallery
        definition ids and ``latest`` resolve as in a template."""
        text = ref.strip().rstrip("/")
        if text.startswith("/"):
            if _MANAGED_RE.match(text):
                return self.resolve_id(text, SourceType.ManagedImage)
            if _GALLERY_RE.match(text):
                return self.resolve_id(text, SourceType.SharedImageVersion)
        elif text.count(":") == 3:
            return self.resolve_urn(text)
        raise CatalogError(
            f"{ref!r} is neither a URN (publisher:offer:sku:version) nor an image resource id",
            hint="'localbuilder image list' shows the registered URNs and ids.",
        )

    def resolve_urn(self, urn: str) -> CatalogImage:
        publisher, offer, sku, version = (urn.split(":") + ["", "", "", ""])[:4]
        same_sku = [
            e for e in self.entries()
            if e.kind is SourceType.PlatformImage and _urn_key(e.ref)[:3] == _urn_key(urn)[:3]
        ]
        if version.casefold() == "latest":
            found = max(same_sku, key=lambda e: e.version_key, default=None)
        else:
            found = next((e for e in same_sku if _urn_key(e.ref) == _urn_key(urn)), None)
        if found is None:
            raise self._unknown(SourceType.PlatformImage, urn, [e.ref for e in same_sku])
        return self._checked(found)

    def resolve_id(self, resource_id: str, kind: SourceType) -> CatalogImage:
        rid = resource_id.strip().rstrip("/")
        entries = [e for e in self.entries() if e.kind is kind]
        found: CatalogImage | None = None
        near: list[str] = []
        m = _GALLERY_RE.match(rid) if kind is SourceType.SharedImageVersion else None
        if m is not None:
            definition = m.group("definition").casefold()
            versions = [e for e in entries if _definition_of(e.ref) == definition]
            near = [e.ref for e in versions]
            wanted = m.group("version")
            # An image-definition id, or ".../versions/latest", means the highest version (AIB docs).
            if wanted is None or wanted.casefold() == "latest":
                found = max(versions, key=lambda e: e.version_key, default=None)
            else:
                found = next((e for e in versions if e.matches_ref(rid)), None)
        else:
            found = next((e for e in entries if e.matches_ref(rid)), None)
        if found is None:
            raise self._unknown(kind, rid, near)
        return self._checked(found)

    def _unknown(self, kind: SourceType, ref: str, near: list[str]) -> CatalogError:
        message = f"no catalog image for {kind} {ref}"
        if near:
            message += " (registered: " + ", ".join(near[:5]) + ")"
        hint = f"Register a local image file for it: {add_command_hint(kind, ref)}"
        if kind is SourceType.PlatformImage and _urn_key(ref)[:2] == ("debian", "debian-12"):
            hint += " — or build one from a Debian mirror: localbuilder image build debian-12"
        return CatalogError(message, hint=hint)

    def _checked(self, entry: CatalogImage) -> CatalogImage:
        """The entry, after checking its file is still the one that was hashed (cheap: size + mtime)."""
        try:
            st = entry.path.stat()
        except FileNotFoundError as exc:
            raise CatalogError(
                f"{entry.ref}: its image file {entry.path} is gone",
                hint=f"Remove the entry (localbuilder image rm {entry.ref}) or put the file back.",
            ) from exc
        if st.st_size != entry.file_size or st.st_mtime_ns != entry.mtime_ns:
            raise CatalogError(
                f"{entry.ref}: {entry.path} changed since it was added (catalog images are read-only)",
                hint=f"Register the new content: localbuilder image add {entry.path} "
                f"{'--urn' if entry.kind is SourceType.PlatformImage else '--id'} {entry.ref} --replace",
            )
        return entry
