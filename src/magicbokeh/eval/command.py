"""``magicbokeh eval PROTOCOL ...``: score engines and models on benchmark protocols.

Each protocol is a module in :data:`SUBCOMMANDS` with ``add_subparser(subparsers)``; it is
imported only when ``eval`` runs, and its own heavy imports wait until its ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib

#: protocol name → module that registers it under that name.
SUBCOMMANDS: dict[str, str] = {
    "bokeh": "magicbokeh.eval.bokeh",
    "sr": "magicbokeh.eval.sr",
    "compare": "magicbokeh.eval.compare",
    "depth": "magicbokeh.eval.depth_command",
}


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval",
        help="score engines and models on benchmark protocols",
        description="Score engines and models on benchmark protocols and write reports.",
    )
    protocols = p.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_subparser(protocols)
