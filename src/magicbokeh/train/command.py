"""``magicbokeh train TASK ...``: train MagicBokeh (``sr``, ``bokeh``) and other models.

Each task is a module in :data:`SUBCOMMANDS` with ``add_subparser(subparsers)``; it is imported
only when ``train`` runs, and its heavy imports wait until the command runs
(:func:`task_runner`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

#: task name → module that registers it under that name.
SUBCOMMANDS: dict[str, str] = {
    "sr": "magicbokeh.train.sr_command",
    "bokeh": "magicbokeh.train.bokeh_command",
    "depth": "magicbokeh.train.depth_command",
}


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train MagicBokeh: SR pre-training, then alternating bokeh/SR training",
        description="Train models in run folders that survive crashes (resume with --resume). "
        "Runs on a CPU, a GPU, or `accelerate launch` over many GPUs. See docs/training.md.",
    )
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_subparser(tasks)


def task_runner(target: str) -> Callable[[argparse.Namespace], int]:
    """The ``func`` of a task's parser: :func:`run_task` with the ``"module:Class"`` task,
    imported only when the command runs."""

    def run(args: argparse.Namespace) -> int:
        module, name = target.split(":")
        return run_task(args, getattr(importlib.import_module(module), name))

    return run


def run_task(args: argparse.Namespace, make_task: Callable[[dict[str, Any]], Any]) -> int:
    """Resolve the settings, build the task with ``make_task(settings)`` and train it.

    Returns 0 when the run reached its last step, 130 when Ctrl-C stopped it (after writing a
    checkpoint).
    """
    from magicbokeh.extras import require

    require("train", "training")
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.train.options import resolve_settings, setting_defaults
    from magicbokeh.train.run_folder import RunFolder
    from magicbokeh.train.trainer import Trainer

    settings, _ = resolve_settings(args)
    if settings.get("output") is None:
        raise MagicBokehError("give the run folder with -o RUN")
    if args.resume:
        config = RunFolder(settings["output"]).resumable_config(args.task)
        settings, _ = resolve_settings(args, config["settings"])
    task = make_task(settings)
    defaults = setting_defaults(args)
    result = Trainer(task, settings, resume=args.resume, setting_defaults=defaults).run()
    if not settings["quiet"]:
        where = f"; last checkpoint {result.checkpoint}" if result.checkpoint else ""
        print(f"train {args.task}: step {result.step} in {result.run}{where}", file=sys.stderr)
    return 130 if result.interrupted else 0
