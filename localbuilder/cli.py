"""Command line: one argparse parser, with one module per verb in ``localbuilder/commands/``.

Each verb module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; they
are discovered here, so adding a verb never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType

from localbuilder import __version__, commands
from localbuilder.commands import Parser


def verb_modules() -> list[ModuleType]:
    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"localbuilder.commands.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="localbuilder",
        description=(
            "Build Azure VM Image Builder (AIB) templates locally: boot the source image in QEMU or "
            "libvirt, run the customize steps, deprovision, and write a fixed VHD."
        ),
    )
    parser.add_argument("--version", action="version", version=f"localbuilder {__version__}")
    parser.add_argument("--debug", action="store_true", help="log everything and show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the console")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    for mod in verb_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_verb=mod)
    return parser
