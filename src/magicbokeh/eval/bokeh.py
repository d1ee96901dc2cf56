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
    from magicbokeh.data.datasets import files_by_stem
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
    found = files_by_stem(folder, DEPTH_READ_EXTENSIONS)
    lacking = [p.stem for p in pairs if p.stem not in found]
    if lacking and not allow_missing:
        raise MagicBokehError(
            f"{len(lacking)} pairs have no disparity file in {folder} ({', '.join(lacking[:5])}); "
            "pass --allow-missing to score the others only"
        )
    return found, f"files in {folder}", lacking


def run(args: argparse.Namespace) -> int:
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.eval.ebb400lq import DEGRADE_SCALE, degrade_input
    from magicbokeh.eval.engines import BOKEH_ENGINES, Item, OutputsEngine, make_bokeh_engine
    from magicbokeh.eval.layouts import find_bokeh_pairs
    from magicbokeh.eval.protocol import (
        common_checks,
        common_settings,
        engine_options,
        evaluate,
        load_pair,
        plan_run,
    )
    from magicbokeh.focus import FocusSpec
    from magicbokeh.io import load_depth, load_image, match_depth_to_image

    size = common_checks(args)
    if not (args.engine in BOKEH_ENGINES or args.engine.startswith("outputs:")):
        raise MagicBokehError(f"unknown engine {args.engine!r}: use {ENGINE_HELP}")
    if not args.fit_aperture and not 0 <= args.aperture <= 256:
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
    outputs, label, plan, device = plan_run(args, args.engine, pair_set, pairs, size)

    def prepare(pair) -> Item:
        image, target = load_pair(pair, plan, size)
        if args.degrade:
            image = degrade_input(image, args.seed, pair.stem)[0]
        disparity = None
        if depth_files.get(pair.stem) is not None:
            source = depth_files[pair.stem]
            disparity = match_depth_to_image(
                load_depth(source), *image.shape[:2], source=str(source)
            )
        spec = FocusSpec("auto")
        if focus == "masks":
            mask = load_image(pair.focus)
            selected = mask.rgb.max(axis=2)
            spec = FocusSpec("mask", mask=selected if mask.alpha is None else selected * mask.alpha)
        k = None if args.fit_aperture else args.aperture
        return Item(pair.stem, image, plan[pair.stem][1], target, disparity, spec, k)

    if outputs is not None:
        engine = OutputsEngine(outputs)
    else:
        engine = make_bokeh_engine(args.engine, **engine_options(args, device))
    degrade = {"seed": args.seed, "scale": DEGRADE_SCALE, "resize_back": True}
    settings = {
        "protocol": "bokeh",
        **common_settings(args, pair_set, label, device),
        "engine": args.engine,
        "depth": depth_text if outputs is None else "not used (outputs are given)",
        "focus": "focal-region masks (focus/)" if focus == "masks" else "automatic",
        "aperture": None if args.fit_aperture else args.aperture,
        "fit_aperture": bool(args.fit_aperture),
        "degrade": degrade if args.degrade else None,
    }
    return evaluate(args, "bokeh", pair_set, settings, prepare, engine, device)
