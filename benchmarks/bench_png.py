"""PNG encoding speed and size: magicbokeh's threaded writer against the previous encoders.

Both 12 MP scenes of ``bench_render_command.py`` (``friendly`` and ``defocused``) are
rendered in-process with the physical engine at K = 32, exactly as ``magicbokeh render``
does, and each rendered image is encoded, in memory-backed temporary files, by:

* Pillow, zlib level 1 with the run-length strategy (the previous 8-bit writer);
* ``magicbokeh.io.png.write_png`` with the same zlib settings, on 1 thread and on 2;
* for 16-bit output: OpenCV's PNG encoder (the previous 16-bit writer) and ``write_png``.

The encoders take turns within each round so that all meet the same machine load; each row
is the median over the rounds of wall seconds and CPU seconds (the process's user + system
time, all threads), and the file size. The 1-minute load average is printed: on a shared
machine a second thread only helps when a second core is free.

Also: how the filter ``write_png`` uses for every row (Paeth for 8-bit, Up for 16-bit)
compares with the other PNG filters (one thread: CPU seconds and file size).

Usage (from the repository root): ``python benchmarks/bench_png.py [--rounds N] [--quick]
[--markdown OUT.md]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = (3024, 4032)  # 12 MP, height x width


def rendered(name: str, height: int, width: int) -> np.ndarray:
    """The scene rendered by the physical engine at K = 32: ``H×W×3`` sRGB float32."""
    sys.path.insert(0, str(HERE))
    from bench_render_command import scene_arrays
    from magicbokeh.api import render

    rgb, disparity, focus = scene_arrays(name, height, width)
    return render(rgb, depth=disparity, focus=focus, aperture=32, engine="physical").image


def to_codes(rgb: np.ndarray, bits: int) -> np.ndarray:
    scale = 255.0 if bits == 8 else 65535.0
    return np.rint(np.clip(rgb, 0, 1) * scale).astype(np.uint8 if bits == 8 else np.uint16)


def encoders(bits: int) -> dict[str, Callable[[Path, np.ndarray], None]]:
    import cv2
    from PIL import Image

    from magicbokeh.io.png import write_png

    def pillow(file: Path, codes: np.ndarray) -> None:
        Image.fromarray(codes).save(file, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)

    def opencv(file: Path, codes: np.ndarray) -> None:
        channels = [2, 1, 0] if codes.shape[2] == 3 else [2, 1, 0, 3]
        cv2.imwrite(str(file), np.ascontiguousarray(codes[:, :, channels]))

    def threaded(threads: int) -> Callable[[Path, np.ndarray], None]:
        return lambda file, codes: write_png(file, codes, threads=threads)

    before = {"Pillow, zlib 1 + RLE (before)": pillow} if bits == 8 else {"OpenCV (before)": opencv}
    return {**before, "write_png, 1 thread": threaded(1), "write_png, 2 threads": threaded(2)}


def compare(images: dict[str, np.ndarray], bits: int, rounds: int, folder: Path) -> list[str]:
    """Rows of the table for one bit depth; rounds interleave the encoders."""
    from PIL import Image

    rows = []
    for scene, rgb in images.items():
        codes = to_codes(rgb, bits)
        methods = encoders(bits)
        walls: dict[str, list[float]] = {name: [] for name in methods}
        cpus: dict[str, list[float]] = {name: [] for name in methods}
        sizes: dict[str, int] = {}
        loads = []
        for _ in range(rounds):
            for name, encode in methods.items():
                file = folder / "out.png"
                loads.append(os.getloadavg()[0])
                start, cpu = time.perf_counter(), time.process_time()
                encode(file, codes)
                walls[name].append(time.perf_counter() - start)
                cpus[name].append(time.process_time() - cpu)
                sizes[name] = file.stat().st_size
                if bits == 8 and not np.array_equal(np.asarray(Image.open(file)), codes):
                    raise RuntimeError(f"{name} did not round-trip")
                file.unlink()
        base = next(iter(methods))
        for name in methods:
            wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            ratio = statistics.median(walls[base]) / wall
            rows.append(
                f"| {scene} | {bits} | {name} | {wall:.2f} | {cpu:.2f} | "
                f"{sizes[name] / 1e6:.2f} | {ratio:.2f}x | {statistics.median(loads):.1f} |"
            )
            print(rows[-1], flush=True)
    return rows


FILTERS = ("None", "Sub", "Up", "Average", "Paeth (write_png)")


def filtered(samples: np.ndarray, name: str) -> np.ndarray:
    """``H×N`` uint8 RGB rows with PNG filter ``name`` applied to every row (no type bytes)."""
    from magicbokeh.io.png import PAETH, filter_rows

    if name.startswith("Paeth"):
        return filter_rows(samples, 0, samples.shape[0], 3, PAETH)
    if name == "None":
        return samples.copy()
    left = np.zeros_like(samples)
    left[:, 3:] = samples[:, :-3]
    if name == "Sub":
        return samples - left
    up = np.zeros_like(samples)
    up[1:] = samples[:-1]
    if name == "Up":
        return samples - up
    return samples - ((left.astype(np.uint16) + up) >> 1).astype(np.uint8)


def filter_costs(images: dict[str, np.ndarray]) -> list[str]:
    """Size and CPU seconds of each PNG filter used for every row (zlib 1 + RLE, 1 thread).

    8-bit: the five PNG filters; 16-bit: Up (what ``write_png`` uses) and Paeth.
    """
    from magicbokeh.io.png import PAETH, UP, filter_rows

    rows = []
    for bits in (8, 16):
        for scene, rgb in images.items():
            samples = to_codes(rgb, bits).reshape(rgb.shape[0], -1)
            names = FILTERS if bits == 8 else ("Up (write_png)", "Paeth")
            for name in names:
                start = time.process_time()
                if bits == 8:
                    data = filtered(samples, name)
                else:
                    kind = UP if name.startswith("Up") else PAETH
                    data = filter_rows(samples, 0, samples.shape[0], 6, kind)
                filter_cpu = time.process_time() - start
                start = time.process_time()
                compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
                size = len(compressor.compress(data)) + len(compressor.flush())
                zlib_cpu = time.process_time() - start
                rows.append(
                    f"| {scene} | {bits} | {name} | {filter_cpu:.2f} | {zlib_cpu:.2f} | "
                    f"{size / 1e6:.2f} |"
                )
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per row (median)")
    parser.add_argument("--quick", action="store_true", help="1 MP scenes, 2 rounds")
    parser.add_argument("--markdown", type=Path, help="write the report to this file")
    args = parser.parse_args()
    size = (864, 1152) if args.quick else SIZE
    rounds = 2 if args.quick else args.rounds

    sys.path.insert(0, str(HERE))
    from bench_render_command import load, machine_line

    print("rendering the scenes ...", flush=True)
    images = {name: rendered(name, *size) for name in ("friendly", "defocused")}
    lines = [
        f"Machine: {machine_line()}.",
        f"Load average (1/5/15 min) at the start: {load()}.",
        "",
        f"## PNG encoders, {size[1]}×{size[0]} rendered images (median of {rounds} rounds)",
        "",
        "| scene | bits | encoder | wall s | CPU s | file MB | speed-up | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    folder = Path(
        tempfile.mkdtemp(prefix="bench-png-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    )
    for bits in (8, 16):
        lines += compare(images, bits, rounds, folder)
    folder.rmdir()
    lines += [
        "",
        "## PNG filters (every row the same filter, zlib 1 + RLE, one thread, one run)",
        "",
        "| scene | bits | filter | filter CPU s | zlib CPU s | file MB |",
        "|---|---|---|---|---|---|",
        *filter_costs(images),
        "",
        f"Load average at the end: {load()}.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
