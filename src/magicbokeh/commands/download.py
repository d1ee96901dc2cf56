"""``magicbokeh download``: fetch SD 2.1-base and the released weights, convert, install.

Sources are Hugging Face Hub ids or local folders with the same files; the result lands in
the model home (``$MAGICBOKEH_HOME``, default ``~/.cache/magicbokeh``), where ``--engine auto``
and ``--depth auto`` find it. ``--lpips [vgg] [alex]`` installs the LPIPS weights instead
(torchvision's ImageNet backbones and the lpips package's v0.1 heads, hash-checked) into
``<model home>/lpips``, from the web or from local copies given with ``--lpips-from``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_subparser(commands: argparse._SubParsersAction) -> None:
    from magicbokeh.install import DEFAULT_BASE_REPO, DEFAULT_RELEASE_REPO  # light: no torch

    p = commands.add_parser(
        "download",
        help="fetch and install the MagicBokeh weights (needs internet access to the Hub)",
        description="Fetch Stable Diffusion 2.1-base and the released MagicBokeh weights from "
        "the Hugging Face Hub (or local folders), convert and install them.",
    )
    p.add_argument("--base-repo", default=DEFAULT_BASE_REPO, metavar="ID|DIR")
    p.add_argument("--release-repo", default=DEFAULT_RELEASE_REPO, metavar="ID|DIR")
    p.add_argument(
        "--home", type=Path, metavar="DIR", help="model home (default: $MAGICBOKEH_HOME)"
    )
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="Hugging Face download cache")
    p.add_argument("--no-depth", action="store_true", help="skip the depth model (DAdepth.pth)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model")
    p.add_argument(
        "--lpips",
        nargs="*",
        choices=("vgg", "alex"),
        metavar="NET",
        help="install the LPIPS weights of NET (vgg, alex; both when none is named) instead of "
        "the MagicBokeh model",
    )
    p.add_argument(
        "--lpips-from",
        nargs="+",
        default=[],
        metavar="PATH",
        help="local LPIPS weight files or folders to install from (e.g. "
        "~/.cache/torch/hub/checkpoints and the lpips package's weights/v0.1); nothing is "
        "downloaded then",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.lpips is not None or args.lpips_from:
        return run_lpips(args)
    from magicbokeh.extras import require

    require("diffusion", "magicbokeh download")
    from magicbokeh.api import DTYPES
    from magicbokeh.install import install
    from magicbokeh.runtime import model_home

    target = install(
        args.home or model_home(),
        base=args.base_repo,
        release=args.release_repo,
        depth=not args.no_depth,
        overwrite=args.overwrite,
        dtype=DTYPES[args.dtype],
        cache_dir=args.cache_dir,
    )
    print(f"installed MagicBokeh into {target}")
    return 0


def run_lpips(args: argparse.Namespace) -> int:
    from magicbokeh.metrics.lpips_weights import LPIPS_DIR, install_lpips
    from magicbokeh.runtime import model_home

    nets = args.lpips or ["vgg", "alex"]
    folder = (args.home or model_home()) / LPIPS_DIR
    files = install_lpips(nets, folder=folder, sources=args.lpips_from, overwrite=args.overwrite)
    print(f"installed the LPIPS weights ({', '.join(nets)}) into {folder}: ", end="")
    print(", ".join(f.name for f in files))
    return 0
