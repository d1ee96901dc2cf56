"""Reading and writing photos: JPEG, PNG, TIFF, WebP and HEIC/HEIF.

:func:`load_image` returns a :class:`LoadedImage` whose ``rgb`` is an ``H×W×3`` float32
array of **sRGB-encoded** values in [0, 1], upright (the EXIF orientation is applied; for
HEIF the decoder applies the container's rotation and mirroring), at the full precision of
the source: 16-bit PNG and TIFF are decoded without passing through 8 bits, and float TIFF
keeps its values (clipped to [0, 1]). Grayscale becomes three equal channels, palettes are
expanded. The ICC profile is returned untouched so it can be written back.

Alpha: the renderer works on RGB only. ``alpha`` (``H×W`` float32 in [0, 1], straight, not
premultiplied) is carried through unchanged: it is returned by :func:`load_image` and can be
handed back to :func:`save_image`, which writes it where the format supports it (PNG, TIFF,
WebP) and drops it for JPEG. Colour values under transparent pixels are kept as stored;
premultiplied sources (associated-alpha TIFF, premultiplied HEIF) are un-premultiplied.

Damaged input is an error, never a padded image: Pillow's ``LOAD_TRUNCATED_IMAGES`` is
switched off and every image is fully decoded. Images larger than ``max_pixels`` (default
:data:`MAX_PIXELS`, 200 MP) are refused before decoding; Pillow's decompression-bomb limit
is raised to at least that so the size message is ours. Other formats (GIF, BMP, ...) are
refused with the list of supported ones.

:func:`save_image` picks the format from the extension, rounds to the nearest integer code
value, and writes atomically (see :mod:`magicbokeh.io.atomic`).

:func:`to_tensor` / :func:`from_tensor` convert between the ``H×W×3`` array and the
``1×3×H×W`` float32 tensor the models use (values unchanged, still sRGB-encoded).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import atomic_write
from magicbokeh.io.png import write_png

if TYPE_CHECKING:  # torch is imported where tensors are made, so decoding needs no torch
    import torch

__all__ = [
    "MAX_PIXELS",
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
    "LoadedImage",
    "apply_exif_orientation",
    "from_tensor",
    "load_image",
    "save_image",
    "to_tensor",
]

MAX_PIXELS = 200_000_000
"""Default largest image :func:`load_image` accepts: 200 megapixels (2.4 GB as float32 RGB).
The environment variable ``MAGICBOKEH_MAX_PIXELS`` overrides it."""

#: Lossless encoder settings, chosen by measurement (``benchmarks/bench_render_command.py``,
#: ``benchmarks/bench_png.py``, docs/benchmarks_png.md): 8-bit PNG with zlib's run-length
#: strategy after PNG's per-row filters is 4-7x faster than Pillow's default (level 6) and
#: within a few percent of its size (often smaller on photos); TIFF with the horizontal
#: predictor and zlib level 1 is faster and smaller than plain zlib. PNGs are written by
#: :func:`magicbokeh.io.png.write_png` (Paeth filter for 8-bit, Up for 16-bit, bands of rows
#: compressed on up to 4 threads). On the two rendered 12 MP scenes of ``bench_png.py``
#: (2-core CPU dev machine, nearly idle, median of 7 rounds), 8-bit: 0.22-0.23 s wall and
#: 0.42-0.43 CPU s on 2 threads against 0.51-0.58 s (wall = CPU) for Pillow at these zlib
#: settings, the same size (+0.3%); 16-bit: 0.34-0.35 s wall against 0.73-0.80 s for
#: OpenCV, 0-4% smaller. When the machine is busy and the process gets one core, the
#: threads bring nothing and the gain is the CPU time alone (8-bit: 0.36-0.42 s on 1 thread).
PNG_ZLIB_LEVEL = 1
PNG_ZLIB_STRATEGY = zlib.Z_RLE
TIFF_ZLIB_LEVEL = 1

SUPPORTED_READ = "JPEG, PNG, TIFF, WebP, HEIC/HEIF"
SUPPORTED_WRITE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
#: File-name suffixes of readable images, for collecting the images in a folder.
READ_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif")

# PIL format names we decode, mapped to the names used in messages.
_READABLE_FORMATS = {
    "JPEG": "JPEG",
    "MPO": "JPEG",  # JPEG with a multi-picture index (many phone photos)
    "PNG": "PNG",
    "TIFF": "TIFF",
    "WEBP": "WebP",
    "HEIF": "HEIF",
}
_EXIF_ORIENTATION = 0x0112

pillow_heif.register_heif_opener()
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    # Our own size check (with its own message) runs first; PIL's guard stays as a backstop.
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass
class LoadedImage:
    """A decoded photo.

    Attributes:
        rgb: ``H×W×3`` float32, sRGB-encoded, in [0, 1], upright.
        alpha: ``H×W`` float32 in [0, 1], straight (not premultiplied), or None when the
            source has no transparency.
        bit_depth: 8 or 16, the precision per channel of the source (10/12-bit HEIF and
            float TIFF count as 16, so saving with this depth keeps their precision).
        icc_profile: the embedded ICC profile bytes, or None.
        source: the path the image was read from, or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    icc_profile: bytes | None
    source: str | None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


# ----------------------------------------------------------------------------------------
# Loading


def max_pixels_limit() -> int:
    """The pixel limit in force: ``$MAGICBOKEH_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`."""
    text = os.environ.get("MAGICBOKEH_MAX_PIXELS", "")
    try:
        return int(float(text)) if text else MAX_PIXELS
    except ValueError:
        raise MagicBokehError(
            f"MAGICBOKEH_MAX_PIXELS={text!r} is not a number: set it to a pixel count such as 4e8"
        ) from None


def load_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> LoadedImage:
    """Decode a photo into float32 sRGB-encoded RGB in [0, 1] (see the module docstring).

    Args:
        path: a JPEG, PNG, TIFF, WebP or HEIC/HEIF file (the content decides, not the name).
        max_pixels: refuse images with more pixels than this (width × height); default
            :func:`max_pixels_limit`.

    Raises:
        MagicBokehError: the file is missing, empty, truncated or damaged, in an unsupported
            format, or larger than ``max_pixels``.
    """
    file = Path(path).expanduser()
    max_pixels = max_pixels_limit() if max_pixels is None else max_pixels
    if not file.exists():
        raise MagicBokehError(f"image {file} does not exist; check the path")
    if not file.is_file():
        raise MagicBokehError(f"image {file} is not a file; give the path of an image file")
    if file.stat().st_size == 0:
        raise MagicBokehError(f"image {file} is empty (0 bytes); give a complete image file")

    try:
        with open(file, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MagicBokehError(
            f"cannot read image {file} ({reason}); check its permissions"
        ) from None
    if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        decoded = _load_tiff(file, max_pixels)
        if decoded is not None:
            return decoded

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(file)
    except Image.DecompressionBombError:
        raise MagicBokehError(_too_large_message(file, None, max_pixels)) from None
    except UnidentifiedImageError:
        raise MagicBokehError(
            f"{file} is not an image in a supported format ({SUPPORTED_READ}) or is damaged; "
            "convert it to PNG or JPEG"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MagicBokehError(_damaged_message(file, exc)) from None

    with pil:
        kind = _READABLE_FORMATS.get(str(pil.format))
        if kind is None:
            raise MagicBokehError(
                f"{file} is a {pil.format} image, which is not supported; "
                f"convert it to one of {SUPPORTED_READ}"
            )
        width, height = pil.size
        if width * height == 0:
            raise MagicBokehError(
                f"image {file} has no pixels ({width}×{height}); give a real image"
            )
        if width * height > max_pixels:
            raise MagicBokehError(_too_large_message(file, (width, height), max_pixels))
        icc = pil.info.get("icc_profile") or None
        try:
            if kind == "HEIF":
                pixels, bit_depth, icc_heif = _decode_heif(file)
                icc = icc_heif or icc
                orientation = 1  # libheif already applied the container's rotation/mirroring
            else:
                orientation = _exif_orientation(pil)
                if kind == "PNG" and _png_bit_depth(file) == 16:
                    pixels, bit_depth = _decode_png16(file)
                else:
                    pixels, bit_depth = _decode_pil(pil)
        except MagicBokehError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
            raise MagicBokehError(_damaged_message(file, exc)) from None

    return _finish(file, pixels, bit_depth, icc, orientation)


def _finish(
    file: Path, pixels: np.ndarray, bit_depth: int, icc: bytes | None, orientation: int
) -> LoadedImage:
    rgb, alpha = _split_channels(pixels, file)
    rgb = apply_exif_orientation(rgb, orientation)
    if alpha is not None:
        alpha = apply_exif_orientation(alpha, orientation)
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.float32),
        alpha=None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32),
        bit_depth=bit_depth,
        icc_profile=icc,
        source=str(file),
    )


def _too_large_message(file: Path, size: tuple[int, int] | None, max_pixels: int) -> str:
    limit = f"{max_pixels / 1e6:g} MP"
    what = f"{size[0]}×{size[1]} = {size[0] * size[1] / 1e6:.1f} MP" if size else "too many pixels"
    return (
        f"image {file} is too large ({what}; the limit is {limit}); downscale it first "
        "or raise the limit (MAGICBOKEH_MAX_PIXELS=N)"
    )


def _damaged_message(file: Path, exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"image {file} cannot be decoded ({detail}); the file is truncated or damaged, "
        "re-export or re-download it"
    )


def _exif_orientation(pil: Image.Image) -> int:
    try:
        value = int(pil.getexif().get(_EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, SyntaxError, struct.error):
        return 1
    return value if 1 <= value <= 8 else 1


def apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (``H×W`` or ``H×W×C``) upright according to an EXIF orientation.

    The EXIF value says how the stored rows map to the scene: 1 upright, 2 mirrored
    left-right, 3 rotated 180°, 4 mirrored top-bottom, 5 transposed, 6 needs a 90° clockwise
    turn, 7 transversed, 8 needs a 90° counter-clockwise turn. Other values leave it as is.
    """
    if orientation == 2:
        out = array[:, ::-1]
    elif orientation == 3:
        out = array[::-1, ::-1]
    elif orientation == 4:
        out = array[::-1]
    elif orientation == 5:
        out = np.swapaxes(array, 0, 1)
    elif orientation == 6:
        out = np.rot90(array, k=-1)
    elif orientation == 7:
        out = np.swapaxes(array[::-1, ::-1], 0, 1)
    elif orientation == 8:
        out = np.rot90(array, k=1)
    else:
        out = array
    return np.ascontiguousarray(out)


def _png_bit_depth(file: Path) -> int:
    """Bits per sample from the PNG header (IHDR is always the first chunk)."""
    with open(file, "rb") as handle:
        head = handle.read(26)
    return head[24] if len(head) == 26 else 8


def _decode_png16(file: Path) -> tuple[np.ndarray, int]:
    data = np.fromfile(file, dtype=np.uint8)
    import cv2  # here: reading an 8-bit photo needs no OpenCV

    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError("PNG data is incomplete")
    return _bgr_to_rgb(pixels), 16


def _bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels[:, :, ::-1]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return pixels[:, :, [2, 1, 0, 3]]
    return pixels


def _load_tiff(file: Path, max_pixels: int) -> LoadedImage | None:
    """Full-precision TIFF decoding with tifffile (8/16-bit integer and float samples).

    Returns None for layouts it leaves to Pillow (palette, CMYK, YCbCr, multi-page stacks).
    """
    import tifffile  # here: only TIFF files need it

    try:
        with tifffile.TiffFile(file) as tif:
            page = tif.pages.first
            width, height = int(page.imagewidth), int(page.imagelength)
            if width * height == 0:
                raise MagicBokehError(
                    f"image {file} has no pixels ({width}×{height}); give a real image"
                )
            if width * height > max_pixels:
                raise MagicBokehError(_too_large_message(file, (width, height), max_pixels))
            plain = page.photometric in (
                tifffile.PHOTOMETRIC.MINISBLACK,
                tifffile.PHOTOMETRIC.RGB,
            )
            if not plain or page.axes not in ("YX", "YXS", "SYX"):
                return None
            pixels = page.asarray()
            if page.axes == "SYX":
                pixels = np.moveaxis(pixels, 0, -1)
            if pixels.dtype not in (np.uint8, np.uint16) and pixels.dtype.kind != "f":
                return None
            if tuple(page.extrasamples[:1]) == (tifffile.EXTRASAMPLE.ASSOCALPHA,):
                pixels = _unpremultiply(pixels)
            orientation_tag = page.tags.get(274)
            icc_tag = page.tags.get(34675)
            orientation = int(orientation_tag.value) if orientation_tag is not None else 1
            icc = bytes(icc_tag.value) if icc_tag is not None else None
    except MagicBokehError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise MagicBokehError(_damaged_message(file, exc)) from None
    bit_depth = 8 if pixels.dtype == np.uint8 else 16
    return _finish(file, pixels, bit_depth, icc, orientation if 1 <= orientation <= 8 else 1)


def _unpremultiply(pixels: np.ndarray) -> np.ndarray:
    """``H×W×C`` with premultiplied alpha last → float values with straight alpha."""
    if pixels.dtype.kind == "f":
        values = pixels.astype(np.float32)
    else:
        values = pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    alpha = values[:, :, -1:]
    colour = np.divide(
        values[:, :, :-1], alpha, out=np.zeros_like(values[:, :, :-1]), where=alpha > 0
    )
    return np.concatenate([np.clip(colour, 0.0, 1.0), alpha], axis=2)


def _decode_heif(file: Path) -> tuple[np.ndarray, int, bytes | None]:
    heif = pillow_heif.open_heif(file, convert_hdr_to_8bit=False, hdr_to_16bit=True)
    primary = heif[heif.primary_index]
    pixels = np.asarray(primary)
    source_bits = int(primary.info.get("bit_depth", 8))
    if pixels.dtype == np.uint16 and 8 < source_bits < 16:
        # 10/12-bit samples arrive shifted into the high bits of 16-bit words.
        top = ((1 << source_bits) - 1) << (16 - source_bits)
        pixels = pixels.astype(np.float32) / np.float32(top)
    if primary.premultiplied_alpha:
        pixels = _unpremultiply(pixels)
    return pixels, 8 if source_bits <= 8 else 16, primary.info.get("icc_profile") or None


def _decode_pil(pil: Image.Image) -> tuple[np.ndarray, int]:
    pil.load()
    mode = pil.mode
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(pil.convert("I"), dtype=np.float64) / 65535.0, 16
    if mode == "F":
        return np.asarray(pil, dtype=np.float32), 16
    has_alpha = "A" in pil.getbands() or "a" in mode or "transparency" in pil.info
    wanted = "RGBA" if has_alpha else "RGB"
    return np.asarray(pil if mode == wanted else pil.convert(wanted)), 8


def _split_channels(pixels: np.ndarray, file: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer or float pixels (``H×W``, ``H×W×{1,2,3,4}``) → RGB and alpha in [0, 1]."""
    if pixels.dtype.kind in "iu":
        values = pixels.astype(np.float32)  # one image-sized copy, scaled in place
        values /= np.float32(np.iinfo(pixels.dtype).max)
    else:
        values = pixels.astype(np.float32)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise MagicBokehError(
                f"image {file} has {bad} pixel values that are not finite (NaN or inf); "
                "fix them in an image editor or export a PNG"
            )
        values = np.clip(values, 0.0, 1.0)
    if values.ndim == 2:
        values = values[:, :, None]
    channels = values.shape[2]
    if channels == 1:
        return np.repeat(values, 3, axis=2), None
    if channels == 2:
        return np.repeat(values[:, :, :1], 3, axis=2), values[:, :, 1]
    if channels == 3:
        return values, None
    return values[:, :, :3], values[:, :, 3]


# ----------------------------------------------------------------------------------------
# Saving


def save_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    overwrite: bool = False,
    icc_profile: bytes | None = None,
    quality: int = 95,
) -> Path:
    """Write an sRGB-encoded ``H×W×3`` image with values in [0, 1]; return the path written.

    The extension picks the format: ``.png`` and ``.tif``/``.tiff`` (8 or 16 bits per
    channel), ``.jpg``/``.jpeg`` and ``.webp`` (always 8 bits; ``bit_depth=16`` is written as
    8). ``alpha`` (``H×W`` in [0, 1], straight) is written for PNG, TIFF and WebP and dropped
    for JPEG. Values are clipped to [0, 1] and rounded to the nearest code value. The ICC
    profile is embedded when given. ``quality`` (1–100) applies to JPEG and WebP; WebP at
    quality 100 is lossless.

    Raises:
        MagicBokehError: unknown extension, bad shapes or non-finite values, ``bit_depth``
            not 8 or 16, or the output cannot be written (see :func:`ensure_writable`).
    """
    target = Path(path).expanduser()
    suffix = target.suffix.lower()
    if suffix not in SUPPORTED_WRITE:
        raise MagicBokehError(
            f"cannot write {target}: unknown image extension {target.suffix or '(none)'}; "
            f"use one of {', '.join(SUPPORTED_WRITE)}"
        )
    if bit_depth not in (8, 16):
        raise MagicBokehError(f"bit depth must be 8 or 16, not {bit_depth}")
    if not 1 <= int(quality) <= 100:
        raise MagicBokehError(f"quality must be between 1 and 100, not {quality}")
    rgb = _checked_float(rgb, "rgb", ndim=3)
    if rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise MagicBokehError(f"rgb must be H×W×3 with H, W > 0, not {rgb.shape}")
    if alpha is not None:
        alpha = _checked_float(alpha, "alpha", ndim=2)
        if alpha.shape != rgb.shape[:2]:
            raise MagicBokehError(f"alpha is {alpha.shape} but the image is {rgb.shape[:2]}")
    if suffix in (".jpg", ".jpeg", ".webp"):
        bit_depth = 8
    if suffix in (".jpg", ".jpeg"):
        alpha = None

    pixels = rgb if alpha is None else np.concatenate([rgb, alpha[:, :, None]], axis=2)
    scale = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    scaled = np.clip(pixels, 0.0, 1.0)  # a new array: the caller's stays as it is
    scaled *= scale
    codes = np.rint(scaled, out=scaled).astype(dtype)

    with atomic_write(target, overwrite=overwrite) as temporary:
        if suffix == ".png":
            _write_png(temporary, codes, icc_profile)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(
                temporary,
                codes,
                photometric="rgb",
                extrasamples=("unassalpha",) if alpha is not None else None,
                compression="zlib",
                compressionargs={"level": TIFF_ZLIB_LEVEL},
                predictor=True,  # horizontal differencing: smaller and faster to compress
                iccprofile=icc_profile,
            )
        else:
            options: dict[str, object] = {"quality": int(quality)}
            if icc_profile:
                options["icc_profile"] = icc_profile
            if suffix in (".jpg", ".jpeg"):
                options["subsampling"] = 0 if quality >= 90 else 2
                Image.fromarray(codes, "RGB").save(temporary, format="JPEG", **options)
            else:
                mode = "RGBA" if alpha is not None else "RGB"
                options["lossless"] = quality == 100
                options["exact"] = True
                Image.fromarray(codes, mode).save(temporary, format="WEBP", **options)
    return target


def _checked_float(array: np.ndarray, name: str, *, ndim: int) -> np.ndarray:
    values = np.asarray(array)
    if values.ndim != ndim:
        raise MagicBokehError(f"{name} must have {ndim} dimensions, not shape {values.shape}")
    values = values.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise MagicBokehError(f"{name} has {bad} values that are not finite; cannot save it")
    return values


def _write_png(file: Path, codes: np.ndarray, icc_profile: bytes | None) -> None:
    write_png(
        file, codes, icc_profile=icc_profile, level=PNG_ZLIB_LEVEL, strategy=PNG_ZLIB_STRATEGY
    )


# ----------------------------------------------------------------------------------------
# Tensors


def to_tensor(rgb: np.ndarray, *, view: bool = False) -> torch.Tensor:
    """``H×W×3`` array → ``1×3×H×W`` float32 tensor on the CPU (values unchanged).

    ``view=True`` shares the array's memory when it already is contiguous float32 (the tensor
    then has channels-last strides), saving an image-sized copy.
    """
    import torch

    array = np.asarray(rgb)
    if array.ndim != 3 or array.shape[2] != 3:
        raise MagicBokehError(f"expected an H×W×3 image, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor.permute(2, 0, 1).unsqueeze(0)
    return tensor if view else tensor.contiguous()


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """``1×3×H×W`` or ``3×H×W`` tensor → ``H×W×3`` float32 array (values unchanged)."""
    import torch

    values = tensor.detach()
    if values.ndim == 4:
        if values.shape[0] != 1:
            raise MagicBokehError(f"expected a batch of one image, got shape {tuple(values.shape)}")
        values = values[0]
    if values.ndim != 3 or values.shape[0] != 3:
        raise MagicBokehError(f"expected a 1×3×H×W or 3×H×W tensor, got {tuple(values.shape)}")
    return values.permute(1, 2, 0).to(device="cpu", dtype=torch.float32).contiguous().numpy()
