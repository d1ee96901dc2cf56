"""``magicbokeh eval bokeh``: score a bokeh engine (or another method's outputs) on pairs of
all-in-focus photos and real lens bokeh, e.g. EBB400-LQ (the paper's Table 1).

Per pair: the input (degraded on the fly with ``--degrade``), its disparity (``depth/`` of the
data, ``--depth DIR``, or estimated: ``auto``), the focus (the focal-region mask in ``focus/``,
or ``auto``), K (``--aperture``, or fitted to the target with ``--fit-aperture``), the engine,
then the metrics against the target. See :mod:`magicbokeh.eval.run` for the report folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from magicbokeh.eval.protocol import add_common_arguments

TABLE1_METRICS = "psnr,ssim,lpips,dists,musiq,maniqa,fid"
ENGINE_HELP = "physical, diffusion, lanczos+physical, diffusion+physical or outputs:DIR"


def add_subparser(protocols: argparse._SubParsersAction) -> None:
    p = protocols.add_parser(
        "bokeh",
        help="score bokeh rendering against real lens bokeh (EBB400-LQ, Table 1)",
        description="Score a bokeh engine, a two-stage baseline or another method's outputs on "
        "pairs of all-in-focus inputs and real bokeh targets; writes report.json, report.md and "
        "gallery.html.",
    )
    add_common_arguments(p, TABLE1_METRICS)
    p.add_argument(
        "--engine", default="physical", metavar="ENGINE", help=f"{ENGINE_HELP} (default physical)"
    )
    p.add_argument(
        "--depth",
        metavar="auto|DIR",
        help="disparity files by name (DIR) or estimated (auto); default: the data's depth/, "
        "else auto",
    )
    p.add_argument(
        "--focus",
        choices=("masks", "auto"),
        help="the data's focal-region masks (focus/) or automatic focus; default masks when "
        "present",
    )
    k = p.add_mutually_exclusive_group()
    k.add_argument("--aperture", type=float, default=32.0, metavar="K", help="K (default 32)")
    k.add_argument(
        "--fit-aperture",
        action="store_true",
        help="fit K per image to the target (an oracle; reported per image)",
    )
    p.add_argument(
        "--degrade",
        action="store_true",
        help="degrade the inputs first, as make-ebb400lq does (Real-ESRGAN, scale 4, resized back)",
    )
    p.add_argument("--seed", type=int, default=0, help="degradation seed (default 0)")
    p.set_defaults(func=run)


def _depth_files(args, pairs, allow_missing: bool):
    """stem → disparity file (or None for estimation), and a description for the report."""
    from magicbokeh.data.datasets import _by_stem
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.io.depth_files import DEPTH_READ_EXTENSIONS

    if args.depth == "auto":
        return dict.fromkeys((p.stem for p in pairs), None), "estimated (auto)", []
    if args.depth is None:
        if pairs and pairs[0].depth is not None:
            return {p.stem: p.depth for p in pairs}, "the data's depth/ files", []
        return dict.fromkeys((p.stem for p in pairs), None), "estimated (auto)", []
    folder = Path(args.depth).expanduser()
    if not folder.is_dir():
        raise MagicBokehError(f"--depth {folder} is neither 'auto' nor a folder")
    found = _by_stem(folder, DEPTH_READ_EXTENSIONS)
    lacking = [p.stem for p in pairs if p.stem not in found]
    if lacking and not allow_missing:
        raise MagicBokehError(
            f"{len(lacking)} pairs have no disparity file in {folder} ({', '.join(lacking[:5])}); "
            "pass --allow-missing to score the others only"
        )
    return {s: f for s, f in found.items()}, f"files in {folder}", lacking


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from magicbokeh.errors import MagicBokehError
    from magicbokeh.eval.ebb400lq import DEGRADE_SCALE, degrade_input
    from magicbokeh.eval.engines import (
        BOKEH_ENGINES,
        Item,
        OutputsEngine,
        make_bokeh_engine,
        output_files,
        resize_rgb,
    )
    from magicbokeh.eval.layouts import find_bokeh_pairs
    from magicbokeh.eval.protocol import (
        common_checks,
        make_scorer,
        parse_size,
        plan_sizes,
        print_summary,
    )
    from magicbokeh.eval.run import Evaluation, run_evaluation
    from magicbokeh.eval.scoring import parse_metrics
    from magicbokeh.focus import FocusSpec
    from magicbokeh.io import load_depth, load_image, match_depth_to_image
    from magicbokeh.runtime import resolve_device

    common_checks(args)
    parse_metrics(args.metrics)
    size = parse_size(args.size)
    if not (args.engine in BOKEH_ENGINES or args.engine.startswith("outputs:")):
        raise MagicBokehError(f"unknown engine {args.engine!r}: use {ENGINE_HELP}")
    if args.fit_aperture is False and not 0 <= args.aperture <= 256:
        raise MagicBokehError(f"--aperture K must be in 0..256, got {args.aperture:g}")
    pair_set = find_bokeh_pairs(args.data, allow_missing=args.allow_missing)
    pairs = pair_set.pairs
    depth_files, depth_text, lacking = _depth_files(args, pairs, args.allow_missing)
    if lacking:
        pair_set.unmatched["depth"] = lacking
        pairs = [p for p in pairs if p.stem not in lacking]
    has_masks = bool(pairs) and pairs[0].focus is not None
    focus = args.focus or ("masks" if has_masks else "auto")
    if focus == "masks" and not has_masks:
        raise MagicBokehError(
            f"--focus masks needs focal-region masks in {args.data}/focus/; use --focus auto"
        )
    pairs = pairs[: args.limit] if args.limit else pairs
    if not pairs:
        raise MagicBokehError("no pairs are left to score")
    outputs = None
    if args.engine.startswith("outputs:"):
        outputs, missing = output_files(args.engine.split(":", 1)[1], [p.stem for p in pairs])
        if missing and not args.allow_missing:
            raise MagicBokehError(
                f"{len(missing)} pairs have no output in {args.engine[8:]} "
                f"({', '.join(missing[:5])}); pass --allow-missing to score the others only"
            )
        if missing:
            pair_set.unmatched["outputs"] = missing
            pairs = [p for p in pairs if p.stem in outputs]
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
        if args.degrade:
            image = degrade_input(image, args.seed, pair.stem)[0]
        if target.shape[:2] != out_size:
            target = resize_rgb(target, out_size, "bicubic")
        disparity = None
        if depth_files.get(pair.stem) is not None:
            disparity = match_depth_to_image(
                load_depth(depth_files[pair.stem]),
                *image.shape[:2],
                source=str(depth_files[pair.stem]),
            )
        spec = FocusSpec("auto")
        if focus == "masks":
            mask = load_image(pair.focus)
            selected = mask.rgb.max(axis=2)
            spec = FocusSpec("mask", mask=selected if mask.alpha is None else selected * mask.alpha)
        return Item(
            pair.stem,
            np.ascontiguousarray(image),
            out_size,
            target,
            disparity,
            spec,
            None if args.fit_aperture else args.aperture,
        )

    options = {"device": device, "batch_size": args.batch_size, "model": args.model}
    options["tile_size"] = args.tile_size
    if outputs is not None:
        engine = OutputsEngine(outputs)
    else:
        engine = make_bokeh_engine(args.engine, dtype=args.dtype, **options)
    label = args.engine
    if outputs is not None:
        label = f"outputs:{Path(args.engine[8:]).expanduser().resolve().name}"
    settings = {
        "protocol": "bokeh",
        "data": str(Path(args.data).expanduser().resolve()),
        "layout": pair_set.layout,
        "stems": [p.stem for p in pairs],
        "method_label": label,
        "engine": args.engine,
        "model": str(args.model) if args.model else None,
        "dtype": args.dtype,
        "tile_size": args.tile_size,
        "depth": depth_text if outputs is None else "not used (outputs are given)",
        "focus": "focal-region masks (focus/)" if focus == "masks" else "automatic",
        "aperture": None if args.fit_aperture else args.aperture,
        "fit_aperture": bool(args.fit_aperture),
        "degrade": {
            "seed": args.seed,
            "scale": DEGRADE_SCALE,
            "resize_back": True,
        }
        if args.degrade
        else None,
        "scale": args.scale or "target/input ratio",
        "size": args.size,
        "resize_target": bool(args.resize_target),
        "metrics": parse_metrics(args.metrics),
        "y_channel": False,
        "crop_border": 0,
        "device": str(device),
    }
    evaluation = Evaluation(
        "bokeh",
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
