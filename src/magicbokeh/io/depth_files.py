"""Depth and disparity maps stored as files.

Everything in magicbokeh speaks *disparity*: an ``H×W`` float32 map, larger = nearer,
normalised to [0, 1]. :func:`load_depth` reads

* ``.npy``: a 2-D array, or ``1×H×W`` / ``H×W×1``;
* ``.png`` (8- or 16-bit, values divided by 255 or 65535), also ``.jpg``/``.jpeg`` (8-bit);
* ``.tif``/``.tiff``: integer or float, read with tifffile (integers divided by their maximum);
* ``.exr``: the channel ``Y``, else ``Z``, else ``R`` (also as the last part of a layered
  name such as ``depth.Z``), else the first channel in name order;
* ``.pfm``: portable float map (rows stored bottom-to-top, the sign of the scale gives the
  byte order; the magnitude of the scale is ignored).

Multi-channel images contribute their first channel (red for RGB images).

``kind="disparity"`` (default) takes the values as disparity. ``kind="depth"`` takes them as
distance (larger = farther) and converts with ``disparity = 1 / depth``; zero or negative
depth values are invalid and raise an error with their count. Because normalisation follows,
the unit and scale of the depth do not matter.

Normalisation (``normalize=True``) maps min..max linearly onto 0..1; a constant map (no depth
information) becomes all zeros. NaN or infinite values raise an error with their count.

:func:`save_depth` writes ``.npy`` (float32), ``.png`` (16-bit), ``.tif``/``.tiff`` (float32),
``.exr`` (float32 channel ``Y``) and ``.pfm``, atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import require
from magicbokeh.io.atomic import atomic_write

__all__ = [
    "DEPTH_READ_EXTENSIONS",
    "DEPTH_WRITE_EXTENSIONS",
    "check_disparity",
    "depth_to_disparity",
    "encode_disparity",
    "load_depth",
    "match_depth_to_image",
    "normalize_disparity",
    "read_pfm",
    "require_finite",
    "save_depth",
    "write_pfm",
]

DEPTH_READ_EXTENSIONS = (".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".pfm")
DEPTH_WRITE_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".exr", ".pfm")
_ASPECT_TOLERANCE = 0.01


def load_depth(
    path: str | os.PathLike[str], *, kind: str = "disparity", normalize: bool = True
) -> np.ndarray:
    """Read a depth or disparity file as ``H×W`` float32 disparity (larger = nearer).

    Args:
        path: a file in one of :data:`DEPTH_READ_EXTENSIONS` (see the module docstring).
        kind: ``"disparity"`` (values grow toward the camera) or ``"depth"`` (values grow
            away from it; converted with ``disparity = 1 / depth``).
        normalize: min-max normalise to [0, 1] (a constant map becomes zeros). Without it the
            (converted) values are returned as they are.

    Raises:
        MagicBokehError: missing or unreadable file, unknown extension, bad shape, values
            that are not finite, or non-positive depth values with ``kind="depth"``.
    """
    if kind not in ("disparity", "depth"):
        raise MagicBokehError(f'depth kind must be "disparity" or "depth", not "{kind}"')
    file = Path(path).expanduser()
    if not file.is_file():
        raise MagicBokehError(f"depth file {file} does not exist; check the path")
    if file.stat().st_size == 0:
        raise MagicBokehError(f"depth file {file} is empty (0 bytes); give a complete file")
    suffix = file.suffix.lower()
    if suffix not in DEPTH_READ_EXTENSIONS:
        raise MagicBokehError(
            f"depth file {file} has an unsupported extension {file.suffix or '(none)'}; "
            f"use one of {', '.join(DEPTH_READ_EXTENSIONS)}"
        )
    try:
        values = _READERS[suffix](file)
    except MagicBokehError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, KeyError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MagicBokehError(
            f"depth file {file} cannot be read ({detail}); the file is damaged or not a "
            f"{suffix} depth map, re-export it"
        ) from None
    values = _as_plane(values, file)
    require_finite(values, f"depth file {file}")
    if kind == "depth":
        values = depth_to_disparity(values, source=f"depth file {file}")
    return normalize_disparity(values) if normalize else values.astype(np.float32)


def depth_to_disparity(depth: np.ndarray, *, source: str = "depth map") -> np.ndarray:
    """``disparity = 1 / depth`` for a map of positive distances (any unit); float32.

    Raises:
        MagicBokehError: some depth values are zero or negative (the message gives the count).
    """
    depth = np.asarray(depth, dtype=np.float64)
    invalid = int(np.count_nonzero(depth <= 0))
    if invalid:
        raise MagicBokehError(
            f"{source} has {invalid} depth values that are zero or negative (of {depth.size}); "
            "fill the holes with valid distances, or pass kind='disparity' if the file "
            "stores disparity"
        )
    return (1.0 / depth).astype(np.float32)


def normalize_disparity(disparity: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] as float32; a constant map becomes all zeros."""
    values = np.array(disparity, dtype=np.float64)  # a copy, normalised in place
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.float32)
    values -= low
    values /= high - low
    return values.astype(np.float32)


def require_finite(values: np.ndarray, source: str) -> None:
    """Raise :class:`MagicBokehError` naming ``source`` if ``values`` hold NaN or infinity."""
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise MagicBokehError(
            f"{source} has {bad} values that are not finite (NaN or inf) of {values.size}; "
            "fill them first (e.g. with the nearest valid value)"
        )


def check_disparity(values: np.ndarray, source: str = "the depth array") -> None:
    """Raise :class:`MagicBokehError` unless ``values`` is ``H×W``, finite and in [0, 1]."""
    if values.ndim != 2:
        raise MagicBokehError(f"{source} must be H×W, got shape {values.shape}")
    require_finite(values, source)
    if values.min() < 0.0 or values.max() > 1.0:
        raise MagicBokehError(
            f"{source} is disparity and must lie in [0, 1] (got {values.min():g}.."
            f"{values.max():g}): normalise it to [0, 1] first"
        )


def encode_disparity(disparity: np.ndarray) -> bytes:
    """``H×W`` disparity in [0, 1] → 16-bit gray PNG bytes, code ``round(d·65535)`` (clipped)."""
    codes = np.rint(np.clip(disparity, 0.0, 1.0) * 65535.0).astype(np.uint16)
    import cv2

    ok, encoded = cv2.imencode(".png", codes)
    if not ok:
        raise MagicBokehError("could not encode the disparity map as PNG")
    return encoded.tobytes()


def _as_plane(values: np.ndarray, file: Path) -> np.ndarray:
    """Accept ``H×W``, ``1×H×W`` or ``H×W×C`` (first channel); return ``H×W`` float."""
    array = np.asarray(values)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise MagicBokehError(
            f"depth file {file} holds an array of shape {array.shape}; a depth map must be "
            "H×W (or 1×H×W, H×W×1)"
        )
    if array.size == 0:
        raise MagicBokehError(f"depth file {file} has no pixels (shape {array.shape})")
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        raise MagicBokehError(
            f"depth file {file} holds {array.dtype} values; a depth map holds numbers"
        )
    if array.dtype.kind in "iu":
        return array.astype(np.float64)
    return array.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------
# Readers: each returns an array (any layout accepted by _as_plane).


def _read_npy(file: Path) -> np.ndarray:
    return np.load(file, allow_pickle=False)


def _read_8_or_16_bit_image(file: Path) -> np.ndarray:
    import cv2

    data = cv2.imdecode(np.fromfile(file, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise ValueError("the image data is incomplete or not an image")
    if data.ndim == 3:
        data = data[:, :, 2] if data.shape[2] >= 3 else data[:, :, 0]  # BGR(A): red is 2
    if data.dtype == np.uint8:
        return data.astype(np.float32) / np.float32(255)
    if data.dtype == np.uint16:
        return data.astype(np.float32) / np.float32(65535)
    return data.astype(np.float32)


def _read_tiff(file: Path) -> np.ndarray:
    import tifffile  # here: only TIFF maps need it (slow to import)

    with tifffile.TiffFile(file) as tif:
        page = tif.pages.first
        data = page.asarray()
        axes = page.axes
    if axes.startswith("S") and data.ndim == 3:
        data = data[0]
    if data.dtype.kind in "iu" and data.dtype != np.bool_:
        return data.astype(np.float64) / float(np.iinfo(data.dtype).max)
    return data


def _openexr() -> ModuleType:
    """The optional OpenEXR module, or an error that says how to install it."""
    require("exr", "EXR depth files (or use .npy/.tif/.pfm)")
    import OpenEXR

    return OpenEXR


def _read_exr(file: Path) -> np.ndarray:
    openexr = _openexr()

    with openexr.File(str(file), separate_channels=True) as exr:
        channels = {name: channel.pixels for name, channel in exr.channels().items()}
    if not channels:
        raise ValueError("the EXR file has no channels")
    for wanted in ("Y", "Z", "R"):
        for name in sorted(channels):
            if name == wanted or name.endswith("." + wanted):
                return np.asarray(channels[name], dtype=np.float32)
    return np.asarray(channels[sorted(channels)[0]], dtype=np.float32)


_READERS = {
    ".npy": _read_npy,
    ".png": _read_8_or_16_bit_image,
    ".jpg": _read_8_or_16_bit_image,
    ".jpeg": _read_8_or_16_bit_image,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".exr": _read_exr,
}


def read_pfm(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PFM file as float32 ``H×W`` (``Pf``) or ``H×W×3`` (``PF``), top row first.

    PFM stores rows bottom-to-top; a negative scale means little-endian floats, a positive
    one big-endian. The magnitude of the scale is not applied.
    """
    with open(path, "rb") as handle:
        magic = handle.readline().strip()
        if magic not in (b"Pf", b"PF"):
            raise ValueError("not a PFM file (the header must start with Pf or PF)")
        size = handle.readline().split()
        scale_line = handle.readline().split()
        if len(size) != 2 or len(scale_line) != 1:
            raise ValueError("malformed PFM header")
        width, height = int(size[0]), int(size[1])
        scale = float(scale_line[0])
        if width <= 0 or height <= 0 or scale == 0:
            raise ValueError(f"malformed PFM header (size {width}×{height}, scale {scale})")
        channels = 3 if magic == b"PF" else 1
        count = width * height * channels
        data = np.frombuffer(handle.read(4 * count), dtype="<f4" if scale < 0 else ">f4")
    if data.size != count:
        raise ValueError(f"PFM data is truncated ({data.size} of {count} values)")
    shape = (height, width, channels) if channels == 3 else (height, width)
    return np.ascontiguousarray(data.reshape(shape)[::-1], dtype=np.float32)


def write_pfm(path: str | os.PathLike[str], values: np.ndarray) -> None:
    """Write ``H×W`` (``Pf``) or ``H×W×3`` (``PF``) float32 as PFM in native byte order."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 3:
        magic = b"PF"
    elif array.ndim == 2:
        magic = b"Pf"
    else:
        raise ValueError(f"PFM holds H×W or H×W×3 arrays, not {array.shape}")
    scale = -1.0 if sys.byteorder == "little" else 1.0
    header = magic + b"\n%d %d\n%s\n" % (array.shape[1], array.shape[0], repr(scale).encode())
    with open(path, "wb") as handle:
        handle.write(header)
        handle.write(np.ascontiguousarray(array[::-1]).tobytes())


_READERS[".pfm"] = read_pfm


# ----------------------------------------------------------------------------------------
# Size matching and saving


def match_depth_to_image(
    disparity: np.ndarray, height: int, width: int, *, source: str = "depth"
) -> np.ndarray:
    """Bring an ``h×w`` disparity map to the image size ``height×width``.

    Equal sizes are returned as they are. When the aspect ratios agree within 1 % the map is
    resized (area averaging when shrinking, bilinear when growing). Otherwise the map belongs
    to another framing and an error names both sizes.
    """
    array = np.asarray(disparity)
    if array.ndim != 2:
        raise MagicBokehError(f"{source} map must be H×W, not {array.shape}")
    h, w = array.shape
    if (h, w) == (height, width):
        return array
    if min(h, w, height, width) <= 0:
        raise MagicBokehError(f"{source} map {w}×{h} or image {width}×{height} has no pixels")
    if abs((w / h) / (width / height) - 1.0) > _ASPECT_TOLERANCE:
        raise MagicBokehError(
            f"{source} map is {w}×{h} but the image is {width}×{height} (width×height): the "
            "aspect ratios differ; give a map of the same framing (rotate or crop it to match)"
        )
    shrinking = height * width < h * w
    import cv2

    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(array.astype(np.float32), (width, height), interpolation=interpolation)
    return resized.astype(np.float32)


def save_depth(
    path: str | os.PathLike[str], disparity: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Write an ``H×W`` disparity map; the extension picks the format. Returns the path.

    ``.npy``, ``.tif``/``.tiff``, ``.exr`` and ``.pfm`` store float32 exactly. ``.png``
    stores 16-bit codes ``round(d·65535)`` and therefore needs values in [0, 1].

    Raises:
        MagicBokehError: unknown extension, not ``H×W``, non-finite values, values outside
            [0, 1] for PNG, or the output cannot be written.
    """
    target = Path(path).expanduser()
    suffix = target.suffix.lower()
    if suffix not in DEPTH_WRITE_EXTENSIONS:
        raise MagicBokehError(
            f"cannot write {target}: unknown depth extension {target.suffix or '(none)'}; "
            f"use one of {', '.join(DEPTH_WRITE_EXTENSIONS)}"
        )
    values = np.asarray(disparity, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise MagicBokehError(f"a depth map to save must be H×W, not {values.shape}")
    require_finite(values, "the depth map to save")
    if suffix == ".png" and (values.min() < 0 or values.max() > 1):
        raise MagicBokehError(
            f"a 16-bit PNG stores values in [0, 1] but this map spans "
            f"[{values.min():g}, {values.max():g}]; normalise it or save as .npy/.tif/.exr/.pfm"
        )
    with atomic_write(target, overwrite=overwrite) as temporary:
        if suffix == ".npy":
            with open(temporary, "wb") as handle:
                np.save(handle, values, allow_pickle=False)
        elif suffix == ".png":
            temporary.write_bytes(encode_disparity(values))
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(temporary, values, photometric="minisblack", compression="zlib")
        elif suffix == ".exr":
            openexr = _openexr()
            header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
            with openexr.File(header, {"Y": values}) as exr:
                exr.write(str(temporary))
        else:
            write_pfm(temporary, values)
    return target
