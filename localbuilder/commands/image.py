"""``localbuilder image build|add|list|rm``: source images and the catalog that maps Azure names to them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from localbuilder import paths
from localbuilder.catalog import Catalog, CatalogImage, Generation
from localbuilder.errors import UsageError
from localbuilder.images import debian, debian_build
from localbuilder.template.model import OsType, SourceType

log = logging.getLogger("localbuilder.commands.image")

NAME = "image"
HELP = "build, register, list and remove source images (the image catalog)"
DESCRIPTION = (
    "Source images for templates: 'build' makes a Debian 12 image from a Debian mirror, 'add' registers a "
    "local disk file under the Azure URN or resource id a template names, 'list' and 'rm' manage the "
    "catalog. "
    "Catalog images are never written to: builds boot an overlay."
)

# Recipe name → disk layout. debian-12-lvm-xfs is RHEL's layout (separate /boot, / and /var on XFS logical
# volumes) on Debian packages: the sources users start from besides a single ext4 root.
RECIPES = {"debian-12": debian.Layout.ext4, "debian-12-lvm-xfs": debian.Layout.lvm_xfs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", metavar="COMMAND", parser_class=type(parser))

    b = sub.add_parser("build", help="build a source image offline from a package mirror and register it")
    b.add_argument("recipe", choices=list(RECIPES),
                   help="what to build: debian-12 (one ext4 root; sku 12) or debian-12-lvm-xfs "
                   "(RHEL's layout: /boot on ext4, / and /var as XFS on LVM; sku 12-lvm-xfs)")
    b.add_argument("--mirror", default=debian.DEFAULT_MIRROR,
                   help=f"Debian archive to debootstrap from (default {debian.DEFAULT_MIRROR})")
    b.add_argument("--size", default="2G", help="virtual disk size, a whole number of MiB (default 2G)")
    b.add_argument("--uefi", action="store_true", help="UEFI / Hyper-V Gen2 variant (sku 12-gen2)")
    b.add_argument("--cache-dir", type=Path, default=None,
                   help="where built images are kept and reused "
                   "(default $LOCALBUILDER_HOME/cache/source-images)")
    b.add_argument("--scratch", type=Path, default=None,
                   help="work directory for the rootfs (default: a private tmpfs when RAM allows)")
    b.add_argument("--no-register", action="store_true",
                   help="build (or reuse) only, do not touch the catalog")

    a = sub.add_parser("add", help="register a disk image file (qcow2, raw, VHD, VHDX, VMDK)")
    a.add_argument("file", type=Path)
    ident = a.add_mutually_exclusive_group(required=True)
    ident.add_argument("--urn", help="PlatformImage: publisher:offer:sku:version (exact version)")
    ident.add_argument("--id", dest="resource_id",
                       help="ManagedImage id or SharedImageVersion (gallery image version) id")
    a.add_argument("--os", choices=[str(o) for o in OsType], default=None,
                   help="guest OS (default: windows when the URN/id says windows, else linux)")
    a.add_argument("--generation", choices=[str(g) for g in Generation], default=None,
                   help="Hyper-V generation V1 (BIOS) or V2 (UEFI) (default: V2 when the sku says gen2)")
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="copy", action="store_true",
                      help="copy the file into the catalog's store")
    mode.add_argument("--link", dest="copy", action="store_false",
                      help="record the file where it is (default); it must not change afterwards")
    a.add_argument("--replace", action="store_true", help="overwrite an entry with the same URN/id")

    ls = sub.add_parser("list", help="list the catalog")
    ls.add_argument("--json", action="store_true", help="print the entries as JSON")

    rm = sub.add_parser("rm", help="remove a catalog entry (deletes the file only if it was --copy'd)")
    rm.add_argument("ref", metavar="URN|ID")


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "image_command", None)
    if command is None:
        raise UsageError("localbuilder image: missing COMMAND", hint="Use one of: build, add, list, rm.")
    return int({"build": _build, "add": _add, "list": _list, "rm": _rm}[command](args))


def _build(args: argparse.Namespace) -> int:
    recipe = debian.DebianRecipe(
        mirror=args.mirror,
        size_bytes=debian.parse_size(args.size),
        firmware=debian.Firmware.uefi if args.uefi else debian.Firmware.bios,
        layout=RECIPES[args.recipe],
    )
    cache_dir = args.cache_dir or (paths.cache_dir() / "source-images")
    built = debian_build.ensure_image(recipe, cache_dir, scratch=args.scratch)
    if built.reused:
        log.info("recipe unchanged: reusing %s (built %s)", built.path, built.built_at)
    if not args.no_register:
        catalog = Catalog()
        registered = [e for e in catalog.entries() if e.sha256 == built.sha256 and e.matches_ref(built.urn)]
        if registered:
            log.info("already in the catalog as %s", built.urn)
        else:
            gen = Generation.V2 if recipe.firmware is debian.Firmware.uefi else Generation.V1
            catalog.add(built.path, urn=built.urn, os_type=OsType.linux, generation=gen, sha256=built.sha256)
            log.info("registered %s → %s", built.urn, built.path)
    print(built.urn)
    return 0


def _add(args: argparse.Namespace) -> int:
    entry = Catalog().add(
        args.file,
        urn=args.urn,
        resource_id=args.resource_id,
        os_type=OsType(args.os) if args.os else None,
        generation=Generation(args.generation) if args.generation else None,
        copy=args.copy,
        replace=args.replace,
    )
    log.info("added %s %s: %s, %s, %.1f GiB virtual, sha256 %s", entry.kind, entry.ref, entry.format,
             entry.os, entry.virtual_size / 1024**3, entry.sha256[:16])
    print(entry.ref)
    return 0


def _list(args: argparse.Namespace) -> int:
    entries = sorted(Catalog().entries(), key=_sort_key)
    if args.json:
        json.dump([e.as_dict() for e in entries], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not entries:
        log.info("the catalog is empty: add an image with 'localbuilder image add FILE --urn …' "
                 "or build one with 'localbuilder image build debian-12'")
        return 0
    rows = [("SOURCE", "TYPE", "OS", "GEN", "FORMAT", "SIZE", "SHA256", "PATH")]
    for e in entries:
        rows.append((e.ref, str(e.kind), str(e.os), str(e.generation), str(e.format),
                     f"{e.virtual_size / 1024**3:.1f}G", e.sha256[:12], str(e.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def _sort_key(e: CatalogImage) -> tuple[str, str, tuple[int, ...]]:
    base = e.ref.rsplit(":", 1)[0] if e.kind is SourceType.PlatformImage else e.ref.rsplit("/", 1)[0]
    return (str(e.kind), base.casefold(), e.version_key)


def _rm(args: argparse.Namespace) -> int:
    entry = Catalog().remove(args.ref)
    log.info("removed %s (%s)", entry.ref, entry.path)
    return 0
