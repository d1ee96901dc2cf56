"""``magicbokeh eval depth``: Depth Anything V2 models on NYUv2 / KITTI, clear and degraded.

Writes ``REPORT_DIR/report.json`` (protocol constants, one row per model and column,
per-image values, skipped pairs, versions) and ``REPORT_DIR/report.md`` (the table); the
default REPORT_DIR is ``reports/depth-<dataset>``.
See :mod:`magicbokeh.eval.depth` for the protocol and :mod:`magicbokeh.eval.depth_data` for
the accepted folder layouts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_REPORT_DIR = "reports/depth-<dataset>"


def add_subparser(protocols: argparse._SubParsersAction) -> None:
    """Register ``depth`` under ``magicbokeh eval`` (sets ``func=run``)."""
    p = protocols.add_parser(
        "depth",
        help="relative depth on NYUv2 / KITTI, clear and Real-ESRGAN-degraded",
        description="Score Depth Anything V2 models with the relative-depth protocol "
        "(least-squares scale and shift in disparity space) on NYUv2 (Eigen crop, 0.001-10 m) "
        "or KITTI (Garg crop, 0.001-80 m), on clear and degraded images.",
    )
    p.add_argument("--dataset", choices=("nyu", "kitti"), required=True, help="test set")
    p.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="dataset root folder (not fetched)"
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="MODEL",
        help="transformers folder, Hub id, or original .pth (e.g. DAdepth.pth); repeat to compare",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="REPORT_DIR",
        help=f"folder for report.json and report.md (default {DEFAULT_REPORT_DIR})",
    )
    p.add_argument(
        "--degrade-seed",
        type=int,
        default=0,
        metavar="S",
        help="base seed of the Degrade column (default 0)",
    )
    p.add_argument(
        "--save-predictions",
        type=Path,
        metavar="DIR",
        help="write {clear,degrade}/<name>.npy (aligned depth, m) and <name>_disparity.npy",
    )
    p.add_argument(
        "--split",
        type=Path,
        metavar="FILE",
        help="list of 'IMAGE DEPTH' lines relative to --data (e.g. the Eigen test split)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=518,
        metavar="PX",
        help="network input lower bound in px, as the released inference (default 518)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Find the pairs, load the models, score them and write the report."""
    from magicbokeh.extras import require

    require("diffusion", "the depth benchmark", ("transformers",))

    from magicbokeh.depth.depth_anything import DepthAnythingEstimator
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.eval.depth import (
        REPORT_FILES,
        evaluate_depth,
        model_labels,
        report_json,
        write_report,
    )
    from magicbokeh.eval.depth_data import PROTOCOLS, find_samples, probe_samples
    from magicbokeh.install import staged_folder
    from magicbokeh.io.atomic import ensure_writable
    from magicbokeh.runtime import resolve_device

    protocol = PROTOCOLS[args.dataset]
    default = DEFAULT_REPORT_DIR.replace("<dataset>", protocol.name)
    out_dir = Path(args.output or default).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise MagicBokehError(f"-o {out_dir} is a file; give a folder for the report")
    for name in REPORT_FILES:
        ensure_writable(out_dir / name, overwrite=args.overwrite)
    predictions = None if args.save_predictions is None else args.save_predictions.expanduser()
    if predictions is not None and predictions.exists() and not args.overwrite:
        raise MagicBokehError(
            f"{predictions} already exists: pass --overwrite to replace it or choose another DIR"
        )
    if args.input_size < 14:
        raise MagicBokehError(f"--input-size must be at least 14 px, got {args.input_size}")
    device = resolve_device(args.device)
    layout, samples = find_samples(protocol, args.data, args.split)
    usable, skipped = probe_samples(samples)
    if not usable:
        raise MagicBokehError(
            f"none of the {len(samples)} test pairs in {args.data} can be read "
            f"(first: {skipped[0]['reason']})"
        )
    if skipped and not args.quiet:
        print(f"skipping {len(skipped)} unreadable test pairs", file=sys.stderr)
    labels = model_labels(args.model)
    estimators = {
        label: DepthAnythingEstimator.from_pretrained(
            source, device=device, input_size=args.input_size
        )
        for label, source in labels.items()
    }

    def evaluate(predictions: Path | None):
        return evaluate_depth(
            estimators,
            samples,
            protocol,
            models=labels,
            degrade_seed=args.degrade_seed,
            predictions=predictions,
            progress=not args.quiet,
        )

    if predictions is None:
        benchmark = evaluate(None)
    else:
        with staged_folder(predictions, overwrite=args.overwrite) as staging:
            benchmark = evaluate(staging)
    data = {
        "root": str(Path(args.data).expanduser().resolve()),
        "layout": layout,
        "split": str(args.split) if args.split else None,
        "pairs": len(samples),
        "scored": len(next(iter(benchmark.per_image.values()))),
        "device": str(device),
        "input_size": args.input_size,
    }
    report = report_json(benchmark, data=data, degrade_seed=args.degrade_seed)
    paths = write_report(report, out_dir, overwrite=args.overwrite)
    if not args.quiet:
        note = f", skipped {len(benchmark.skipped)}" if benchmark.skipped else ""
        print(f"scored {data['scored']} images{note}; wrote {paths[1]}", file=sys.stderr)
    return 0
