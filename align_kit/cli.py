"""``align-kit`` command line. Errors caused by the user print one line and exit 2; ``--debug`` shows tracebacks."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from align_kit.commands import MODULES
from align_kit.errors import AlignKitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align-kit", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    data = sub.add_parser("data", help="convert, inspect, clean, dedup and decontaminate data")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    for name in MODULES:  # a module that fails to import raises here: a broken command is never left out
        module = importlib.import_module(f"align_kit.commands.{name}")
        if not callable(getattr(module, "register", None)):
            raise TypeError(f"{module.__name__} is in the commands package but defines no register(sub, data_sub)")
        module.register(sub, data_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except AlignKitError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a full disk is the user's machine, not a bug: one line, and what happens on the re-run
        print(f"error: no space left on the device while writing {exc.filename or 'output'}; free space (or "
              f"point output_dir elsewhere) and run the same command again: it resumes from the last complete "
              f"checkpoint", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
