"""``magicbokeh eval sr``: score super-resolution on LQ/HQ pairs (RealSR, DRealSR: the paper's
supplementary Table s2).

Methods: ``diffusion`` (the learned engine with an all-zero defocus map, i.e. restoration
only, on the bicubic-upsampled input), ``lanczos``, ``bicubic``, or another method's outputs
(``outputs:DIR``). ``--y-channel`` and ``--crop-border`` select the PSNR/SSIM convention of
OSEDiff-style papers (see :mod:`magicbokeh.metrics.psnr_ssim`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    import numpy as np

    from magicbokeh.errors import MagicBokehError
    from magicbokeh.eval.engines import (
        SR_METHODS,
        Item,
        OutputsEngine,
        make_sr_method,
        output_files,
        resize_rgb,
    )
    from magicbokeh.eval.layouts import find_sr_pairs
    from magicbokeh.eval.protocol import (
        common_checks,
        make_scorer,
        parse_size,
        plan_sizes,
        print_summary,
    )
    from magicbokeh.eval.run import Evaluation, run_evaluation
    from magicbokeh.eval.scoring import parse_metrics
    from magicbokeh.io import load_image
    from magicbokeh.runtime import resolve_device

    common_checks(args)
    metrics = parse_metrics(args.metrics)
    size = parse_size(args.size)
    if args.crop_border < 0:
        raise MagicBokehError(f"--crop-border must be ≥ 0, got {args.crop_border}")
    if not (args.method in SR_METHODS or args.method.startswith("outputs:")):
        raise MagicBokehError(f"unknown method {args.method!r}: use {METHOD_HELP}")
    pair_set = find_sr_pairs(args.data, allow_missing=args.allow_missing)
    pairs = pair_set.pairs[: args.limit] if args.limit else pair_set.pairs
    outputs = None
    if args.method.startswith("outputs:"):
        outputs, missing = output_files(args.method.split(":", 1)[1], [p.stem for p in pairs])
        if missing and not args.allow_missing:
            raise MagicBokehError(
                f"{len(missing)} pairs have no output in {args.method[8:]} "
                f"({', '.join(missing[:5])}); pass --allow-missing to score the others only"
            )
        if missing:
            pair_set.unmatched["outputs"] = missing
            pairs = [p for p in pairs if p.stem in outputs]
    if not pairs:
        raise MagicBokehError("no pairs are left to score")
    plan = plan_sizes(
        pairs, scale=args.scale, size=size, resize_target=args.resize_target, outputs=outputs
    )
    device = resolve_device(args.device)
    pair_set.pairs = pairs

    def prepare(pair) -> Item:
        scale, out_size = plan[pair.stem]
        image = load_image(pair.input).rgb
        target = load_image(pair.target).rgb
        if size is not None:
            target = resize_rgb(target, size, "bicubic")
            image = resize_rgb(image, (round(size[0] / scale), round(size[1] / scale)), "bicubic")
        if target.shape[:2] != out_size:
            target = resize_rgb(target, out_size, "bicubic")
        return Item(pair.stem, np.ascontiguousarray(image), out_size, target, aperture=0.0)

    if outputs is not None:
        engine = OutputsEngine(outputs)
        label = f"outputs:{Path(args.method[8:]).expanduser().resolve().name}"
    else:
        engine = make_sr_method(
            args.method,
            device=device,
            batch_size=args.batch_size,
            model=args.model,
            dtype=args.dtype,
            tile_size=args.tile_size,
        )
        label = args.method
    settings = {
        "protocol": "sr",
        "data": str(Path(args.data).expanduser().resolve()),
        "layout": pair_set.layout,
        "stems": [p.stem for p in pairs],
        "method_label": label,
        "method": args.method,
        "model": str(args.model) if args.model else None,
        "dtype": args.dtype,
        "tile_size": args.tile_size,
        "scale": args.scale or "target/input ratio",
        "size": args.size,
        "resize_target": bool(args.resize_target),
        "metrics": metrics,
        "y_channel": bool(args.y_channel),
        "crop_border": args.crop_border,
        "device": str(device),
    }
    evaluation = Evaluation(
        "sr",
        pair_set,
        settings,
        prepare,
        engine,
        lambda: make_scorer(args, device),
        args.batch_size,
    )
    result = run_evaluation(
        evaluation,
        args.output,
        overwrite=args.overwrite,
        save_outputs=args.save_outputs,
        quiet=args.quiet,
    )
    print_summary(result, args.output, args.quiet)
    return 0
