"""``magicbokeh train sr``: stage 1, SR pre-training from Stable Diffusion 2.1-base."""

from __future__ import annotations

import argparse
from pathlib import Path

from magicbokeh.train.command import task_runner
from magicbokeh.train.model_options import add_model_options
from magicbokeh.train.options import add_run_options, finish_parser

#: OSEDiff's ``--neg_prompt`` (its training script's value).
OSEDIFF_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
    "signature, jpeg artifacts, deformed, lowres, over-smooth"
)


def add_subparser(tasks: argparse._SubParsersAction) -> None:
    p = tasks.add_parser(
        "sr",
        help="stage 1: SR pre-training (SR LoRA, VAE-encoder LoRA, conv_in) from SD 2.1-base",
        description="Stage 1 of MagicBokeh (paper §3.1): prune SD 2.1-base (mid block and "
        "cross-attention removed), add the SR LoRA to the UNet and the VAE encoder, and train "
        "them and the UNet's conv_in on photos degraded on the fly (Real-ESRGAN, scale 4, "
        "resized back) with L2 + LPIPS; optionally with OSEDiff's VSD regulariser (--vsd-weight).",
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--base", type=Path, metavar="SD21_DIR", help="Stable Diffusion 2.1-base folder")
    g.add_argument(
        "--data", type=Path, nargs="+", metavar="DIR", help="HQ photos: folders or .txt lists"
    )
    g.add_argument("--val-data", type=Path, nargs="+", metavar="DIR", help="held-out HQ photos")
    g.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5)")
    g.add_argument("--rank-unet", type=int, default=4, metavar="R", help="SR LoRA rank (default 4)")
    g.add_argument("--rank-vae", type=int, default=4, metavar="R", help="VAE LoRA rank (default 4)")
    g.add_argument(
        "--rank-bokeh",
        type=int,
        default=8,
        metavar="R",
        help="bokeh LoRA rank, created now and trained by `train bokeh` (default 8)",
    )
    add_model_options(p)
    add_vsd_options(p)
    add_run_options(p, steps=100_000, batch_size=4)
    finish_parser(p)
    p.set_defaults(func=task_runner("magicbokeh.train.model_tasks:SRTask"))


def add_vsd_options(parser: argparse.ArgumentParser) -> None:
    """OSEDiff's VSD regulariser (off by default; see docs/training.md)."""
    g = parser.add_argument_group(
        "VSD regulariser (OSEDiff's; off by default)",
        "Variational score distillation against the stock SD UNet, with a second, LoRA-tuned "
        "copy of it trained beside the model. Needs unet/ (with cross-attention), "
        "text_encoder/ and tokenizer/ in --base; adds two stock UNets to memory.",
    )
    g.add_argument(
        "--vsd-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the VSD loss (0 = off, nothing extra is loaded; OSEDiff: 1)",
    )
    g.add_argument(
        "--vsd-prompt",
        default="",
        metavar="TEXT",
        help="prompt of the score networks (default empty: SD's unconditional text; OSEDiff "
        "used per-image RAM tags)",
    )
    g.add_argument(
        "--vsd-negative-prompt",
        default=OSEDIFF_NEGATIVE_PROMPT,
        metavar="TEXT",
        help="negative prompt, the unconditional branch of the guidance (default: OSEDiff's)",
    )
    g.add_argument(
        "--vsd-cfg",
        type=float,
        default=7.5,
        metavar="S",
        help="classifier-free guidance scale of the frozen UNet (default 7.5)",
    )
    g.add_argument(
        "--vsd-rank",
        type=int,
        default=4,
        metavar="R",
        help="LoRA rank of the regulariser's trained UNet (default 4)",
    )
    g.add_argument(
        "--vsd-diffusion-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of the regulariser UNet's own diffusion loss (default 1)",
    )
