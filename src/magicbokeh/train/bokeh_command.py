"""``magicbokeh train bokeh``: the alternating bokeh/SR stage (or ``--joint``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from magicbokeh.train.command import task_runner
from magicbokeh.train.model_options import add_model_options
from magicbokeh.train.options import add_run_options, finish_parser


def add_subparser(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "bokeh",
        help="alternating stage: bokeh phases (ControlNet + bokeh LoRA) and SR phases (SR LoRA)",
        description="The alternating training of MagicBokeh (paper §3.2): bokeh phases train "
        "only the ControlNet and the focus-aware attention's bokeh LoRA on synthetic bokeh "
        "pairs; SR phases train only the UNet's SR LoRA (and conv_in) on photos degraded on "
        "the fly, with an all-zero defocus map and no attention mask.",
    )
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--init",
        type=Path,
        metavar="MODEL_OR_CHECKPOINT",
        help="starting model: a model folder, a `train sr` run (its last checkpoint) or one of "
        "its checkpoints/step-N folders",
    )
    g.add_argument("--bokeh-data", type=Path, metavar="DIR", help="a `magicbokeh synth` folder")
    g.add_argument(
        "--sr-data", type=Path, nargs="+", metavar="DIR", help="HQ photos: folders or .txt lists"
    )
    g.add_argument("--val-bokeh-data", type=Path, metavar="DIR", help="held-out synth folder")
    g.add_argument("--val-sr-data", type=Path, nargs="+", metavar="DIR", help="held-out photos")
    g.add_argument(
        "--cycle",
        default="bokeh:1000,sr:1000",
        metavar="bokeh:N,sr:M",
        help="steps per phase, repeated (default bokeh:1000,sr:1000)",
    )
    g.add_argument(
        "--lr-bokeh", type=float, default=5e-5, help="bokeh-phase learning rate (default 5e-5)"
    )
    g.add_argument(
        "--lr-sr", type=float, default=5e-6, help="SR-phase learning rate (default 5e-6)"
    )
    g.add_argument(
        "--no-fama",
        action="store_true",
        help="ablation: never apply the focus-aware attention mask (paper Table 2, w/o FAMA)",
    )
    g.add_argument(
        "--joint",
        action="store_true",
        help="ablation: no alternation, bokeh and SR parts train together on mixed batches "
        "(paper Table 2, w/o Strategy)",
    )
    add_model_options(p)
    add_run_options(p, steps=20_000, batch_size=4)
    finish_parser(p)
    p.set_defaults(func=task_runner("magicbokeh.train.model_tasks:BokehTask"))
