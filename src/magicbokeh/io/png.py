"""A PNG writer whose zlib stream is compressed on several threads.

:func:`write_png` writes an ``H×W×C`` ``uint8`` or ``uint16`` array (C = 1 grey, 2 grey +
alpha, 3 RGB, 4 RGBA; alpha straight) as a non-interlaced PNG: signature, ``IHDR``, an
optional ``iCCP`` (the ICC profile), one ``IDAT`` per band of rows, ``IEND``.

Every row of an image uses the same PNG filter, computed with NumPy a few dozen rows at a
time (so the temporaries stay in cache). 8-bit images use Paeth: on photos it is the filter
Pillow's adaptive per-row choice picks for nearly every row, so the files are as small as
Pillow's at the same zlib settings without trying every filter on every row. 16-bit images
use Up: their low bytes are mostly noise, Paeth makes them only about 5% smaller and costs
nearly as much CPU time as compressing them (``benchmarks/bench_png.py``). Above the first
row counts as zeros (so Paeth's first row is Sub's, Up's is unfiltered).

The image is cut into bands of whole rows (about :data:`BAND_BYTES` of filtered data each).
Each band is filtered and compressed as raw deflate data on a worker thread (NumPy and zlib
release the GIL on large buffers); every band but the last ends with a sync flush, so the
pieces join into one deflate stream without recompression. The stream gets zlib's two-byte
header in front and the Adler-32 of all filtered data behind, combined from the bands'
checksums. Each band is one ``IDAT`` chunk, written in order as it becomes ready. Images of
one band are encoded on the calling thread.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = [
    "BAND_BYTES",
    "MAX_THREADS",
    "PAETH",
    "UP",
    "adler32_combine",
    "encode_threads",
    "filter_rows",
    "write_png",
]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Filtered bytes per band, one thread's unit of work: a 12 MP RGB image is 9 bands, so the
#: threads finish close together; each band boundary costs a few bytes (bands of 1 to 64 MiB
#: gave the same file size within 0.02% on the rendered 12 MP defocused scene).
BAND_BYTES = 4 << 20
#: Most threads :func:`write_png` uses by default.
MAX_THREADS = 4
_ROWS_PER_STEP = 32  # rows filtered at once: the int16 temporaries stay in cache
UP = 2
"""PNG filter type Up: each byte minus the byte above it."""
PAETH = 4
"""PNG filter type Paeth: each byte minus the nearest of left, above and above-left to
left + above - above-left."""
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → PNG colour type
_ADLER_BASE = 65521


def encode_threads() -> int:
    """Threads :func:`write_png` uses by default: the usable cores, at most :data:`MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def write_png(
    file: str | os.PathLike[str],
    codes: np.ndarray,
    *,
    icc_profile: bytes | None = None,
    level: int = 1,
    strategy: int = zlib.Z_RLE,
    row_filter: int | None = None,
    threads: int | None = None,
    band_bytes: int | None = None,
) -> None:
    """Write ``codes`` (``H×W×C`` uint8 or uint16, C in 1..4) to ``file`` as a PNG.

    Args:
        file: the file to create or replace (callers wanting atomicity pass a temporary file).
        codes: the sample values; 16-bit samples are stored big-endian as PNG requires.
        icc_profile: embedded as an ``iCCP`` chunk when given.
        level: zlib compression level, 0–9.
        strategy: zlib strategy (``zlib.Z_RLE``, ``zlib.Z_DEFAULT_STRATEGY``, ...).
        row_filter: :data:`PAETH` or :data:`UP`; default Paeth for 8-bit, Up for 16-bit.
        threads: worker threads; default :func:`encode_threads`.
        band_bytes: filtered bytes per band (at least one row per band); default
            :data:`BAND_BYTES`.

    Raises:
        ValueError: ``codes`` has the wrong dtype, shape or size, or ``row_filter`` is unknown.
    """
    samples = _rows(codes)
    if row_filter is None:
        row_filter = PAETH if codes.dtype == np.uint8 else UP
    if row_filter not in (UP, PAETH):
        raise ValueError(f"row_filter must be UP ({UP}) or PAETH ({PAETH}), not {row_filter}")
    height, width, channels = codes.shape
    bytes_per_pixel = channels * codes.dtype.itemsize
    row_bytes = 1 + width * bytes_per_pixel
    rows_per_band = max(1, (band_bytes or BAND_BYTES) // row_bytes)
    bands = [(top, min(top + rows_per_band, height)) for top in range(0, height, rows_per_band)]
    workers = min(threads or encode_threads(), len(bands))

    header = struct.pack(
        ">IIBBBBB", width, height, 8 * codes.dtype.itemsize, _COLOUR_TYPES[channels], 0, 0, 0
    )

    def encode(band: tuple[int, int]) -> tuple[bytes, int, int, int]:
        top, bottom = band
        return _encode_band(
            samples,
            top,
            bottom,
            bytes_per_pixel,
            row_filter,
            level,
            strategy,
            first=top == 0,
            last=bottom == height,
        )

    with open(file, "wb") as handle:
        handle.write(SIGNATURE)
        handle.write(_chunk(b"IHDR", header))
        if icc_profile:
            handle.write(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="png") if workers > 1 else None
        try:
            pieces = pool.map(encode, bands) if pool is not None else map(encode, bands)
            adler = 1  # Adler-32 of nothing
            for index, (data, crc, band_adler, band_length) in enumerate(pieces):
                adler = adler32_combine(adler, band_adler, band_length)
                if index == len(bands) - 1:  # the zlib stream ends with the Adler-32
                    tail = struct.pack(">I", adler)
                    data, crc = data + tail, zlib.crc32(tail, crc)
                handle.write(struct.pack(">I", len(data)) + b"IDAT")
                handle.write(data)
                handle.write(struct.pack(">I", crc))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        handle.write(_chunk(b"IEND", b""))


def _rows(codes: np.ndarray) -> np.ndarray:
    """``H×W×C`` → ``H×(W·C)`` C-contiguous samples, after checking dtype and shape."""
    if codes.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG samples must be uint8 or uint16, not {codes.dtype}")
    if codes.ndim != 3 or codes.shape[2] not in _COLOUR_TYPES:
        raise ValueError(f"PNG samples must be H×W×C with C in 1..4, not {codes.shape}")
    height, width, channels = codes.shape
    if not (0 < height < 2**31 and 0 < width < 2**31):
        raise ValueError(f"a PNG must be 1 to 2**31 - 1 pixels each way, not {width}×{height}")
    return np.ascontiguousarray(codes).reshape(height, width * channels)


def _encode_band(
    samples: np.ndarray,
    top: int,
    bottom: int,
    bytes_per_pixel: int,
    row_filter: int,
    level: int,
    strategy: int,
    *,
    first: bool,
    last: bool,
) -> tuple[bytes, int, int, int]:
    """Filter and deflate rows ``top:bottom``: the data of one ``IDAT`` chunk.

    Returns the raw deflate data (behind zlib's header when ``first``; ending with a sync
    flush, or with the final block when ``last``), the CRC-32 of ``b"IDAT"`` + that data, and
    the Adler-32 and length of the filtered rows.
    """
    filtered = filter_rows(samples, top, bottom, bytes_per_pixel, row_filter)
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 8, strategy)
    data = b"".join(
        (
            _zlib_header(level, strategy) if first else b"",
            compressor.compress(filtered),
            compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH),
        )
    )
    crc = zlib.crc32(data, zlib.crc32(b"IDAT"))
    return data, crc, zlib.adler32(filtered), filtered.size


def filter_rows(
    samples: np.ndarray, top: int, bottom: int, bytes_per_pixel: int, row_filter: int
) -> np.ndarray:
    """PNG scanlines of rows ``top:bottom`` of ``samples`` (``H×N`` uint8 or uint16).

    Returns ``(bottom - top)×(1 + N·itemsize)`` uint8: each row's filter-type byte
    (``row_filter``, :data:`PAETH` or :data:`UP`) and its residuals, computed against row
    ``top - 1`` (zeros above the first row). 16-bit samples are filtered as their big-endian
    bytes; ``bytes_per_pixel`` counts bytes, not samples.
    """
    count = bottom - top
    out = np.empty((count, 1 + samples.shape[1] * samples.itemsize), dtype=np.uint8)
    out[:, 0] = row_filter
    for start in range(top, bottom, _ROWS_PER_STEP):
        stop = min(start + _ROWS_PER_STEP, bottom)
        if start > 0:
            with_above = _as_bytes(samples[start - 1 : stop])
        else:  # the first row of the image has zeros above it
            with_above = np.zeros((stop + 1, out.shape[1] - 1), dtype=np.uint8)
            with_above[1:] = _as_bytes(samples[:stop])
        residuals = out[start - top : stop - top, 1:]
        if row_filter == PAETH:
            _paeth_rows(with_above, bytes_per_pixel, residuals)
        else:
            np.subtract(with_above[1:], with_above[:-1], out=residuals)
    return out


def _as_bytes(rows: np.ndarray) -> np.ndarray:
    """Rows of samples as rows of PNG bytes (16-bit samples big-endian); a view for uint8."""
    if rows.dtype == np.uint8:
        return rows
    return rows.astype(">u2").view(np.uint8)


def _paeth_rows(rows: np.ndarray, bpp: int, out: np.ndarray) -> None:
    """Paeth residuals of ``rows[1:]`` given ``rows[0]`` above them, into ``out``.

    ``rows``: ``(k + 1)×N`` uint8; ``out``: ``k×N`` uint8; ``bpp``: bytes per pixel (the
    distance to the left neighbour). Left of the first pixel counts as zero.
    """
    left, up, up_left = rows[1:, :-bpp], rows[:-1, bpp:], rows[:-1, :-bpp]
    # Paeth: predict with the neighbour nearest to left + up - up_left (ties: left, up).
    to_left = np.subtract(up, up_left, dtype=np.int16)  # |p - left| = |up - up_left|
    to_up = np.subtract(left, up_left, dtype=np.int16)  # |p - up| = |left - up_left|
    to_corner = np.add(to_left, to_up)  # |p - up_left|
    np.abs(to_left, out=to_left)
    np.abs(to_up, out=to_up)
    np.abs(to_corner, out=to_corner)
    prediction = up_left.copy()
    np.copyto(prediction, up, where=to_up <= to_corner)
    np.copyto(prediction, left, where=(to_left <= to_up) & (to_left <= to_corner))
    np.subtract(rows[1:, bpp:], prediction, out=out[:, bpp:])
    # The first pixel has left = up_left = 0, so Paeth predicts ``up``.
    np.subtract(rows[1:, :bpp], rows[:-1, :bpp], out=out[:, :bpp])


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of ``A + B`` from ``adler32(A)``, ``adler32(B)`` and ``len(B)``."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + second_length * (a1 - 1)) % _ADLER_BASE
    return (b << 16) | a


def _zlib_header(level: int, strategy: int) -> bytes:
    """zlib's two-byte header: deflate with a 32 KiB window, the level hint zlib would give."""
    if strategy in (zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE) or level < 2:
        hint = 0
    elif level < 6:
        hint = 1
    elif level == 6 or level == -1:
        hint = 2
    else:
        hint = 3
    cmf, flg = 0x78, hint << 6
    flg += 31 - (cmf * 256 + flg) % 31
    return bytes((cmf, flg))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
