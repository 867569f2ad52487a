"""One module per CLI verb: ``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``.

``Parser`` is the argparse every verb's parser is made of (``cli.build_parser``); a verb that parses
more arguments later (``shell``'s options after SOURCE) uses it too.
"""

from __future__ import annotations

import argparse

from localbuilder.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() maps usage errors to exit 2 uniformly."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"See '{self.prog} --help'.")
