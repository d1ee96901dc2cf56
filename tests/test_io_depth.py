"""Depth files: every format, conventions, normalisation, size matching, bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from magicbokeh.errors import MagicBokehError
from magicbokeh.io import (
    DEPTH_WRITE_EXTENSIONS,
    load_depth,
    match_depth_to_image,
    read_pfm,
    save_depth,
    write_pfm,
)


def _disparity(seed: int = 0, height: int = 12, width: int = 17) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width), dtype=np.float32)


@pytest.mark.parametrize("suffix", DEPTH_WRITE_EXTENSIONS)
def test_round_trip_every_format(tmp_path: Path, suffix: str) -> None:
    if suffix == ".exr":
        pytest.importorskip("OpenEXR")
    disparity = _disparity()
    path = save_depth(tmp_path / f"depth{suffix}", disparity)
    loaded = load_depth(path, normalize=False)
    assert loaded.dtype == np.float32 and loaded.shape == disparity.shape
    tolerance = 0.5 / 65535 + 1e-7 if suffix == ".png" else 0.0
    assert np.abs(loaded - disparity).max() <= tolerance
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"depth{suffix}"]


def test_png_is_16_bit(tmp_path: Path) -> None:
    path = save_depth(tmp_path / "d.png", _disparity())
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.ndim == 2


def test_8_and_16_bit_png_scaling(tmp_path: Path) -> None:
    codes8 = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "d8.png"), codes8)
    np.testing.assert_allclose(load_depth(tmp_path / "d8.png", normalize=False), codes8 / 255.0)
    codes16 = np.array([[0, 1], [30000, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d16.png"), codes16)
    loaded = load_depth(tmp_path / "d16.png", normalize=False)
    np.testing.assert_allclose(loaded, codes16 / 65535.0, rtol=1e-6)
    assert loaded[0, 1] > 0  # one 16-bit step survives


def test_multichannel_images_use_the_first_channel(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = [[0, 100, 200], [50, 150, 250]]  # red
    rgb[..., 2] = 7  # blue, ignored
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[:, :, ::-1])
    np.testing.assert_allclose(
        load_depth(tmp_path / "rgb.png", normalize=False), rgb[..., 0] / 255.0, atol=1e-7
    )


def test_npy_layouts(tmp_path: Path) -> None:
    disparity = _disparity(1)
    for name, array in {
        "plain.npy": disparity,
        "chw.npy": disparity[None],
        "hwc.npy": disparity[..., None],
        "f64.npy": disparity.astype(np.float64),
    }.items():
        np.save(tmp_path / name, array)
        np.testing.assert_allclose(load_depth(tmp_path / name, normalize=False), disparity)
    np.save(tmp_path / "stack.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(MagicBokehError, match=r"shape \(2, 3, 4, 5\)"):
        load_depth(tmp_path / "stack.npy")


def test_float_and_integer_tiff(tmp_path: Path) -> None:
    depth = np.linspace(1.0, 9.0, 12, dtype=np.float32).reshape(3, 4)
    tifffile.imwrite(tmp_path / "f.tif", depth)
    np.testing.assert_array_equal(load_depth(tmp_path / "f.tif", normalize=False), depth)
    codes = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    tifffile.imwrite(tmp_path / "u16.tiff", codes)
    np.testing.assert_allclose(load_depth(tmp_path / "u16.tiff", normalize=False), codes / 65535.0)


def test_exr_channel_choice(tmp_path: Path) -> None:
    openexr = pytest.importorskip("OpenEXR")
    header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
    red = _disparity(2)
    rgb = np.stack([red, red * 0 + 0.5, red * 0 + 0.25], axis=2).astype(np.float32)
    with openexr.File(header, {"RGB": rgb}) as exr:
        exr.write(str(tmp_path / "rgb.exr"))
    np.testing.assert_array_equal(load_depth(tmp_path / "rgb.exr", normalize=False), red)
    z = _disparity(3)
    with openexr.File(header, {"A": red, "depth.Z": z}) as exr:
        exr.write(str(tmp_path / "z.exr"))
    np.testing.assert_array_equal(load_depth(tmp_path / "z.exr", normalize=False), z)


def _handmade_pfm(values_top_first: np.ndarray, little_endian: bool, magic: bytes) -> bytes:
    height, width = values_top_first.shape[:2]
    scale = b"-1.0" if little_endian else b"1.0"
    fmt = "<f4" if little_endian else ">f4"
    rows = values_top_first[::-1].astype(fmt).tobytes()
    return magic + b"\n" + f"{width} {height}\n".encode() + scale + b"\n" + rows


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_orientation_and_byte_order(tmp_path: Path, little_endian: bool) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)  # top row 0 1 2
    path = tmp_path / "d.pfm"
    path.write_bytes(_handmade_pfm(values, little_endian, b"Pf"))
    np.testing.assert_array_equal(read_pfm(path), values)
    colour = np.stack([values, values + 10, values + 20], axis=2)
    path.write_bytes(_handmade_pfm(colour, little_endian, b"PF"))
    np.testing.assert_array_equal(read_pfm(path), colour)
    np.testing.assert_array_equal(load_depth(path, normalize=False), values)  # first channel


def test_pfm_writer_layout(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_pfm(tmp_path / "w.pfm", values)
    data = (tmp_path / "w.pfm").read_bytes()
    assert data.startswith(b"Pf\n3 2\n")
    first_stored = struct.unpack("<f" if b"-1.0" in data[:16] else ">f", data[-24:-20])[0]
    assert first_stored == 3.0  # bottom row is stored first


def test_truncated_pfm(tmp_path: Path) -> None:
    data = _handmade_pfm(_disparity(4), True, b"Pf")
    (tmp_path / "cut.pfm").write_bytes(data[:-10])
    with pytest.raises(MagicBokehError, match="truncated"):
        load_depth(tmp_path / "cut.pfm")


def test_depth_kind_converts_to_disparity(tmp_path: Path) -> None:
    depth = np.array([[1.0, 2.0], [4.0, 4.0]], dtype=np.float32)
    np.save(tmp_path / "depth.npy", depth)
    disparity = load_depth(tmp_path / "depth.npy", kind="depth")
    np.testing.assert_allclose(disparity, [[1.0, 1.0 / 3.0], [0.0, 0.0]], atol=1e-6)
    raw = load_depth(tmp_path / "depth.npy", kind="depth", normalize=False)
    np.testing.assert_allclose(raw, 1.0 / depth)
    assert load_depth(tmp_path / "depth.npy")[0, 0] == 0.0  # as disparity: nearest is 4


def test_non_positive_depth_is_counted(tmp_path: Path) -> None:
    depth = np.array([[0.0, 2.0], [-1.0, 4.0]], dtype=np.float32)
    np.save(tmp_path / "holes.npy", depth)
    with pytest.raises(MagicBokehError, match="2 depth values that are zero or negative"):
        load_depth(tmp_path / "holes.npy", kind="depth")


def test_normalisation(tmp_path: Path) -> None:
    np.save(tmp_path / "range.npy", np.array([[2.0, 4.0], [6.0, 10.0]]))
    np.testing.assert_allclose(load_depth(tmp_path / "range.npy"), [[0.0, 0.25], [0.5, 1.0]])
    np.save(tmp_path / "flat.npy", np.full((3, 3), 0.7))
    flat = load_depth(tmp_path / "flat.npy")
    assert flat.dtype == np.float32 and not flat.any()


def test_non_finite_values_are_counted(tmp_path: Path) -> None:
    values = _disparity(5)
    values[0, :2] = np.nan
    values[1, 1] = np.inf
    np.save(tmp_path / "nan.npy", values)
    with pytest.raises(MagicBokehError, match="3 values that are not finite"):
        load_depth(tmp_path / "nan.npy")
    with pytest.raises(MagicBokehError, match="3 values that are not finite"):
        save_depth(tmp_path / "out.npy", values)


def test_bad_depth_files(tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="does not exist"):
        load_depth(tmp_path / "none.npy")
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(MagicBokehError, match="unsupported extension .txt"):
        load_depth(tmp_path / "d.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(MagicBokehError, match="cannot be read"):
        load_depth(tmp_path / "broken.png")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(MagicBokehError, match="empty"):
        load_depth(tmp_path / "empty.npy")
    with pytest.raises(MagicBokehError, match="kind"):
        load_depth(tmp_path / "d.txt", kind="distance")


def test_save_depth_checks(tmp_path: Path) -> None:
    disparity = _disparity(6)
    with pytest.raises(MagicBokehError, match="unknown depth extension .jpg"):
        save_depth(tmp_path / "d.jpg", disparity)
    with pytest.raises(MagicBokehError, match=r"\[0, 1\]"):
        save_depth(tmp_path / "d.png", disparity * 3)
    with pytest.raises(MagicBokehError, match="H×W"):
        save_depth(tmp_path / "d.npy", disparity[None])
    path = save_depth(tmp_path / "d.npy", disparity)
    with pytest.raises(MagicBokehError, match="exists; pass --overwrite"):
        save_depth(path, disparity)
    save_depth(path, disparity * 0.5, overwrite=True)
    np.testing.assert_allclose(load_depth(path, normalize=False), disparity * 0.5)


def test_match_depth_to_image() -> None:
    disparity = _disparity(7, 20, 30)
    assert match_depth_to_image(disparity, 20, 30) is disparity
    grown = match_depth_to_image(disparity, 40, 60)
    assert grown.shape == (40, 60) and grown.dtype == np.float32
    shrunk = match_depth_to_image(disparity, 10, 15)
    assert shrunk.shape == (10, 15)
    np.testing.assert_allclose(shrunk[0, 0], disparity[:2, :2].mean(), rtol=1e-5)  # area mean
    assert match_depth_to_image(disparity, 100, 151).shape == (100, 151)  # 0.7 % off: fine
    with pytest.raises(MagicBokehError, match=r"30×20 but the image is 20×30"):
        match_depth_to_image(disparity, 30, 20)
    with pytest.raises(MagicBokehError, match="aspect ratios differ"):
        match_depth_to_image(disparity, 20, 32, source="embedded depth")
