"""``magicbokeh train depth``: a degradation-aware Depth Anything V2 by self-distillation."""

from __future__ import annotations

import argparse
from pathlib import Path

from magicbokeh.train.options import add_run_options, finish_parser


def model_source(text: str) -> Path | str:
    """A local file or folder as a path (stored absolute), anything else as a Hub id."""
    path = Path(text).expanduser()
    return path if path.exists() else text


def add_subparser(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "depth",
        help="degradation-aware Depth Anything V2 by self-distillation from a teacher",
        description="MagicBokeh §3.4: a student copy of a Depth Anything V2 teacher learns to "
        "give, from Real-ESRGAN-degraded crops, the encoder features and (scale-and-shift "
        "invariant) disparity the frozen teacher gives on the clean crops. See docs/depth.md.",
    )
    g = p.add_argument_group("teacher, data and loss")
    g.add_argument(
        "--teacher",
        type=model_source,
        metavar="MODEL",
        help="Depth Anything V2: transformers folder, Hub id, original .pth or DAdepth.pth",
    )
    g.add_argument(
        "--data", type=Path, nargs="+", metavar="DIR", help="clean photos: folders or .txt lists"
    )
    g.add_argument("--val-data", type=Path, nargs="+", metavar="DIR", help="held-out photos")
    g.add_argument(
        "--resolution",
        type=int,
        default=518,
        metavar="PX",
        help="training crop side, a multiple of 14 (default 518, as Depth Anything)",
    )
    g.add_argument(
        "--feature-layers",
        default="auto",
        metavar="auto|i,j,k,l",
        help="0-based encoder blocks whose features are distilled (default auto: the four "
        "the DPT head taps)",
    )
    g.add_argument("--feature-weight", type=float, default=1.0, metavar="W", help="(default 1)")
    g.add_argument("--output-weight", type=float, default=1.0, metavar="W", help="(default 1)")
    g.add_argument(
        "--lr", type=float, default=5e-6, help="encoder learning rate (default 5e-6, as DA-V2)"
    )
    g.add_argument(
        "--lr-head",
        type=float,
        default=5e-5,
        metavar="LR",
        help="DPT head learning rate (default 5e-5, 10× the encoder's, as DA-V2)",
    )
    g.add_argument("--freeze-encoder", action="store_true", help="train the DPT head only")
    g.add_argument("--freeze-head", action="store_true", help="train the encoder only")
    g.add_argument(
        "--degradation-scale",
        type=int,
        default=4,
        metavar="S",
        help="Real-ESRGAN degradation factor of the student's input, resized back (default 4)",
    )
    add_run_options(p, steps=20_000, batch_size=4)
    finish_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.train.command import run_task
    from magicbokeh.train.depth_task import DepthDistillTask

    return run_task(args, DepthDistillTask)
