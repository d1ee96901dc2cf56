"""``magicbokeh sweep INPUT -o OUT.mp4|.gif|.webp``: a focus pull or an aperture ramp.

``--focus-from X,Y --focus-to X,Y`` pulls focus between two points; ``--aperture-from K
--aperture-to K`` opens or closes the aperture; both may be given together. The physical
engine is the default. The animation gets a JSON sidecar (``OUT.mp4.json``) with the
settings and each frame's focus disparity and K. See :mod:`magicbokeh.sweep`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sweep",
        help="animate a focus pull or an aperture ramp (MP4, GIF, WebP)",
        description="Render a photo at a sequence of focus points or apertures and write an "
        "animation: MP4 (H.264), animated GIF or animated WebP.",
    )
    p.add_argument("input", type=Path, metavar="INPUT", help="photo (JPEG, PNG, TIFF, WebP, HEIC)")
    p.add_argument("-o", "--output", type=Path, required=True, help="OUT.mp4, OUT.gif or OUT.webp")
    motion = p.add_argument_group("what moves (give at least one pair)")
    motion.add_argument("--focus-from", metavar="X,Y", help="first frame's focus point (pixels)")
    motion.add_argument("--focus-to", metavar="X,Y", help="last frame's focus point (pixels)")
    motion.add_argument("--aperture-from", type=float, metavar="K", help="first frame's K")
    motion.add_argument("--aperture-to", type=float, metavar="K", help="last frame's K")
    motion.add_argument(
        "--focus", default="auto", metavar="X,Y|auto", help="fixed focus when it does not move"
    )
    motion.add_argument(
        "--aperture", type=float, default=16.0, metavar="K", help="fixed K when it does not move"
    )
    timing = p.add_argument_group("timing")
    timing.add_argument("--frames", type=int, default=48, metavar="N", help="frames (default 48)")
    timing.add_argument("--fps", type=float, default=24.0, metavar="F", help="frame rate (24)")
    timing.add_argument(
        "--ease",
        choices=("linear", "smooth"),
        default="linear",
        help="even steps, or slow at both ends (smooth)",
    )
    p.add_argument("--engine", choices=("physical", "auto", "diffusion"), default="physical")
    p.add_argument("--model", type=Path, help="MagicBokeh model folder (diffusion engine)")
    p.add_argument(
        "--depth",
        default="auto",
        metavar="auto|embedded|heuristic|FILE",
        help="depth source (default auto), estimated once for all frames",
    )
    p.add_argument("--depth-kind", choices=("disparity", "depth"), default="disparity")
    lens = p.add_argument_group("lens")
    lens.add_argument("--blades", type=int, default=0, metavar="N", help="0 = round")
    lens.add_argument("--rotation", type=float, default=0.0, metavar="DEG")
    lens.add_argument("--roundness", type=float, default=0.0, metavar="R")
    lens.add_argument("--cat-eye", type=float, default=0.0, metavar="S")
    lens.add_argument("--highlight", type=float, metavar="AMOUNT", help="clipped-highlight boost")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing animation")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Idle compute threads sleep instead of spinning, so a long render shares the CPU well
    # with whatever else runs (set before torch loads; an explicit setting wins).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from tqdm.auto import tqdm

    from magicbokeh.api import load_pipeline, select_engine
    from magicbokeh.depth.resolve import resolve_depth
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.focus import parse_numbers
    from magicbokeh.io import ensure_writable, load_image, sidecar_path, write_sidecar
    from magicbokeh.optics import Aperture
    from magicbokeh.optics.render import DEFAULT_HIGHLIGHT
    from magicbokeh.runtime import DIFFUSION_MODEL_DIR, installed_model, resolve_device
    from magicbokeh.sweep import check_animation_path, plan_sweep, render_frames, write_animation

    pairs = {
        "--focus-from/--focus-to": (args.focus_from, args.focus_to),
        "--aperture-from/--aperture-to": (args.aperture_from, args.aperture_to),
    }
    for flags, (start, end) in pairs.items():
        if (start is None) != (end is None):
            raise MagicBokehError(f"give both of {flags}, or neither")
    if args.focus_from is None and args.aperture_from is None:
        raise MagicBokehError(
            "nothing moves: give --focus-from X,Y --focus-to X,Y (a focus pull) and/or "
            "--aperture-from K --aperture-to K (an aperture ramp)"
        )
    check_animation_path(args.output)
    for path in (args.output, sidecar_path(args.output)):
        ensure_writable(path, overwrite=args.overwrite)
    if args.input.expanduser().resolve() == args.output.expanduser().resolve():
        raise MagicBokehError(f"the output would replace the input {args.input}: choose another")

    def point(text: str, flag: str) -> object:
        return "auto" if text == "auto" else parse_numbers(text, 2, flag)

    engine, note = select_engine(args.engine, args.model)
    device = resolve_device(args.device)
    image = load_image(args.input)
    depth = resolve_depth(
        args.depth, image.rgb, image_path=args.input, kind=args.depth_kind, device=device
    )
    plan = plan_sweep(
        depth.disparity,
        frames=args.frames,
        focus=point(args.focus_from or args.focus, "--focus-from"),
        focus_to=None if args.focus_to is None else point(args.focus_to, "--focus-to"),
        aperture=args.aperture if args.aperture_from is None else args.aperture_from,
        aperture_to=args.aperture_to,
        ease=args.ease,
    )
    shape = Aperture(
        blades=args.blades, rotation=args.rotation, roundness=args.roundness, cat_eye=args.cat_eye
    )
    highlight = DEFAULT_HIGHLIGHT if args.highlight is None else args.highlight
    options: dict = {"engine": engine, "device": args.device}
    if engine == "physical":
        options.update(aperture_shape=shape, highlight=highlight)
    else:
        folder = args.model or installed_model(DIFFUSION_MODEL_DIR)
        options.update(
            model=folder, dtype=args.dtype, pipeline=load_pipeline(Path(folder), device, args.dtype)
        )
    for warning in (note, depth.warning):
        if warning and (not args.quiet or warning.startswith("no depth")):
            print(f"warning: {warning}", file=sys.stderr)
    frames = render_frames(image, depth.disparity, plan, **options)
    count = write_animation(
        args.output,
        tqdm(frames, total=len(plan), desc="sweep", unit="frame", disable=args.quiet),
        args.fps,
        overwrite=args.overwrite,
    )
    try:
        write_sidecar(
            args.output,
            {
                "kind": "animation",
                "input": str(args.input.expanduser().resolve()),
                "output": str(args.output.expanduser().resolve()),
                "engine": engine,
                "depth_source": depth.source,
                "frames": count,
                "fps": args.fps,
                "duration_s": count / args.fps,
                "ease": args.ease,
                "focus_from": args.focus_from or args.focus,
                "focus_to": args.focus_to or args.focus,
                "focus_disparity": list(plan.focus_disparities),
                "aperture_K": list(plan.apertures),
                "aperture_shape": {
                    "blades": shape.blades,
                    "rotation_deg": shape.rotation,
                    "roundness": shape.roundness,
                    "cat_eye": shape.cat_eye,
                },
                "highlight": highlight,
                "input_size": [image.rgb.shape[1], image.rgb.shape[0]],
            },
            overwrite=args.overwrite,
        )
    except BaseException:
        args.output.unlink(missing_ok=True)  # all outputs or none
        raise
    if not args.quiet:
        print(f"wrote {args.output} ({count} frames at {args.fps:g} fps, {engine} engine)")
    return 0
