"""``magicbokeh render INPUT -o OUTPUT [...]``: one photo in, one photo with bokeh out.

Every output path is checked before any work; the image, the optional depth and defocus maps
and the JSON sidecar are written atomically; existing files are kept unless ``--overwrite``.
Several inputs, a folder, or an existing output folder render a batch
(``magicbokeh render DIR_OR_FILES... -o OUT_DIR``, see :mod:`magicbokeh.batch`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from magicbokeh.errors import MagicBokehError

if TYPE_CHECKING:  # imported in the functions that use them: `render --help` stays light
    from collections.abc import Callable
    from concurrent.futures import Future

    import numpy as np

    from magicbokeh.api import RenderResult
    from magicbokeh.focus import FocusSpec
    from magicbokeh.io.images import LoadedImage
    from magicbokeh.pipeline import MagicBokehPipeline

#: Output extensions that keep 16 bits per channel when the input had them.
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "render",
        help="render photos with lens bokeh",
        description="Render a photo, or a batch of photos and folders, with realistic, "
        "controllable lens bokeh.",
    )
    p.add_argument(
        "input",
        type=Path,
        nargs="+",
        metavar="INPUT",
        help="photo (JPEG, PNG, TIFF, WebP, HEIC); several photos or folders render a batch",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="output image, or folder for a batch"
    )
    p.add_argument("--engine", choices=("auto", "physical", "diffusion"), default="auto")
    p.add_argument("--model", type=Path, help="MagicBokeh model folder (diffusion engine)")
    p.add_argument(
        "--depth",
        default="auto",
        metavar="auto|embedded|heuristic|FILE",
        help="depth source (default auto: embedded, else depth model, else a weight-free guess)",
    )
    p.add_argument(
        "--depth-kind",
        choices=("disparity", "depth"),
        default="disparity",
        help="convention of a depth FILE: disparity (larger = nearer, default) or depth",
    )
    focus = p.add_mutually_exclusive_group()
    focus.add_argument(
        "--focus", metavar="X,Y|auto", help="focus point in input pixels, or auto (default)"
    )
    focus.add_argument("--focus-box", metavar="X0,Y0,X1,Y1", help="focus on the box's median")
    focus.add_argument("--focus-mask", type=Path, metavar="FILE", help="focus on a mask image")
    focus.add_argument("--focus-disparity", type=float, metavar="V", help="focus disparity 0..1")
    p.add_argument(
        "--aperture",
        type=float,
        default=16.0,
        metavar="K",
        help="blur radius in output pixels per unit disparity difference (0 = no blur; default 16)",
    )
    p.add_argument("--blades", type=int, default=0, metavar="N", help="aperture blades (0 = round)")
    p.add_argument("--rotation", type=float, default=0.0, metavar="DEG", help="blade rotation")
    p.add_argument(
        "--roundness", type=float, default=0.0, metavar="R", help="0 = straight blades, 1 = round"
    )
    p.add_argument(
        "--cat-eye", type=float, default=0.0, metavar="S", help="cat-eye strength (0 = none)"
    )
    p.add_argument(
        "--chromatic", metavar="KR,KG,KB", help="per-channel multipliers of K (lens colour fringes)"
    )
    p.add_argument("--highlight", type=float, metavar="AMOUNT", help="clipped-highlight boost")
    p.add_argument("--scale", type=float, default=1.0, metavar="S", help="upsample input first")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--save-depth", type=Path, metavar="FILE", help="also save the disparity used")
    p.add_argument(
        "--save-defocus",
        type=Path,
        metavar="FILE",
        help="also save the defocus map: CoC radius in pixels (.npy/.tif/.exr/.pfm) "
        "or |d - d_f| as 16-bit (.png)",
    )
    learned = p.add_argument_group("learned engine")
    learned.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    learned.add_argument(
        "--released",
        action="store_true",
        help="reproduce the released script exactly (512/256 tiles, AdaIN, 8-bit depth, "
        "lower-median focus from a mask)",
    )
    learned.add_argument(
        "--vae-sample", action="store_true", help="sample the VAE posterior (seeded) as released"
    )
    learned.add_argument("--seed", type=int, default=0, help="seed for --vae-sample")
    learned.add_argument(
        "--raw-output",
        type=Path,
        metavar="FILE.npy",
        help="also save the blended float output before the colour fix (H×W×3 in [-1, 1])",
    )
    batch = p.add_argument_group("batch (several inputs or folders, -o OUT_DIR)")
    batch.add_argument("--recursive", action="store_true", help="also render photos in sub-folders")
    batch.add_argument(
        "--format",
        choices=("keep", "png", "jpg", "tif", "webp"),
        default="keep",
        help="output format: keep the input's (default; HEIC becomes PNG) or convert all",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)


def focus_spec_from_args(args: argparse.Namespace) -> FocusSpec:
    """The focus spec named by the mutually exclusive ``--focus*`` options."""
    from magicbokeh.focus import FocusSpec, parse_numbers

    if args.focus_box:
        return FocusSpec("box", box=parse_numbers(args.focus_box, 4, "--focus-box"))
    if args.focus_mask:
        from magicbokeh.io import load_image

        if not args.focus_mask.expanduser().is_file():
            raise MagicBokehError(f"focus mask {args.focus_mask} does not exist; check the path")
        mask = load_image(args.focus_mask)
        selected = mask.rgb.max(axis=2)
        return FocusSpec("mask", mask=selected if mask.alpha is None else selected * mask.alpha)
    if args.focus_disparity is not None:
        return FocusSpec("disparity", value=args.focus_disparity)
    if args.focus and args.focus != "auto":
        return FocusSpec("point", point=parse_numbers(args.focus, 2, "--focus"))
    return FocusSpec("auto")


def run(args: argparse.Namespace) -> int:
    from magicbokeh.batch import is_batch, run_batch

    if is_batch(args.input, args.output):
        return run_batch(args)
    args.input = args.input[0]
    photo = _decode_in_background(args.input)  # overlaps loading torch and the engines
    check_outputs(args)
    result = render_from_args(args, photo=photo.result, progress=not args.quiet)
    for warning in result.warnings:
        if not args.quiet or warning.startswith("no depth"):
            print(f"warning: {warning}", file=sys.stderr)
    write_outputs(args, result)
    if not args.quiet:
        print(
            f"wrote {args.output} ({result.engine} engine, K={args.aperture:g}, "
            f"focus disparity {result.focus_disparity:.3f}, depth: {result.depth_source})"
        )
    return 0


def render_from_args(
    args: argparse.Namespace,
    *,
    pipeline: MagicBokehPipeline | None = None,
    photo: Callable[[], LoadedImage] | None = None,
    progress: bool = False,
) -> RenderResult:
    """Render ``args.input`` with the command's options.

    ``pipeline``: a loaded learned one to reuse; ``photo``: returns the decoded input (e.g. a
    background decode's ``Future.result``), instead of reading ``args.input`` here.
    """
    from magicbokeh.api import render
    from magicbokeh.focus import parse_numbers
    from magicbokeh.optics import Aperture
    from magicbokeh.optics.render import DEFAULT_HIGHLIGHT

    chromatic = parse_numbers(args.chromatic, 3, "--chromatic") if args.chromatic else None
    spec = focus_spec_from_args(args)
    return render(
        args.input if photo is None else photo(),
        depth=args.depth,
        focus=spec,
        aperture=args.aperture,
        engine=args.engine,
        depth_kind=args.depth_kind,
        aperture_shape=Aperture(
            blades=args.blades,
            rotation=args.rotation,
            roundness=args.roundness,
            cat_eye=args.cat_eye,
        ),
        highlight=DEFAULT_HIGHLIGHT if args.highlight is None else args.highlight,
        chromatic=chromatic,
        scale=args.scale,
        device=args.device,
        model=args.model,
        pipeline=pipeline,
        dtype=args.dtype,
        released=args.released,
        vae_sample=args.vae_sample,
        seed=args.seed,
        progress=progress,
    )


def _decode_in_background(path: Path) -> Future:
    """Start decoding the photo in a worker thread; its result (or error) waits in the future.

    Decoding needs neither torch nor the engines, so it runs while they are imported.
    """
    from concurrent.futures import ThreadPoolExecutor

    def decode() -> LoadedImage:
        from magicbokeh.io.images import load_image

        return load_image(path)

    pool = ThreadPoolExecutor(1, thread_name_prefix="magicbokeh-decode")
    try:
        return pool.submit(decode)
    finally:
        pool.shutdown(wait=False)  # the submitted decode still runs


def check_outputs(args: argparse.Namespace) -> None:
    """Everything about the outputs that can fail, checked before any work."""
    from magicbokeh.api import select_engine
    from magicbokeh.io import (
        DEPTH_WRITE_EXTENSIONS,
        SUPPORTED_WRITE,
        ensure_writable,
        sidecar_path,
    )

    engine, _ = select_engine(args.engine, args.model)
    learned_only = [
        flag
        for flag, given in (
            ("--released", args.released),
            ("--vae-sample", args.vae_sample),
            ("--raw-output", args.raw_output),
        )
        if given
    ]
    if engine == "physical" and learned_only:
        raise MagicBokehError(
            f"{' and '.join(learned_only)} need the learned engine: add --engine diffusion "
            "--model DIR"
        )
    suffixes = [
        ("-o", args.output, SUPPORTED_WRITE),
        ("--save-depth", args.save_depth, DEPTH_WRITE_EXTENSIONS),
        ("--save-defocus", args.save_defocus, DEPTH_WRITE_EXTENSIONS),
        ("--raw-output", args.raw_output, (".npy",)),
    ]
    for flag, path, allowed in suffixes:
        if path is not None and path.suffix.lower() not in allowed:
            raise MagicBokehError(
                f"cannot write {flag} {path.name}: use one of {', '.join(allowed)}"
            )
        if path is not None and path.suffix.lower() == ".exr":
            from magicbokeh.io.depth_files import _openexr

            _openexr()
    outputs = [args.output, sidecar_path(args.output)]
    outputs += [p for p in (args.save_depth, args.save_defocus, args.raw_output) if p]
    resolved = [path.expanduser().resolve() for path in outputs]
    if len(set(resolved)) != len(resolved):
        raise MagicBokehError("two outputs have the same path: give each output its own file")
    inputs = [args.input, args.focus_mask]
    if args.depth not in ("auto", "embedded", "heuristic"):
        inputs.append(Path(args.depth))
        if Path(args.depth).suffix.lower() == ".exr":
            from magicbokeh.io.depth_files import _openexr

            _openexr()
    for path in inputs:
        if path is not None and path.expanduser().resolve() in resolved:
            raise MagicBokehError(f"an output would replace the input {path}: choose another path")
    for path in outputs:
        ensure_writable(path, overwrite=args.overwrite)


def write_outputs(args: argparse.Namespace, result: RenderResult) -> None:
    """Write the image, the optional maps and the sidecar: all of them, or none."""
    import numpy as np

    from magicbokeh.io import atomic_write, save_depth, save_image, write_sidecar

    bit_depth = (
        16 if result.bit_depth == 16 and args.output.suffix.lower() in SIXTEEN_BIT_SUFFIXES else 8
    )
    settings = dict(
        result.settings,
        output=_absolute(args.output),
        output_bit_depth=bit_depth,
        focus_mask_file=_absolute(args.focus_mask),
        saved_depth=_absolute(args.save_depth),
        saved_defocus=_absolute(args.save_defocus),
        raw_output=_absolute(args.raw_output),
    )
    written: list[Path] = []
    try:
        written.append(
            save_image(
                args.output,
                result.image,
                alpha=result.alpha,
                bit_depth=bit_depth,
                icc_profile=result.icc_profile,
                overwrite=args.overwrite,
            )
        )
        if args.save_depth:
            written.append(save_depth(args.save_depth, result.disparity, overwrite=args.overwrite))
        if args.save_defocus:
            written.append(
                _save_defocus(args.save_defocus, result.defocus, args.aperture, args.overwrite)
            )
        if args.raw_output:
            with atomic_write(args.raw_output, overwrite=args.overwrite) as temporary:
                np.save(temporary, result.raw.astype(np.float32))
            written.append(args.raw_output)
        write_sidecar(args.output, settings, overwrite=args.overwrite)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.expanduser().resolve())


def _save_defocus(path: Path, radius: np.ndarray, aperture: float, overwrite: bool) -> Path:
    """Radius in pixels for float formats; ``|d − d_f|`` (= radius / K) for 16-bit PNG."""
    import numpy as np

    from magicbokeh.io import save_depth

    if path.suffix.lower() == ".png":
        relative = radius / aperture if aperture > 0 else np.zeros_like(radius)
        return save_depth(path, np.clip(relative, 0.0, 1.0), overwrite=overwrite)
    return save_depth(path, radius.astype(np.float32), overwrite=overwrite)
