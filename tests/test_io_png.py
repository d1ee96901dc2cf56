"""The threaded PNG writer: exact round trips, valid chunks and zlib stream, atomic failure."""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from magicbokeh.io import png as png_module
from magicbokeh.io import save_image
from magicbokeh.io.png import PAETH, UP, adler32_combine, encode_threads, filter_rows, write_png

SHAPES = [(1, 1), (1, 9), (9, 1), (3, 5), (37, 23)]


def _codes(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    """Random samples plus a smooth ramp, so filters see both noise and structure."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    noise = rng.integers(0, top + 1, shape, dtype=np.int64)
    ramp = np.add.outer(np.arange(shape[0]), np.arange(shape[1])) * (top // 64)
    mixed = np.where(rng.random(shape) < 0.5, noise, ramp.reshape(*shape[:2], 1) % (top + 1))
    return mixed.astype(dtype)


def _opencv(path: Path) -> np.ndarray:
    """Decode with OpenCV and put the channels back in the PNG's order (grey(+alpha), RGB(A)).

    OpenCV returns grey + alpha as BGRA with B = G = R.
    """
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    if pixels.ndim == 2:
        return pixels[:, :, None]
    if pixels.shape[2] == 3:
        return pixels[:, :, [2, 1, 0]]
    if struct.unpack(">B", path.read_bytes()[25:26])[0] == 4:  # colour type: grey + alpha
        assert np.array_equal(pixels[:, :, 0], pixels[:, :, 1])
        return pixels[:, :, [0, 3]]
    return pixels[:, :, [2, 1, 0, 3]]


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, checking the signature, lengths and CRCs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert len(body) == length
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        position += 12 + length
    assert position == len(data)
    return chunks


def _paeth_reference(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Paeth residuals byte by byte, as the PNG specification writes them (zeros outside)."""
    height, width = rows.shape
    out = np.zeros_like(rows)
    for y in range(height):
        for x in range(width):
            a = int(rows[y, x - bpp]) if x >= bpp else 0
            b = int(rows[y - 1, x]) if y > 0 else 0
            c = int(rows[y - 1, x - bpp]) if x >= bpp and y > 0 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y, x] = (int(rows[y, x]) - predictor) % 256
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("threads", [1, 3])
def test_8_bit_round_trip_in_pillow_and_opencv(
    tmp_path: Path, shape: tuple[int, int], channels: int, threads: int
) -> None:
    codes = _codes((*shape, channels), np.uint8)
    path = tmp_path / "out.png"
    write_png(path, codes, threads=threads, band_bytes=1)  # one row per band
    with Image.open(path) as image:
        assert image.mode == ("RGB" if channels == 3 else "RGBA")
        assert np.array_equal(np.asarray(image), codes)
    assert np.array_equal(_opencv(path), codes)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("row_filter", [UP, PAETH])
def test_16_bit_round_trip_in_opencv(
    tmp_path: Path, shape: tuple[int, int], channels: int, row_filter: int
) -> None:
    codes = _codes((*shape, channels), np.uint16, seed=1)
    path = tmp_path / "out.png"
    write_png(path, codes, row_filter=row_filter, threads=2, band_bytes=64)
    decoded = _opencv(path)
    assert decoded.dtype == np.uint16
    assert np.array_equal(decoded, codes)


@pytest.mark.parametrize("row_filter", [UP, PAETH])
def test_grey_round_trip_in_pillow(tmp_path: Path, row_filter: int) -> None:
    for dtype, mode in ((np.uint8, "L"), (np.uint16, "I;16")):
        codes = _codes((11, 7, 1), dtype, seed=2)
        path = tmp_path / f"grey{mode}.png"
        write_png(path, codes, row_filter=row_filter, threads=2, band_bytes=20)
        with Image.open(path) as image:
            assert image.mode == mode
            assert np.array_equal(np.asarray(image), codes[:, :, 0])


def test_many_bands_make_one_valid_zlib_stream(tmp_path: Path) -> None:
    codes = _codes((61, 47, 3), np.uint8, seed=3)
    path = tmp_path / "bands.png"
    write_png(path, codes, threads=3, band_bytes=5 * (1 + 47 * 3))  # 5 rows a band
    chunks = _chunks(path.read_bytes())
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert kinds[1:-1] == [b"IDAT"] * 13  # ceil(61 / 5) bands, one IDAT each
    width, height, depth, colour, method, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (width, height, depth, colour, method, filtering, interlace) == (47, 61, 8, 2, 0, 0, 0)
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    assert (stream[0] * 256 + stream[1]) % 31 == 0 and stream[0] & 0x0F == 8
    expected = filter_rows(codes.reshape(61, -1), 0, 61, 3, PAETH)
    # zlib.decompress also checks the Adler-32 at the end of the stream.
    assert zlib.decompress(stream) == expected.tobytes()
    assert set(expected[:, 0].tolist()) == {PAETH}


@pytest.mark.parametrize(
    ("level", "strategy"),
    [
        (0, zlib.Z_DEFAULT_STRATEGY),
        (1, zlib.Z_RLE),
        (6, zlib.Z_DEFAULT_STRATEGY),
        (9, zlib.Z_FILTERED),
    ],
)
def test_other_zlib_settings_decode(tmp_path: Path, level: int, strategy: int) -> None:
    codes = _codes((40, 30, 4), np.uint8, seed=4)
    path = tmp_path / "level.png"
    write_png(path, codes, level=level, strategy=strategy, threads=2, band_bytes=500)
    stream = b"".join(body for kind, body in _chunks(path.read_bytes()) if kind == b"IDAT")
    assert (stream[0] * 256 + stream[1]) % 31 == 0
    assert np.array_equal(np.asarray(Image.open(path)), codes)


def test_output_does_not_depend_on_thread_count(tmp_path: Path) -> None:
    codes = _codes((50, 40, 3), np.uint8, seed=5)
    files = []
    for threads in (1, 2, 4):
        files.append(tmp_path / f"t{threads}.png")
        write_png(files[-1], codes, threads=threads, band_bytes=700)
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()


def test_bands_are_encoded_on_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str] = []
    original = png_module._encode_band

    def recording(*args: object, **kwargs: object) -> object:
        names.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(png_module, "_encode_band", recording)
    write_png(tmp_path / "a.png", _codes((20, 10, 3), np.uint8), threads=2, band_bytes=31)
    assert len(names) == 20 and all(name.startswith("png") for name in names)
    names.clear()
    write_png(tmp_path / "b.png", _codes((20, 10, 3), np.uint8), threads=2)  # one band
    assert names == [threading.current_thread().name]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_icc_profile_is_embedded(tmp_path: Path, dtype: type) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "icc.png"
    write_png(path, _codes((8, 6, 3), dtype), icc_profile=profile, threads=2, band_bytes=10)
    kinds = [kind for kind, _ in _chunks(path.read_bytes())]
    assert kinds[:2] == [b"IHDR", b"iCCP"]
    with Image.open(path) as image:
        assert image.info["icc_profile"] == profile


def test_paeth_matches_the_specification() -> None:
    for dtype, bpp in ((np.uint8, 3), (np.uint8, 4), (np.uint16, 6)):
        codes = _codes((70, 6, bpp // np.dtype(dtype).itemsize), dtype, seed=bpp)
        samples = codes.reshape(70, -1)
        as_bytes = samples.astype(">u2").view(np.uint8) if dtype == np.uint16 else samples
        expected = _paeth_reference(as_bytes, bpp)
        whole = filter_rows(samples, 0, 70, bpp, PAETH)  # more than one step of rows
        assert np.array_equal(whole[:, 1:], expected)
        assert np.array_equal(filter_rows(samples, 33, 70, bpp, PAETH)[:, 1:], expected[33:])


def test_adler32_combine_matches_zlib() -> None:
    rng = np.random.default_rng(6)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for cut in (0, 1, 65_521, 100_000, 200_000):
        first, second = data[:cut], data[cut:]
        combined = adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
        assert combined == zlib.adler32(data)


def test_bad_samples_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_png(tmp_path / "f.png", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="H×W×C"):
        write_png(tmp_path / "f.png", np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(ValueError, match="H×W×C"):
        write_png(tmp_path / "f.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="1 to 2"):
        write_png(tmp_path / "f.png", np.zeros((0, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="row_filter"):
        write_png(tmp_path / "f.png", np.zeros((2, 2, 3), np.uint8), row_filter=1)


def test_encode_threads_is_bounded() -> None:
    assert 1 <= encode_threads() <= png_module.MAX_THREADS


def test_failed_encode_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = np.random.default_rng(7).random((40, 30, 3), dtype=np.float32)
    kept = save_image(tmp_path / "out.png", rgb)
    before = kept.read_bytes()
    original = png_module._encode_band

    def failing(samples: np.ndarray, top: int, *args: object, **kwargs: object) -> object:
        if top >= 20:
            raise OSError("disk full")
        return original(samples, top, *args, **kwargs)

    monkeypatch.setattr(png_module, "_encode_band", failing)
    monkeypatch.setattr(png_module, "BAND_BYTES", 200)  # 20 bands of 2 rows of 91 bytes
    monkeypatch.setattr(png_module, "encode_threads", lambda: 2)
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "new.png", rgb)
    with pytest.raises(OSError, match="disk full"):
        save_image(kept, rgb * 0.5, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert kept.read_bytes() == before
