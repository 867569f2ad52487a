"""``localbuilder inspect IMAGE``: is this image generalized? Checked offline, without booting it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localbuilder.errors import UsageError
from localbuilder.inspect import inspect_image

NAME = "inspect"
HELP = "check offline (no boot, no mount, no root) that a Linux image is generalized"
DESCRIPTION = (
    "Read the image's Linux root filesystem without booting or mounting it (MBR/GPT parsed in Python, "
    "files read with debugfs) and check that it is generalized: build user and its home gone, no SSH "
    "host keys, no cloud-init instance state, empty /etc/machine-id, no cloud-init sudoers file, no "
    "waagent provisioning state; authorized_keys files and /tmp leftovers are listed. Fixed VHD and raw "
    "images are read in place; qcow2/VMDK/VHDX/dynamic VHD go through a temporary raw copy. Linux on "
    "ext2/3/4 only. Exit status: 0 generalized (or not inspectable, e.g. Windows: see the message), "
    "1 not generalized."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="disk image: fixed VHD, raw, qcow2, …")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--build-user", metavar="NAME", help="the build (SSH) user that must be gone")
    parser.add_argument(
        "--build-key",
        metavar="FILE",
        type=Path,
        help="OpenSSH public key of the build: fail if any authorized_keys still holds it",
    )


def run(args: argparse.Namespace) -> int:
    build_key = None
    if args.build_key is not None:
        try:
            build_key = args.build_key.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(
                f"--build-key: cannot read {args.build_key}: {exc.strerror}",
                hint="Give the path of an OpenSSH public key file (…/id_ed25519.pub).",
            ) from exc
        if not build_key:
            raise UsageError(
                f"--build-key: {args.build_key} is empty", hint="Give an OpenSSH public key file."
            )
    report = inspect_image(args.image, build_user=args.build_user, build_key=build_key)
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.render())
    return 1 if report.inspected and not report.generalized else 0
