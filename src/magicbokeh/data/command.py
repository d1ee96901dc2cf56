"""``magicbokeh synth``: build (or resume) a synthetic bokeh training set.

Each sample puts two random cut-out foregrounds in front of one random background crop,
gives the scene a disparity map (foreground planes nearer than a flat, tilted or smooth
background), draws K in [0, 32] and a focus target, ray-traces the bokeh ground truth and
degrades the all-in-focus image into the LQ input. See :mod:`magicbokeh.data.synth`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from magicbokeh.data.synth import SynthSettings, synthesize, write_preview
from magicbokeh.io import ensure_writable
from magicbokeh.runtime import resolve_device

RULES = """\
input rules:
  foregrounds  cut-outs with an alpha matte (RGBA PNG/TIFF/WebP). A foreground without a
               usable matte (no alpha, or alpha opaque or empty everywhere) stops the run with
               an error naming the file: mattes are never invented.
  unreadable   files that cannot be decoded are skipped, counted and logged.
  empty        a folder without images is an error.

output (OUT):
  samples/NNNNNN_{lq,hq,bokeh}.png (8-bit sRGB), NNNNNN_disparity.png (16-bit),
  NNNNNN_mask.png (255 = in focus), manifest.jsonl (one record per sample), dataset.json.
  Re-running the same command resumes; a larger -n extends the dataset. A folder holding
  a dataset made from other inputs or settings is refused.
"""


def add_subparser(commands: argparse._SubParsersAction) -> None:
    """Register ``synth`` on an argparse sub-parsers object (sets ``func=run``)."""
    p = commands.add_parser(
        "synth",
        help="synthesise bokeh training pairs from cut-outs and backgrounds",
        description="Compose two cut-out foregrounds over a background, ray-trace the "
        "bokeh ground truth and degrade the all-in-focus image into the LQ input. Every "
        "sample is a pure function of (seed, index): runs are reproducible and resumable.",
        epilog=RULES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--foregrounds", type=Path, required=True, metavar="DIR", help="folder of cut-outs"
    )
    p.add_argument(
        "--backgrounds", type=Path, required=True, metavar="DIR", help="folder of backgrounds"
    )
    p.add_argument("-n", "--count", type=int, required=True, metavar="N", help="samples to make")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="dataset folder")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--size", type=int, default=512, help="sample side in px (default 512)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores); results do not depend on it",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=SynthSettings.rays,
        metavar="RAYS",
        help=f"aperture samples (rays) per pixel for the bokeh ground truth "
        f"(default {SynthSettings.rays})",
    )
    p.add_argument(
        "--preview",
        type=Path,
        metavar="FILE",
        help="also write a contact sheet of the first samples",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --preview file")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="where to ray-trace (auto: a GPU when present, else the CPU with --workers)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build or resume the dataset; returns 0 when every sample is done, 1 when some could
    not be made (their sources became unreadable; re-run to retry)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    settings = SynthSettings(size=args.size, rays=args.samples, seed=args.seed)
    if args.preview is not None:
        ensure_writable(args.preview, overwrite=args.overwrite)
    report = synthesize(
        args.foregrounds,
        args.backgrounds,
        args.output,
        args.count,
        settings,
        workers=args.workers,
        device=str(resolve_device(args.device)),
        progress=not args.quiet,
    )
    if args.preview is not None:
        write_preview(report.output, args.preview, overwrite=args.overwrite)
    if not args.quiet:
        skipped = report.skipped_sources
        note = f"; skipped {len(skipped)} unreadable input files (see the log)" if skipped else ""
        print(
            f"synth: {report.made} samples made, {report.existing} already done in "
            f"{report.output}{note}",
            file=sys.stderr,
        )
    if report.failed:
        first_index, first_reason = report.failed[0]
        print(
            f"synth: {len(report.failed)} samples could not be made (first: #{first_index}: "
            f"{first_reason}); fix the inputs and run the same command again",
            file=sys.stderr,
        )
        return 1
    return 0
