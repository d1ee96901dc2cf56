"""The ``magicbokeh`` command: a thin layer over the Python API.

Sub-commands live in their own modules and are imported only when run, so ``magicbokeh
--help`` and ``magicbokeh COMMAND --help`` start without loading torch or the models. Each
module in :data:`COMMANDS` defines ``add_subparser(subparsers)``, which registers the command
under the name it is listed with here.

Exit codes: 0 success, 2 bad input or impossible request (one ``error:`` line, no traceback,
nothing written), 130 interrupted.

Run as the program, the commands in :data:`QUICK_EXIT` end the process as soon as they
return: the exit handlers run and the standard streams are flushed, but the interpreter does
not tear down every module and object one by one, which after a 12 MP render costs almost a
second with torch loaded. Their outputs are complete and closed by then.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from magicbokeh import __version__
from magicbokeh.errors import MagicBokehError

#: name → (module that registers it, one-line help shown by ``magicbokeh --help``).
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("magicbokeh.commands.render", "render photos with lens bokeh"),
    "demo": ("magicbokeh.commands.demo", "render the bundled photo at several settings"),
    "convert-official": (
        "magicbokeh.commands.convert",
        "convert the released lora.pkl (+ SD 2.1-base, DAdepth.pth) to this package's format",
    ),
    "download": (
        "magicbokeh.commands.download",
        "fetch and install the MagicBokeh weights (needs internet access to the Hub)",
    ),
    "degrade": (
        "magicbokeh.degrade.command",
        "make realistic low-quality versions of photos (Real-ESRGAN degradation)",
    ),
    "synth": ("magicbokeh.data.command", "build a synthetic bokeh training set"),
    "eval": ("magicbokeh.eval.command", "score engines and models on benchmark protocols"),
    "make-ebb400lq": (
        "magicbokeh.eval.ebb400lq",
        "build the EBB400-LQ benchmark from the EBB! dataset (seeded, with a manifest)",
    ),
    "train": (
        "magicbokeh.train.command",
        "train MagicBokeh: SR pre-training, then alternating bokeh/SR training",
    ),
    "export": (
        "magicbokeh.train.export_command",
        "export a training checkpoint as a model folder or a released-format file",
    ),
    "app": ("magicbokeh.commands.app", "open the web app: click to focus, drag the aperture"),
    "sweep": (
        "magicbokeh.commands.sweep",
        "animate a focus pull or an aperture ramp (MP4, GIF, WebP)",
    ),
}


#: Commands whose process ends right after they return, when run as the program (see above).
#: Not ``train`` (distributed runs and TensorBoard writers close themselves at teardown) nor
#: ``app`` (a server).
QUICK_EXIT = frozenset(
    {"render", "demo", "sweep", "degrade", "synth", "eval", "make-ebb400lq", "export"}
)


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (its first non-option word), if it is a known one."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None, *, all_commands: bool = False) -> argparse.ArgumentParser:
    """The argument parser; the full sub-parser is built for ``only`` (or every command).

    Other commands get a placeholder that carries their help line, so listing them costs no
    imports.
    """
    parser = argparse.ArgumentParser(
        prog="magicbokeh",
        description="Super-resolution and controllable lens bokeh in one pass.",
    )
    parser.add_argument("--version", action="version", version=f"magicbokeh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_line) in COMMANDS.items():
        if all_commands or name == only:
            importlib.import_module(module).add_subparser(commands)
        else:
            commands.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Run as the program (``argv`` None), it first tunes the process's memory allocator for
    image-sized buffers (:mod:`magicbokeh.allocator`), and after a command in
    :data:`QUICK_EXIT` it ends the process itself instead of returning (see the module
    docstring).
    """
    program = argv is None
    if program:
        from magicbokeh.allocator import tune_allocator

        tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    code = _run(args)
    if program and args.command in QUICK_EXIT:
        _exit_now(code)
    return code


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; expected failures become exit codes with one line."""
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


def _exit_now(code: int) -> NoReturn:
    """End the process with ``code`` after the exit handlers and a flush of the standard
    streams, without the interpreter's module-by-module teardown."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # None, a closed stream or a closed pipe: nothing more can reach it.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
