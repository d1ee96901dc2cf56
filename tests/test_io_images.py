"""Loading and saving photos: formats, precision, alpha, orientation, bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
import tifffile
import torch
from PIL import Image, ImageCms, ImageOps

from magicbokeh.errors import MagicBokehError
from magicbokeh.io import from_tensor, load_image, save_image, to_tensor


def _smooth_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    """A smooth colour image in [0, 1] (compresses well with lossy codecs)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack(
        [x / (width - 1), y / (height - 1), 0.5 + 0.4 * np.sin((x + y) / 7.0)], axis=2
    ).astype(np.float32)


def _random_rgb(seed: int, height: int = 16, width: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# ----------------------------------------------------------------------------------------
# Round trips through save_image


@pytest.mark.parametrize(
    ("name", "bit_depth", "tolerance"),
    [
        ("out.png", 8, 0.5 / 255),
        ("out.png", 16, 0.5 / 65535),
        ("out.tif", 8, 0.5 / 255),
        ("out.tiff", 16, 0.5 / 65535),
    ],
)
def test_lossless_round_trip_with_alpha(
    tmp_path: Path, name: str, bit_depth: int, tolerance: float
) -> None:
    rgb = _random_rgb(1)
    alpha = np.random.default_rng(2).random(rgb.shape[:2], dtype=np.float32)
    path = save_image(tmp_path / name, rgb, alpha=alpha, bit_depth=bit_depth)
    loaded = load_image(path)
    assert loaded.bit_depth == bit_depth
    assert loaded.rgb.dtype == np.float32 and loaded.rgb.shape == rgb.shape
    assert np.abs(loaded.rgb - rgb).max() <= tolerance + 1e-7
    assert loaded.alpha is not None and loaded.alpha.dtype == np.float32
    assert np.abs(loaded.alpha - alpha).max() <= tolerance + 1e-7
    assert loaded.source == str(path)


@pytest.mark.parametrize("name", ["out.jpg", "out.jpeg", "out.webp"])
def test_lossy_round_trip(tmp_path: Path, name: str) -> None:
    rgb = _smooth_rgb()
    loaded = load_image(save_image(tmp_path / name, rgb, quality=95))
    assert loaded.bit_depth == 8
    assert loaded.alpha is None
    assert np.abs(loaded.rgb - rgb).mean() < 0.01


def test_webp_keeps_alpha_and_quality_100_is_lossless(tmp_path: Path) -> None:
    rgb = _random_rgb(3)
    alpha = np.random.default_rng(4).random(rgb.shape[:2], dtype=np.float32)
    loaded = load_image(save_image(tmp_path / "out.webp", rgb, alpha=alpha, quality=100))
    assert loaded.alpha is not None
    assert np.abs(loaded.rgb - rgb).max() <= 0.5 / 255 + 1e-7
    assert np.abs(loaded.alpha - alpha).max() <= 0.5 / 255 + 1e-7


def test_jpeg_drops_alpha_and_16_bit_request(tmp_path: Path) -> None:
    rgb = _smooth_rgb()
    alpha = np.ones(rgb.shape[:2], dtype=np.float32)
    loaded = load_image(save_image(tmp_path / "out.jpg", rgb, alpha=alpha, bit_depth=16))
    assert loaded.alpha is None and loaded.bit_depth == 8


def test_save_rounds_to_nearest_code(tmp_path: Path) -> None:
    rgb = np.full((2, 2, 3), 0.7 / 255, dtype=np.float32)  # truncation would give code 0
    rgb[0, 0] = [1.2, -0.3, 254.6 / 255]  # clipped, clipped, rounds up to 255
    path = save_image(tmp_path / "round.png", rgb)
    codes = np.asarray(Image.open(path))
    assert codes[1, 1].tolist() == [1, 1, 1]
    assert codes[0, 0].tolist() == [255, 0, 255]


@pytest.mark.parametrize("name", ["out.png", "out.tif", "out.jpg", "out.webp"])
def test_icc_profile_is_kept(tmp_path: Path, name: str) -> None:
    profile = _srgb_profile()
    loaded = load_image(save_image(tmp_path / name, _smooth_rgb(), icc_profile=profile))
    assert loaded.icc_profile == profile


def test_icc_profile_is_kept_in_16_bit_png(tmp_path: Path) -> None:
    profile = _srgb_profile()
    path = save_image(tmp_path / "out.png", _smooth_rgb(), bit_depth=16, icc_profile=profile)
    loaded = load_image(path)
    assert loaded.bit_depth == 16 and loaded.icc_profile == profile


def test_save_refuses_existing_and_overwrites_when_asked(tmp_path: Path) -> None:
    path = save_image(tmp_path / "out.png", _random_rgb(5))
    with pytest.raises(MagicBokehError, match="exists; pass --overwrite"):
        save_image(path, _random_rgb(6))
    save_image(path, _random_rgb(6), overwrite=True)
    assert np.abs(load_image(path).rgb - _random_rgb(6)).max() <= 0.5 / 255 + 1e-7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_refuses_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_bytes(b"x")
    with pytest.raises(MagicBokehError, match="cannot create the output folder"):
        save_image(blocker / "out.png", _random_rgb(7))


def test_save_rejects_bad_requests(tmp_path: Path) -> None:
    rgb = _random_rgb(8)
    with pytest.raises(MagicBokehError, match="unknown image extension .bmp"):
        save_image(tmp_path / "out.bmp", rgb)
    with pytest.raises(MagicBokehError, match="8 or 16"):
        save_image(tmp_path / "out.png", rgb, bit_depth=12)
    with pytest.raises(MagicBokehError, match="H×W×3"):
        save_image(tmp_path / "out.png", rgb[:, :, :2])
    bad = rgb.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MagicBokehError, match="1 values that are not finite"):
        save_image(tmp_path / "out.png", bad)
    with pytest.raises(MagicBokehError, match="alpha is"):
        save_image(tmp_path / "out.png", rgb, alpha=np.ones((3, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------
# Files written by other tools


def test_16_bit_png_keeps_precision_and_channel_order(tmp_path: Path) -> None:
    codes = np.zeros((3, 4, 3), dtype=np.uint16)
    codes[..., 0] = 1000  # red
    codes[..., 1] = 1001
    codes[..., 2] = 60000  # blue
    codes[0, 0] = [65535, 1, 2]
    path = tmp_path / "sixteen.png"
    cv2.imwrite(str(path), codes[:, :, ::-1])  # OpenCV writes BGR
    loaded = load_image(path)
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.rgb, (codes / 65535.0).astype(np.float32))
    assert loaded.rgb[1, 1, 0] != loaded.rgb[1, 1, 1]  # 1000 and 1001 stay apart


def test_16_bit_gray_and_rgba_png(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    cv2.imwrite(str(tmp_path / "gray16.png"), gray)
    loaded = load_image(tmp_path / "gray16.png")
    assert loaded.bit_depth == 16 and loaded.alpha is None
    for channel in range(3):
        np.testing.assert_allclose(loaded.rgb[..., channel], gray / 65535.0, atol=1e-7)
    bgra = np.zeros((2, 2, 4), dtype=np.uint16)
    bgra[..., 2] = 40000
    bgra[..., 3] = 12345
    cv2.imwrite(str(tmp_path / "rgba16.png"), bgra)
    loaded = load_image(tmp_path / "rgba16.png")
    np.testing.assert_allclose(loaded.rgb[..., 0], 40000 / 65535.0, atol=1e-7)
    assert loaded.alpha is not None
    np.testing.assert_allclose(loaded.alpha, 12345 / 65535.0, atol=1e-7)


def test_8_bit_gray_palette_and_la_png(tmp_path: Path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    assert loaded.bit_depth == 8 and loaded.alpha is None
    np.testing.assert_allclose(loaded.rgb, np.repeat(gray[..., None] / 255.0, 3, axis=2), 1e-6)

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = bytes([255, 0])
    palette.save(tmp_path / "palette.png", transparency=bytes([255, 0]))
    loaded = load_image(tmp_path / "palette.png")
    assert loaded.rgb[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert loaded.rgb[0, 1].tolist() == [0.0, 0.0, 1.0]
    assert loaded.alpha is not None and loaded.alpha.tolist() == [[1.0, 0.0], [0.0, 1.0]]

    la = np.stack([gray, np.full_like(gray, 51)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    assert loaded.alpha is not None
    np.testing.assert_allclose(loaded.alpha, 0.2, atol=1e-6)
    np.testing.assert_allclose(loaded.rgb[..., 2], gray / 255.0, atol=1e-6)


def test_tiff_variants(tmp_path: Path) -> None:
    codes = np.random.default_rng(9).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", codes, photometric="rgb")
    loaded = load_image(tmp_path / "rgb16.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.rgb, (codes / 65535.0).astype(np.float32))

    planar = np.moveaxis(codes, -1, 0)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(load_image(tmp_path / "planar.tif").rgb, loaded.rgb)

    values = np.random.default_rng(10).random((5, 6, 3)).astype(np.float32) * 1.2 - 0.1
    tifffile.imwrite(tmp_path / "float.tif", values, photometric="rgb")
    loaded = load_image(tmp_path / "float.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_allclose(loaded.rgb, np.clip(values, 0, 1), atol=1e-7)

    gray = np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000
    tifffile.imwrite(tmp_path / "gray16.tif", gray, photometric="minisblack")
    loaded = load_image(tmp_path / "gray16.tif")
    np.testing.assert_allclose(loaded.rgb[..., 1], gray / 65535.0, atol=1e-7)

    premultiplied = np.zeros((2, 2, 4), dtype=np.float32)
    premultiplied[..., 0] = 0.25  # straight colour 0.5 at alpha 0.5
    premultiplied[..., 3] = 0.5
    tifffile.imwrite(
        tmp_path / "assoc.tif", premultiplied, photometric="rgb", extrasamples=("assocalpha",)
    )
    loaded = load_image(tmp_path / "assoc.tif")
    np.testing.assert_allclose(loaded.rgb[..., 0], 0.5, atol=1e-6)
    assert loaded.alpha is not None
    np.testing.assert_allclose(loaded.alpha, 0.5, atol=1e-6)


def test_tiff_orientation_icc_and_truncation(tmp_path: Path) -> None:
    codes = np.random.default_rng(15).integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    profile = _srgb_profile()
    path = tmp_path / "tagged.tif"
    tifffile.imwrite(
        path, codes, photometric="rgb", iccprofile=profile, extratags=[(274, "H", 1, 6, True)]
    )
    loaded = load_image(path)
    assert loaded.icc_profile == profile
    np.testing.assert_array_equal(loaded.rgb, (np.rot90(codes, -1) / 65535.0).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MagicBokehError, match="truncated or damaged"):
        load_image(path)


def test_heic_8_and_10_bit(tmp_path: Path) -> None:
    rgb = _smooth_rgb(32, 48)
    codes8 = np.rint(rgb * 255).astype(np.uint8)
    pillow_heif.from_bytes("RGB", (48, 32), codes8.tobytes()).save(
        tmp_path / "photo.heic", quality=95
    )
    loaded = load_image(tmp_path / "photo.heic")
    assert loaded.bit_depth == 8 and loaded.rgb.shape == rgb.shape
    assert np.abs(loaded.rgb - rgb).mean() < 0.02

    codes16 = np.rint(rgb * 65535).astype(np.uint16)
    pillow_heif.from_bytes("RGB;16", (48, 32), codes16.tobytes()).save(
        tmp_path / "photo10.heif", quality=95
    )
    loaded = load_image(tmp_path / "photo10.heif")
    assert loaded.bit_depth == 16
    assert loaded.rgb.max() <= 1.0
    assert np.abs(loaded.rgb - rgb).mean() < 0.02


# ----------------------------------------------------------------------------------------
# EXIF orientation


def _exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    stored = (np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3) * 3).astype(np.uint8)
    pil = Image.fromarray(stored, "RGB")
    path = tmp_path / f"o{orientation}.png"
    pil.save(path, exif=_exif_with_orientation(orientation))
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.rgb, reference / 255.0, atol=1e-6)
    expected_shape = (5, 3, 3) if orientation >= 5 else (3, 5, 3)
    assert loaded.rgb.shape == expected_shape


def test_exif_orientation_6_turns_clockwise(tmp_path: Path) -> None:
    stored = np.zeros((2, 3, 3), dtype=np.uint8)
    stored[1, 0] = 255  # bottom-left of the stored pixels
    path = tmp_path / "six.png"
    Image.fromarray(stored).save(path, exif=_exif_with_orientation(6))
    loaded = load_image(path)
    assert loaded.rgb.shape == (3, 2, 3)
    assert loaded.rgb[0, 0].tolist() == [1.0, 1.0, 1.0]  # ...is top-left once upright


def test_exif_orientation_in_jpeg(tmp_path: Path) -> None:
    rgb = np.rint(_smooth_rgb(24, 40) * 255).astype(np.uint8)
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, quality=95, exif=_exif_with_orientation(8))
    loaded = load_image(path)
    assert loaded.rgb.shape == (40, 24, 3)
    assert np.abs(loaded.rgb - np.rot90(rgb, 1) / 255.0).mean() < 0.02


# ----------------------------------------------------------------------------------------
# Bad input


def _encoded(tmp_path: Path, name: str) -> Path:
    rgb = np.random.default_rng(11).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_truncated_image_is_an_error(tmp_path: Path, name: str) -> None:
    path = _encoded(tmp_path, name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MagicBokehError, match="truncated or damaged"):
        load_image(path)


def test_truncated_16_bit_png_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cut16.png"
    codes = np.random.default_rng(12).integers(0, 65536, (48, 64, 3), dtype=np.uint16)
    cv2.imwrite(str(path), codes)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MagicBokehError, match="truncated or damaged"):
        load_image(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="does not exist"):
        load_image(tmp_path / "nowhere.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(MagicBokehError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(MagicBokehError, match="not a file"):
        load_image(tmp_path)


def test_unsupported_formats(tmp_path: Path) -> None:
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(13).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MagicBokehError, match="JPEG, PNG, TIFF, WebP, HEIC/HEIF"):
        load_image(noise)
    gif = tmp_path / "anim.gif"
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(gif)
    with pytest.raises(MagicBokehError, match="GIF image, which is not supported"):
        load_image(gif)


def test_oversize_image(tmp_path: Path) -> None:
    path = _encoded(tmp_path, "big.png")
    with pytest.raises(MagicBokehError, match=r"0.001 MP.*MAGICBOKEH_MAX_PIXELS"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=48 * 64).rgb.shape == (48, 64, 3)


# ----------------------------------------------------------------------------------------
# Tensors


def test_tensor_round_trip() -> None:
    rgb = _random_rgb(14, 5, 7)
    tensor = to_tensor(rgb)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0, 1], torch.from_numpy(rgb[:, :, 1]))
    np.testing.assert_array_equal(from_tensor(tensor), rgb)
    np.testing.assert_array_equal(from_tensor(tensor[0].double()), rgb)
    with pytest.raises(MagicBokehError):
        to_tensor(rgb[:, :, 0])
    with pytest.raises(MagicBokehError):
        from_tensor(torch.zeros(2, 3, 4, 4))


def test_unreadable_file_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import magicbokeh.io.images as images

    path = _encoded(tmp_path, "locked.png")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)
    with pytest.raises(MagicBokehError, match="cannot read image .*Permission denied"):
        load_image(path)
