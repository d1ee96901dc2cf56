"""The ``magicbokeh`` command: a thin layer over the Python API.

Exit codes: 0 success, 2 bad input or impossible request (one ``error:`` line, no traceback,
nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from magicbokeh import __version__
from magicbokeh.errors import MagicBokehError

#: Modules that each register one sub-command with ``add_subparser(subparsers)``.
COMMANDS = (
    "magicbokeh.commands.render",
    "magicbokeh.commands.demo",
    "magicbokeh.commands.convert",
    "magicbokeh.commands.download",
    "magicbokeh.degrade.command",
    "magicbokeh.data.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magicbokeh",
        description="Super-resolution and controllable lens bokeh in one pass.",
    )
    parser.add_argument("--version", action="version", version=f"magicbokeh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_subparser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MagicBokehError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        text = str(error)
        if not isinstance(error, MemoryError) and not (
            "out of memory" in text or "can't allocate memory" in text
        ):
            raise
        print(
            "error: out of memory: use a smaller --scale, --device cpu, or a machine with more "
            "memory",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
