"""``magicbokeh eval sr``: score super-resolution on LQ/HQ pairs (RealSR, DRealSR: the paper's
supplementary Table s2).

Methods: ``diffusion`` (the learned engine with an all-zero defocus map, i.e. restoration
only, on the bicubic-upsampled input), ``lanczos``, ``bicubic``, or another method's outputs
(``outputs:DIR``). ``--y-channel`` and ``--crop-border`` select the PSNR/SSIM convention of
OSEDiff-style papers (see :mod:`magicbokeh.metrics.psnr_ssim`).
"""

from __future__ import annotations

import argparse

from magicbokeh.eval.protocol import add_common_arguments

TABLE_S2_METRICS = "psnr,ssim,lpips,dists,clipiqa,niqe,musiq,maniqa,fid"
METHOD_HELP = "diffusion, lanczos, bicubic or outputs:DIR"


def add_subparser(protocols: argparse._SubParsersAction) -> None:
    p = protocols.add_parser(
        "sr",
        help="score super-resolution on LQ/HQ pairs (RealSR, DRealSR; Table s2)",
        description="Score the learned engine as pure super-resolution, an interpolation "
        "baseline or another method's outputs on LQ/HQ pairs; writes report.json, report.md and "
        "gallery.html.",
    )
    add_common_arguments(p, TABLE_S2_METRICS)
    p.add_argument(
        "--method", default="diffusion", metavar="METHOD", help=f"{METHOD_HELP} (default diffusion)"
    )
    p.add_argument(
        "--crop-border",
        type=int,
        default=0,
        metavar="N",
        help="ignore N px at each side (PSNR/SSIM)",
    )
    p.add_argument(
        "--y-channel",
        action="store_true",
        help="PSNR/SSIM on the Y channel as pyiqa/OSEDiff report them (default 8-bit RGB)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.eval.engines import SR_METHODS, Item, OutputsEngine, make_sr_method
    from magicbokeh.eval.layouts import find_sr_pairs
    from magicbokeh.eval.protocol import (
        common_checks,
        common_settings,
        engine_options,
        evaluate,
        load_pair,
        plan_run,
    )

    size = common_checks(args)
    if args.crop_border < 0:
        raise MagicBokehError(f"--crop-border must be ≥ 0, got {args.crop_border}")
    if not (args.method in SR_METHODS or args.method.startswith("outputs:")):
        raise MagicBokehError(f"unknown method {args.method!r}: use {METHOD_HELP}")
    pair_set = find_sr_pairs(args.data, allow_missing=args.allow_missing)
    pairs = pair_set.pairs[: args.limit] if args.limit else pair_set.pairs
    outputs, label, plan, device = plan_run(args, args.method, pair_set, pairs, size)

    def prepare(pair) -> Item:
        image, target = load_pair(pair, plan, size)
        return Item(pair.stem, image, plan[pair.stem][1], target, aperture=0.0)

    if outputs is not None:
        engine = OutputsEngine(outputs)
    else:
        engine = make_sr_method(args.method, **engine_options(args, device))
    settings = {
        "protocol": "sr",
        **common_settings(args, pair_set, label, device),
        "method": args.method,
    }
    return evaluate(args, "sr", pair_set, settings, prepare, engine, device)
