"""What the ``eval bokeh`` and ``eval sr`` commands share: options, size checks, the run.

Sizes: the output of an engine has the input's size times ``--scale`` (default: the ratio of
the target's size to the input's, when both sides agree on it). A target of another size is
refused before any work, naming the pair, unless ``--resize-target`` (then the target is
resized to the output size, area when shrinking and bicubic when enlarging, and the report
says so). ``--size WxH`` resizes every target to W×H and every input to W/scale×H/scale
first. Another method's outputs (``outputs:DIR``) must have the target's size (or be
resized with the target by ``--resize-target``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magicbokeh.errors import MagicBokehError

DEVICES = ("auto", "cpu", "cuda", "mps")
_SCALE_TOLERANCE = 0.01


def add_common_arguments(p: argparse.ArgumentParser, default_metrics: str) -> None:
    """Options of every scoring protocol."""
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="the pairs to score")
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="REPORT_DIR", help="report folder"
    )
    p.add_argument(
        "--metrics",
        default=default_metrics,
        metavar="LIST",
        help=f"comma-separated metric names (default {default_metrics}); psnr, ssim, lpips, "
        "lpips-vgg, dists, clipiqa, niqe, musiq, maniqa, fid",
    )
    p.add_argument("--model", type=Path, metavar="DIR", help="learned model folder")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument(
        "--scale",
        type=float,
        metavar="S",
        help="output size / input size (default: the target/input ratio)",
    )
    p.add_argument("--size", metavar="WxH", help="resize every target to W×H first")
    p.add_argument("--limit", type=int, metavar="N", help="score the first N pairs only")
    p.add_argument(
        "--save-outputs", action="store_true", help="keep each output as REPORT_DIR/outputs/"
    )
    p.add_argument(
        "--resize-target",
        action="store_true",
        help="resize targets whose size differs from the output's (refused otherwise)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the complete pairs when some names lack a partner (refused otherwise)",
    )
    p.add_argument("--batch-size", type=int, default=4, metavar="B", help="images per batch")
    p.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="learned engine: tile side, a multiple of 64 (default 512; 768 suits large GPUs)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace a report in REPORT_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"768x512"`` → ``(512, 768)`` as (H, W)."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        width = height = 0
    if len(parts) != 2 or width < 16 or height < 16:
        raise MagicBokehError(
            f"--size must be WxH with both at least 16 px, e.g. 768x512 (got {text})"
        )
    return height, width


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as :func:`~magicbokeh.io.load_image` returns it (EXIF
    orientation applied), from its header where possible."""
    from PIL import Image

    import magicbokeh.io.images  # noqa: F401  (registers the HEIF opener)

    try:
        with Image.open(path) as pil:
            width, height = pil.size
            orientation = pil.getexif().get(0x0112, 1)
    except Exception:
        from magicbokeh.io import load_image

        return load_image(path).rgb.shape[:2]
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def common_checks(args: argparse.Namespace) -> tuple[int, int] | None:
    """Refuse options that are wrong whatever the data; returns ``--size`` as (H, W)."""
    from magicbokeh.eval.scoring import parse_metrics

    parse_metrics(args.metrics)
    if args.limit is not None and args.limit < 1:
        raise MagicBokehError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise MagicBokehError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.tile_size is not None and (args.tile_size < 64 or args.tile_size % 64):
        raise MagicBokehError(f"--tile-size must be a multiple of 64, got {args.tile_size}")
    if args.scale is not None and not 0 < args.scale <= 16:
        raise MagicBokehError(f"--scale must be in (0, 16], got {args.scale:g}")
    if args.output.exists() and not args.output.is_dir():
        raise MagicBokehError(f"-o {args.output} is a file; give a folder for the report")
    return parse_size(args.size)


def plan_sizes(
    pairs: list,
    *,
    scale: float | None,
    size: tuple[int, int] | None,
    resize_target: bool,
    outputs: dict[str, Path] | None = None,
) -> dict[str, tuple[float, tuple[int, int]]]:
    """Per stem: the scale and the output size ``(H, W)``; checks every pair before any work.

    Raises:
        MagicBokehError: a target (or another method's output) whose size does not fit,
            naming the pair and the sizes, unless ``resize_target``.
    """
    plan = {}
    for pair in pairs:
        in_h, in_w = image_size(pair.input)
        out_h, out_w = size or image_size(pair.target)
        s = scale
        if s is None:
            s = out_w / in_w
            if abs(out_h / in_h - s) > _SCALE_TOLERANCE * s and not resize_target:
                raise MagicBokehError(
                    f"pair {pair.stem}: the input is {in_w}×{in_h} and the target {out_w}×{out_h}, "
                    "which differ in shape; pass --resize-target to resize targets to the "
                    "input's shape times --scale, or fix the pair"
                )
        if size is not None:
            in_h, in_w = max(1, round(out_h / s)), max(1, round(out_w / s))
        expected = (round(in_h * s), round(in_w * s))
        if expected != (out_h, out_w) and not resize_target:
            raise MagicBokehError(
                f"pair {pair.stem}: the output will be {expected[1]}×{expected[0]} (input "
                f"{in_w}×{in_h} × {s:g}) but the target is {out_w}×{out_h}; pass "
                "--resize-target to resize targets to the output size, or --scale"
            )
        if outputs is not None:
            got = image_size(outputs[pair.stem])
            if got != expected and not resize_target:
                raise MagicBokehError(
                    f"pair {pair.stem}: {outputs[pair.stem]} is {got[1]}×{got[0]} but the target "
                    f"is {expected[1]}×{expected[0]}; pass --resize-target to resize targets to "
                    "the outputs' size"
                )
            expected = got
        plan[pair.stem] = (s, expected)
    return plan


def other_outputs(spec: str, pair_set, pairs: list, allow_missing: bool):
    """For ``outputs:DIR``: (the files by name, the pairs that have one, the report label).

    Raises:
        MagicBokehError: ``DIR`` is missing, or some names have no file (listed) and
            ``allow_missing`` is off; with it they are recorded in ``pair_set.unmatched``.
    """
    from magicbokeh.eval.engines import output_files

    folder = spec.split(":", 1)[1]
    files, missing = output_files(folder, [p.stem for p in pairs])
    if missing and not allow_missing:
        raise MagicBokehError(
            f"{len(missing)} pairs have no output in {folder} ({', '.join(missing[:5])}); pass "
            "--allow-missing to score the others only"
        )
    if missing:
        pair_set.unmatched["outputs"] = missing
    label = f"outputs:{Path(folder).expanduser().resolve().name}"
    return files, [p for p in pairs if p.stem in files], label


def plan_run(args: argparse.Namespace, spec: str, pair_set, pairs: list, size):
    """Settle the pairs to score: (outputs files or None, report label, size plan, device).

    ``spec`` is the engine or method; ``outputs:DIR`` drops (or, without ``--allow-missing``,
    refuses) names without a file. Sets ``pair_set.pairs`` to the pairs that will be scored.
    """
    from magicbokeh.runtime import resolve_device

    outputs, label = None, spec
    if spec.startswith("outputs:"):
        outputs, pairs, label = other_outputs(spec, pair_set, pairs, args.allow_missing)
    if not pairs:
        raise MagicBokehError("no pairs are left to score")
    plan = plan_sizes(
        pairs, scale=args.scale, size=size, resize_target=args.resize_target, outputs=outputs
    )
    pair_set.pairs = pairs
    return outputs, label, plan, resolve_device(args.device)


def engine_options(args: argparse.Namespace, device) -> dict:
    """Keyword arguments of the engines and SR methods."""
    return {
        "device": device,
        "batch_size": args.batch_size,
        "model": args.model,
        "dtype": args.dtype,
        "tile_size": args.tile_size,
    }


def load_pair(pair, plan: dict, size: tuple[int, int] | None):
    """A pair's input and target (``H×W×3``), with ``--size`` applied and the target brought
    to the output size (see the module doc)."""
    import numpy as np

    from magicbokeh.eval.engines import resize_rgb
    from magicbokeh.io import load_image

    scale, out_size = plan[pair.stem]
    image = load_image(pair.input).rgb
    target = load_image(pair.target).rgb
    if size is not None:
        target = resize_rgb(target, size, "bicubic")
        image = resize_rgb(image, (round(size[0] / scale), round(size[1] / scale)), "bicubic")
    if target.shape[:2] != out_size:
        target = resize_rgb(target, out_size, "bicubic")
    return np.ascontiguousarray(image), target


def common_settings(args: argparse.Namespace, pair_set, label: str, device) -> dict:
    """The settings both protocols record (and compare on resume)."""
    from magicbokeh.eval.scoring import parse_metrics

    return {
        "data": str(Path(args.data).expanduser().resolve()),
        "layout": pair_set.layout,
        "stems": [p.stem for p in pair_set.pairs],
        "method_label": label,
        "model": str(args.model) if args.model else None,
        "dtype": args.dtype,
        "tile_size": args.tile_size,
        "scale": args.scale or "target/input ratio",
        "size": args.size,
        "resize_target": bool(args.resize_target),
        "metrics": parse_metrics(args.metrics),
        "y_channel": bool(getattr(args, "y_channel", False)),
        "crop_border": getattr(args, "crop_border", 0),
        "device": str(device),
    }


def evaluate(args: argparse.Namespace, protocol: str, pair_set, settings, prepare, engine, device):
    """Run the evaluation into ``args.output`` and print its table; returns the exit code."""
    from magicbokeh.eval.run import Evaluation, run_evaluation

    evaluation = Evaluation(
        protocol,
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


def make_scorer(args: argparse.Namespace, device):
    """The metrics of ``--metrics`` on ``device``."""
    from magicbokeh.eval.scoring import Scorer, parse_metrics

    names = parse_metrics(args.metrics)
    return Scorer(
        names,
        device=device,
        y_channel=getattr(args, "y_channel", False),
        crop_border=getattr(args, "crop_border", 0),
    )


def print_summary(result: dict, report_dir: Path, quiet: bool) -> None:
    """The report's table on stdout."""
    if quiet:
        return
    from magicbokeh.eval.report import markdown

    table = markdown(result).split("\n\n")[2]
    print(table)
    print(f"report: {report_dir / 'report.md'}", file=sys.stderr)
