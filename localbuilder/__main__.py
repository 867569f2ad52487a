"""Entry point: parse the command line, set up logging and signals, map exceptions to exit codes.

Exit codes: 0 success, 1 failure (build failed, command failed), 2 invalid input (template or usage),
130 canceled. A traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from localbuilder.cli import build_parser
from localbuilder.errors import Canceled, LocalBuilderError
from localbuilder.log import setup_logging

log = logging.getLogger("localbuilder")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind through every `finally`/ExitStack exactly as Ctrl-C does, so guests are stopped.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    setup_logging(debug=debug)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        setup_logging(debug=args.debug, quiet=args.quiet)
        if getattr(args, "_verb", None) is None:
            parser.print_help(sys.stderr)
            return 2
        signal.signal(signal.SIGTERM, _on_sigterm)
        return int(args._verb.run(args))
    except LocalBuilderError as exc:
        log.error("%s", exc.message, exc_info=exc if debug else None)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("canceled")
        return Canceled.exit_code
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a bare traceback
        log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=exc if debug else None)
        print(
            "hint: this is a bug in localbuilder; rerun with --debug and report the traceback",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
