"""Flags shared by ``train sr`` and ``train bokeh`` (the MagicBokeh network tasks)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Resolution, loss weights, LPIPS weights, latent sampling, degradation scale."""
    g = parser.add_argument_group("model and loss")
    g.add_argument(
        "--resolution",
        type=int,
        default=512,
        metavar="PX",
        help="training crop side, a multiple of 8 (default 512)",
    )
    g.add_argument("--l2-weight", type=float, default=1.0, metavar="W", help="(default 1)")
    g.add_argument(
        "--lpips-weight",
        type=float,
        default=2.0,
        metavar="W",
        help="LPIPS-VGG loss weight (default 2, as OSEDiff; 0 = L2 only, no LPIPS weights needed)",
    )
    g.add_argument(
        "--lpips-weights",
        type=Path,
        metavar="DIR",
        help="folder of the LPIPS VGG weights (default: the installed ones)",
    )
    g.add_argument(
        "--latent",
        choices=("sample", "mode"),
        default="sample",
        help="VAE latent: a posterior sample (as OSEDiff trains) or its mode (default sample)",
    )
    g.add_argument(
        "--degradation-scale",
        type=int,
        default=4,
        metavar="S",
        help="Real-ESRGAN degradation factor of SR items; LQ is resized back (default 4)",
    )
