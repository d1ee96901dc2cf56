"""NYUv2 and KITTI depth test sets: protocol constants, folder layouts, reading, masks.

The package never downloads these datasets; it finds image / ground-truth pairs in a folder
the user prepared, in one of the layouts of the usual split files:

- ``split`` (both datasets, ``split=FILE``): a text file whose lines are ``IMAGE DEPTH [...]``,
  paths relative to the data folder (a leading ``/`` is ignored; lines whose DEPTH is ``None``
  are skipped), e.g. Marigold's ``filename_list_test.txt`` and ``eigen_test_files_with_gt.txt``
  or BTS's ``nyudepthv2_test_files_with_gt.txt``;
- ``nyu-rgb-depth``: ``<scene>/rgb_<id>.png`` beside ``depth_<id>.png`` (the labeled NYUv2
  test set as extracted for Marigold; a ``filled_<id>.png`` beside them is ignored);
- ``nyu-sync-depth``: ``<scene>/rgb_<id>.jpg`` beside ``sync_depth_<id>.png`` (BTS's
  ``official_splits/test``);
- ``kitti-raw``: raw KITTI frames ``<date>/<drive>/image_0{2,3}/data/<id>.png`` with the
  annotated depth ``<drive>/proj_depth/groundtruth/image_0{2,3}/<id>.png`` anywhere under the
  folder (every annotated frame; pass the Eigen split file to score the 652-frame test set);
- ``kitti-selection``: KITTI's ``depth_selection/val_selection_cropped`` with ``image/`` and
  ``groundtruth_depth/`` (names ``…_image_<id>_image_0N.png`` / ``…_groundtruth_depth_…``).

Ground truth is a 16-bit PNG of depth × scale factor (NYUv2 millimetres: 1000 per metre;
KITTI: 256 per metre); 0 means no measurement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.images import READ_SUFFIXES, load_image


@dataclass(frozen=True)
class DepthProtocol:
    """Evaluation constants of one dataset."""

    name: str
    title: str
    min_depth: float
    """Smallest valid ground-truth depth (metres, exclusive) and nearest predicted depth."""
    max_depth: float
    """Largest valid ground-truth depth (metres, exclusive) and farthest predicted depth."""
    depth_scale: float
    """Ground-truth PNG code values per metre."""
    crop: str
    """Evaluation crop: ``eigen`` (NYUv2) or ``garg`` (KITTI)."""


PROTOCOLS: dict[str, DepthProtocol] = {
    "nyu": DepthProtocol("nyu", "NYUv2", 1e-3, 10.0, 1000.0, "eigen"),
    "kitti": DepthProtocol("kitti", "KITTI", 1e-3, 80.0, 256.0, "garg"),
}

NYU_FRAME = (480, 640)
"""NYUv2 frame size (H, W) the Eigen crop is defined on."""
NYU_EIGEN_CROP = (45, 471, 41, 601)
"""Eigen crop on a 480×640 NYUv2 frame: rows [45, 471), columns [41, 601)."""
KITTI_GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
"""Garg crop as fractions of (H, H, W, W): rows [int(0.408·H), int(0.992·H)), columns
[int(0.036·W), int(0.964·W))."""
KITTI_BENCHMARK_SIZE = (352, 1216)
"""KITTI benchmark crop (H, W): bottom rows, centred columns; applied to larger frames."""

_NYU_DEPTH_PREFIXES = {"nyu-rgb-depth": "depth_", "nyu-sync-depth": "sync_depth_"}
_NYU_RGB = re.compile(r"^rgb_(.+)$")
_KITTI_SELECTION = re.compile(r"^(.+)_image_(\d+)_image_(0\d)$")


@dataclass(frozen=True)
class DepthSample:
    """One test pair: ``name`` is the image path below the data folder without its suffix."""

    name: str
    image: Path
    depth: Path


class SizeMismatch(MagicBokehError):
    """An image and its ground truth have different sizes (a wrong pairing, never skipped)."""


def _mismatch(sample: DepthSample, image: tuple[int, int], depth: tuple[int, int]) -> SizeMismatch:
    return SizeMismatch(
        f"{sample.image} is {image[1]}×{image[0]} but its ground truth {sample.depth} is "
        f"{depth[1]}×{depth[0]}; pair each image with the depth map of its own frame"
    )


def _relative_name(path: Path, root: Path) -> str:
    return PurePosixPath(path.relative_to(root).as_posix()).with_suffix("").as_posix()


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in READ_SUFFIXES)


def _read_split(root: Path, split: Path) -> list[DepthSample]:
    if not split.is_file():
        raise MagicBokehError(f"split file {split} does not exist; check the path")
    samples = []
    for number, line in enumerate(split.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2:
            raise MagicBokehError(
                f"{split}:{number} has one path; each line needs 'IMAGE DEPTH' relative to the "
                "data folder"
            )
        if fields[1] == "None":
            continue
        name = PurePosixPath(fields[0].lstrip("/"))
        if ".." in name.parts:
            raise MagicBokehError(
                f"{split}:{number}: image paths must lie inside the data folder (no '..')"
            )
        depth = root / fields[1].lstrip("/")
        samples.append(DepthSample(name.with_suffix("").as_posix(), root / name, depth))
    return samples


def _nyu_pairs(root: Path) -> tuple[str, list[DepthSample]]:
    found: dict[str, list[DepthSample]] = {layout: [] for layout in _NYU_DEPTH_PREFIXES}
    for image in _images_under(root):
        match = _NYU_RGB.match(image.stem)
        if not match:
            continue
        for layout, prefix in _NYU_DEPTH_PREFIXES.items():
            depth = image.with_name(f"{prefix}{match.group(1)}.png")
            if depth.is_file():
                found[layout].append(DepthSample(_relative_name(image, root), image, depth))
                break
    layout = max(found, key=lambda key: len(found[key]))
    return layout, found[layout]


def _kitti_pairs(root: Path) -> tuple[str, list[DepthSample]]:
    raw, selection = [], []
    ground_truth: dict[tuple[str, str, str], Path] = {}
    images = []
    for path in _images_under(root):
        parts = path.parts
        if len(parts) >= 5 and parts[-4:-2] == ("proj_depth", "groundtruth"):
            ground_truth[(parts[-5], parts[-2], path.stem)] = path
        elif len(parts) >= 4 and parts[-2] == "data" and parts[-3].startswith("image_0"):
            images.append(path)
        elif parts[-2] == "image" and (match := _KITTI_SELECTION.match(path.stem)):
            prefix, frame, camera = match.groups()
            depth = path.parent.parent / "groundtruth_depth"
            depth = depth / f"{prefix}_groundtruth_depth_{frame}_image_{camera}.png"
            if depth.is_file():
                selection.append(DepthSample(_relative_name(path, root), path, depth))
    for image in images:
        key = (image.parts[-4], image.parts[-3], image.stem)
        if key in ground_truth:
            raw.append(DepthSample(_relative_name(image, root), image, ground_truth[key]))
    return ("kitti-raw", raw) if len(raw) >= len(selection) else ("kitti-selection", selection)


def find_samples(
    protocol: DepthProtocol, root: str | Path, split: str | Path | None = None
) -> tuple[str, list[DepthSample]]:
    """The layout name and the sorted test pairs of ``protocol`` found under ``root``.

    Raises:
        MagicBokehError: ``root`` is not a folder, or no pairs are found (the message lists
            the accepted layouts).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MagicBokehError(f"--data {root} is not a folder; give the dataset's root folder")
    if split is not None:
        layout, samples = "split", _read_split(root, Path(split).expanduser())
    elif protocol.name == "nyu":
        layout, samples = _nyu_pairs(root)
    else:
        layout, samples = _kitti_pairs(root)
    if not samples:
        expected = (
            "<scene>/rgb_<id>.png + depth_<id>.png, or rgb_<id>.jpg + sync_depth_<id>.png"
            if protocol.name == "nyu"
            else "<drive>/image_02/data/<id>.png + <drive>/proj_depth/groundtruth/image_02/"
            "<id>.png, or val_selection_cropped/image + groundtruth_depth"
        )
        raise MagicBokehError(
            f"no {protocol.title} image/depth pairs found in {root}; expected {expected}, "
            "or pass --split FILE listing 'IMAGE DEPTH' per line"
        )
    return layout, sorted(samples, key=lambda s: s.name)


def _size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header (no full decode)."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def check_sample(sample: DepthSample) -> str | None:
    """Why ``sample`` cannot be read (missing or unreadable file), or None when its headers read.

    Raises:
        SizeMismatch: the image and its ground truth have different sizes.
    """
    sizes = []
    for path in (sample.image, sample.depth):
        if not path.is_file():
            return f"{path} does not exist"
        try:
            sizes.append(_size(path))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            return f"{path} cannot be read ({type(error).__name__})"
    if sizes[0] != sizes[1]:
        raise _mismatch(sample, sizes[0], sizes[1])
    return None


def probe_samples(samples: list[DepthSample]) -> tuple[list[DepthSample], list[dict]]:
    """Readable samples, and ``{"name", "reason"}`` for the others (see :func:`check_sample`)."""
    usable, skipped = [], []
    for sample in samples:
        reason = check_sample(sample)
        if reason is None:
            usable.append(sample)
        else:
            skipped.append({"name": sample.name, "reason": reason})
    return usable, skipped


def read_ground_truth(path: Path, protocol: DepthProtocol) -> np.ndarray:
    """A 16-bit ground-truth PNG as ``H×W`` float64 depth in metres (0 = no measurement)."""
    codes = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if codes is None:
        raise MagicBokehError(f"{path} cannot be decoded as a PNG depth map")
    if codes.ndim != 2 or codes.dtype != np.uint16:
        raise MagicBokehError(
            f"{path} is {codes.dtype} with shape {codes.shape}; {protocol.title} ground truth is "
            f"a one-channel 16-bit PNG of depth × {protocol.depth_scale:g}"
        )
    return codes.astype(np.float64) / protocol.depth_scale


def benchmark_crop(array: np.ndarray, protocol: DepthProtocol) -> np.ndarray:
    """KITTI frames larger than 352×1216 cropped to the benchmark size (bottom, centred)."""
    height, width = array.shape[:2]
    crop_h, crop_w = KITTI_BENCHMARK_SIZE
    if protocol.name != "kitti" or height < crop_h or width < crop_w:
        return array
    top, left = height - crop_h, (width - crop_w) // 2
    return array[top : top + crop_h, left : left + crop_w]


def read_sample(sample: DepthSample, protocol: DepthProtocol) -> tuple[np.ndarray, np.ndarray]:
    """RGB ``H×W×3`` float32 sRGB in [0, 1] and ground-truth depth ``H×W`` float64 metres.

    KITTI frames are cropped to the benchmark size.

    Raises:
        SizeMismatch: the two sizes differ. MagicBokehError: a file cannot be decoded.
    """
    try:
        rgb = load_image(sample.image).rgb
        depth = read_ground_truth(sample.depth, protocol)
    except OSError as error:
        raise MagicBokehError(f"{sample.name} cannot be read ({error})") from error
    if rgb.shape[:2] != depth.shape:
        raise _mismatch(sample, rgb.shape[:2], depth.shape)
    return benchmark_crop(rgb, protocol), benchmark_crop(depth, protocol)


def crop_mask(shape: tuple[int, int], protocol: DepthProtocol) -> np.ndarray:
    """Boolean ``H×W`` mask of the protocol's evaluation crop.

    Eigen (NYUv2): :data:`NYU_EIGEN_CROP`, exact on 480×640 frames and scaled in proportion on
    other sizes. Garg (KITTI): :data:`KITTI_GARG_CROP` fractions, truncated to integers.
    """
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    if protocol.crop == "eigen":
        top, bottom, left, right = NYU_EIGEN_CROP
        fh, fw = height / NYU_FRAME[0], width / NYU_FRAME[1]
        mask[round(top * fh) : round(bottom * fh), round(left * fw) : round(right * fw)] = True
    else:
        top, bottom, left, right = KITTI_GARG_CROP
        mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = (
            True
        )
    return mask


def valid_mask(depth: np.ndarray, protocol: DepthProtocol) -> np.ndarray:
    """Pixels scored: inside the crop and ``min_depth < depth < max_depth``."""
    in_range = (depth > protocol.min_depth) & (depth < protocol.max_depth)
    return in_range & crop_mask(depth.shape, protocol)
