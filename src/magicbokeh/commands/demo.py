"""``magicbokeh demo [-o DIR]``: bokeh on a real photo with real depth, no weights needed.

The photo is the Middlebury "motorcycle" stereo pair's left view with its ground-truth
disparity, which ships with scikit-image (``skimage.data.stereo_motorcycle``). Pixels without a
disparity measurement take the value of the nearest measured pixel; the map is then min-max
normalised to [0, 1] (larger = nearer). The demo renders several focus points and apertures,
writes each image with its sidecar, and a labelled contact sheet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from magicbokeh.errors import MagicBokehError

#: (file stem, label, focus, K, render options), focus in pixels of the 741×500 photo.
SHOTS = (
    ("original", "input (K = 0)", (420, 200), 0.0, {}),
    ("motorcycle_K12", "focus: motorcycle, K = 12", (420, 200), 12.0, {}),
    ("motorcycle_K28", "focus: motorcycle, K = 28", (420, 200), 28.0, {}),
    ("shelves_K28", "focus: shelves, K = 28", (640, 80), 28.0, {}),
    ("auto_hexagon_K28", "focus: auto, 6 blades, K = 28", "auto", 28.0, {"blades": 6}),
    ("wheel_K40_cateye", "focus: front wheel, K = 40, cat-eye", (600, 400), 40.0, {"cat_eye": 0.5}),
)


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="render a bundled photo at several focus points and apertures",
        description="Render a real photo with real depth (no weights needed) and a contact sheet.",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("magicbokeh-demo"), metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's files")
    p.set_defaults(func=run)


def demo_scene() -> tuple[np.ndarray, np.ndarray]:
    """The motorcycle photo (``H×W×3`` sRGB float32, [0, 1]) and its disparity (``H×W``, [0, 1])."""
    from skimage.data import stereo_motorcycle

    left, _, disparity = stereo_motorcycle()
    invalid = ~np.isfinite(disparity)
    nearest = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    filled = disparity[tuple(nearest)].astype(np.float32)
    lo, hi = float(filled.min()), float(filled.max())
    return left.astype(np.float32) / 255.0, (filled - lo) / (hi - lo)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.api import render
    from magicbokeh.io import ensure_writable, save_image, sidecar_path, write_sidecar
    from magicbokeh.optics import Aperture
    from magicbokeh.sheet import contact_sheet

    folder: Path = args.output
    if folder.exists() and not folder.is_dir():
        raise MagicBokehError(f"{folder} is a file: give a folder with -o DIR")
    paths = [folder / f"{stem}.png" for stem, *_ in SHOTS] + [folder / "contact_sheet.png"]
    for path in paths:
        ensure_writable(path, overwrite=args.overwrite)
        ensure_writable(sidecar_path(path), overwrite=args.overwrite)
    rgb, disparity = demo_scene()
    images, labels = [], []
    for (_, label, focus, aperture, options), path in tqdm(
        list(zip(SHOTS, paths, strict=False)), desc="demo", unit="image"
    ):
        result = render(
            rgb,
            depth=disparity,
            focus=focus,
            aperture=aperture,
            engine="physical",
            aperture_shape=Aperture(**options),
        )
        save_image(path, result.image, overwrite=args.overwrite)
        settings = dict(result.settings, input="skimage.data.stereo_motorcycle (left view)")
        settings["depth_source"] = "skimage.data.stereo_motorcycle ground-truth disparity"
        write_sidecar(path, settings, overwrite=args.overwrite)
        images.append(result.image)
        labels.append(label)
    sheet_path = paths[-1]
    save_image(sheet_path, contact_sheet(images, labels, columns=3), overwrite=args.overwrite)
    write_sidecar(
        sheet_path,
        {"shots": [stem for stem, *_ in SHOTS], "labels": labels},
        overwrite=args.overwrite,
    )
    print(f"wrote {len(SHOTS)} renders and {sheet_path}")
    return 0
