"""``magicbokeh degrade IN... -o DIR``: make low-quality versions of HR photos.

Inputs are image files or folders (searched recursively for .jpg/.jpeg/.png/.tif/.tiff/.webp,
in sorted order). Each output mirrors its input's name as a PNG under DIR (``photos/a/b.jpg``
given as the folder ``photos`` becomes ``DIR/a/b.png``). Every image gets its own seed derived
from ``--seed`` and its relative name, so results do not depend on order or on which other
files are processed. Unreadable files are skipped, counted and logged. All outputs are
checked before any work; existing files are kept unless ``--overwrite``. A JSON manifest
(settings, per-image parameters, versions) is written to ``DIR/degrade_manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from magicbokeh.degrade.pipeline import DegradationConfig, degrade, minimum_hr_size
from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import atomic_write, ensure_writable
from magicbokeh.io.collect import collect_images
from magicbokeh.io.images import READ_SUFFIXES, from_tensor, load_image, save_image, to_tensor
from magicbokeh.io.sidecar import package_versions

IMAGE_SUFFIXES = READ_SUFFIXES
MANIFEST_NAME = "degrade_manifest.json"

logger = logging.getLogger(__name__)


def add_subparser(commands: argparse._SubParsersAction) -> None:
    """Register ``degrade`` on an argparse sub-parsers object (sets ``func=run``)."""
    p = commands.add_parser(
        "degrade",
        help="make low-quality training inputs from HR photos",
        description="Degrade HR photos with the Real-ESRGAN second-order pipeline "
        "(blur, resize, noise, JPEG, twice; final sinc) used to train MagicBokeh.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image files or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--scale", type=int, default=4, help="downscaling factor (default 4)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument(
        "--resize-back", action="store_true", help="resize each result back to its input size"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def collect_inputs(inputs: Sequence[Path]) -> list[tuple[Path, PurePosixPath]]:
    """Resolve files and folders to ``(file, relative name)`` pairs.

    A file given directly is named by its file name; files found in a folder by their path
    below that folder. Folders are searched recursively for :data:`IMAGE_SUFFIXES`
    (case-insensitive, hidden files passed over) and sorted.
    """
    return collect_images(inputs, recursive=True)


def image_seed(seed: int, relative: PurePosixPath | str) -> int:
    """Per-image seed in [0, 2⁶³) from the base seed and the image's relative name."""
    digest = hashlib.sha256(f"{seed}\0{PurePosixPath(relative).as_posix()}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _plan_outputs(
    found: list[tuple[Path, PurePosixPath]], out_dir: Path, overwrite: bool
) -> list[tuple[Path, PurePosixPath, Path]]:
    """Map inputs to outputs; refuse name clashes and (without overwrite) existing files."""
    plan, taken = [], {}
    for source, relative in found:
        target = out_dir / Path(relative.with_suffix(".png"))
        if target in taken:
            raise MagicBokehError(
                f"{source} and {taken[target]} would both be written to {target}; "
                "rename one or degrade them into different folders"
            )
        taken[target] = source
        plan.append((source, relative, target))
    manifest = out_dir / MANIFEST_NAME
    if not overwrite:
        existing = [t for _, _, t in plan if t.exists()] + ([manifest] if manifest.exists() else [])
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise MagicBokehError(
                f"{existing[0]}{more} exist; pass --overwrite to replace them or choose another -o"
            )
    ensure_writable(manifest, overwrite=overwrite)
    return plan


def _degrade_one_file(
    source: Path,
    relative: PurePosixPath,
    target: Path,
    args: argparse.Namespace,
    config: DegradationConfig,
) -> dict | str:
    """Degrade and save one image; returns its manifest record, or why it was skipped."""
    try:
        hr = to_tensor(load_image(source).rgb)
    except (MagicBokehError, OSError, ValueError) as error:
        return str(error)
    smallest = minimum_hr_size(args.scale, config)
    if min(hr.shape[-2:]) < smallest:
        return f"{hr.shape[-1]}×{hr.shape[-2]} px is below the {smallest} px minimum"
    seed = image_seed(args.seed, relative)
    lq, params = degrade(
        hr,
        generator=torch.Generator().manual_seed(seed),
        scale=args.scale,
        resize_back=args.resize_back,
        return_params=True,
        config=config,
    )
    save_image(target, from_tensor(lq), overwrite=args.overwrite)
    return {
        "input": str(source),
        "output": target.relative_to(args.output).as_posix(),
        "seed": seed,
        "hr_size": {"width": int(hr.shape[-1]), "height": int(hr.shape[-2])},
        "lq_size": {"width": int(lq.shape[-1]), "height": int(lq.shape[-2])},
        "params": params[0],
    }


def run(args: argparse.Namespace) -> int:
    """Degrade every input; returns 0 when at least one image was written."""
    if args.scale < 1:
        raise MagicBokehError(f"--scale must be a positive integer, got {args.scale}")
    config = DegradationConfig()
    out_dir = args.output = Path(args.output).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise MagicBokehError(f"-o {out_dir} is a file; give a folder")
    plan = _plan_outputs(collect_inputs(args.inputs), out_dir, args.overwrite)

    records, skipped = [], []
    with logging_redirect_tqdm():
        for source, relative, target in tqdm(plan, desc="degrade", unit="img", disable=args.quiet):
            result = _degrade_one_file(source, relative, target, args, config)
            if isinstance(result, dict):
                records.append(result)
            else:
                skipped.append({"input": str(source), "reason": result})
                logger.warning("skipped %s: %s", source, result)

    if not records:
        raise MagicBokehError(
            f"none of the {len(plan)} inputs could be degraded (first: {skipped[0]['reason']})"
        )
    manifest = {
        "command": "degrade",
        "settings": {
            "scale": args.scale,
            "seed": args.seed,
            "resize_back": bool(args.resize_back),
            "device": "cpu",
            "config": config.to_dict(),
        },
        "versions": package_versions(),
        "images": records,
        "skipped": skipped,
    }
    with atomic_write(out_dir / MANIFEST_NAME, overwrite=args.overwrite) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        note = f"; skipped {len(skipped)} (see the log above)" if skipped else ""
        print(f"degraded {len(records)} images into {out_dir}{note}", file=sys.stderr)
    return 0
