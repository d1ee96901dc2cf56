"""``magicbokeh export RUN [--step N] -o OUT [--format F]``: ship a checkpoint of a run.

Formats are a registry (:data:`FORMATS`): name → (``module:function``, the run tasks it
accepts, help). The function is called as ``function(run_folder, step, output, overwrite)``
and returns ``(path written, step exported)``; it writes atomically. :data:`DEFAULT_FORMATS`
gives each task's default. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

#: format → (writer "module:function", tasks whose runs it exports, one-line help).
FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "magicbokeh": (
        "magicbokeh.train.model_export:export_model_folder",
        ("sr", "bokeh"),
        "model folder (network/ + magicbokeh.json) for `render --model`",
    ),
    "released": (
        "magicbokeh.train.model_export:export_released",
        ("sr", "bokeh"),
        "lora.pkl in the layout the released inference script loads",
    ),
    "transformers": (
        "magicbokeh.train.depth_task:export_transformers",
        ("depth",),
        "Depth Anything V2 transformers folder (config.json + model.safetensors)",
    ),
    "original": (
        "magicbokeh.train.depth_task:export_original",
        ("depth",),
        "DAdepth.pth in the original Depth Anything V2 layout the released code reads",
    ),
}
#: task → the format used without --format.
DEFAULT_FORMATS: dict[str, str] = {
    "sr": "magicbokeh",
    "bokeh": "magicbokeh",
    "depth": "transformers",
}


def add_subparser(commands: argparse._SubParsersAction) -> None:
    formats = "; ".join(f"{name}: {help_line}" for name, (_, _, help_line) in FORMATS.items())
    p = commands.add_parser(
        "export",
        help="export a training checkpoint as a model folder or a released-format file",
        description="Export checkpoint N (default: the last) of a training run. "
        f"Formats: {formats}.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder made by `magicbokeh train`")
    p.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: the last)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    p.add_argument(
        "--format",
        choices=sorted(FORMATS),
        help="output format (default: the run's usual one, magicbokeh for model runs)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.extras import require
    from magicbokeh.train.run_folder import RunFolder

    require("diffusion", "export")
    folder = RunFolder(args.run)
    task = folder.read_run().get("task")
    name = args.format or DEFAULT_FORMATS.get(task)
    if name is None:
        raise MagicBokehError(f"{args.run} is a `train {task}` run; no export format knows it")
    target, tasks, _ = FORMATS[name]
    if task not in tasks:
        usable = [n for n, (_, t, _) in FORMATS.items() if task in t]
        raise MagicBokehError(
            f"--format {name} does not apply to a `train {task}` run; use "
            f"{' or '.join(usable) or 'another tool'}"
        )
    module, function = target.split(":")
    written, step = getattr(importlib.import_module(module), function)(
        folder, args.step, args.output, args.overwrite
    )
    print(f"exported step {step} of {folder.root} as {name}: {written}", file=sys.stderr)
    return 0
