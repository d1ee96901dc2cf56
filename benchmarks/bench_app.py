"""Speed of the web app, batch rendering and animations (physical engine, CPU).

Scene: the bundled motorcycle photo (Middlebury, with its measured disparity), resized with
Lanczos to 1 MP (1216×822) or 12 MP (4240×2860) with its disparity resized bilinearly, so the
depth has real structure. Reports, each with the 1-minute load average when it started
(the machine may be shared) and the process CPU time where it is measured in-process:

* app preview latency: ``render_preview`` (what dragging a slider runs) on a 1 MP photo
  at K = 16 and 32, and on a 12 MP photo (a 1 MP preview, K scaled), focus on the
  motorcycle; median of ``--runs`` after one warm-up;
* app full-resolution render of the 12 MP photo: ``render_full`` + ``save_result`` (what the
  Render button runs: render, PNG and sidecar), K = 32;
* batch throughput: ``magicbokeh render DIR -o OUT`` on 12 MP PNGs in a fresh process
  (process start, decoding, depth guess, auto focus, render, PNG encoding all included);
* sweep: ``magicbokeh sweep`` of the 1 MP photo to MP4 (focus pull, K = 16) in a fresh
  process: seconds per frame, and the whole command.

Usage: ``python benchmarks/bench_app.py [--quick] [--runs N] [--markdown OUT.md]``.
Environment: the app and ``sweep`` set ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep instead
of spinning) themselves; ``render`` does not, so this script sets it unless it is already set,
for itself and the batch child. Run with ``OMP_WAIT_POLICY=ACTIVE`` to measure batch with
spinning threads.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform  # noqa: E402 - the environment must be set before torch loads
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from magicbokeh.app.session import (  # noqa: E402
    LensSettings,
    make_photo,
    render_full,
    render_preview,
    save_result,
)
from magicbokeh.commands.demo import demo_scene  # noqa: E402
from magicbokeh.io import LoadedImage, save_image  # noqa: E402

SIZES = {"1 MP": (1216, 822), "12 MP": (4240, 2860)}
FOCUS = (420 / 741, 200 / 500)  # the motorcycle, as a fraction of width and height


def scene(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The motorcycle photo and its disparity at ``size`` (width, height)."""
    rgb, disparity = demo_scene()
    big = np.clip(cv2.resize(rgb, size, interpolation=cv2.INTER_LANCZOS4), 0.0, 1.0)
    return big, np.clip(cv2.resize(disparity, size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def timed(function, runs: int) -> dict:
    """Median and minimum wall time and median CPU time of ``runs`` calls after a warm-up."""
    function()
    walls, cpus, load = [], [], os.getloadavg()[0]
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "median": statistics.median(walls),
        "min": min(walls),
        "cpu": statistics.median(cpus),
        "load": load,
    }


def row(name: str, result: dict) -> str:
    return (
        f"| {name} | {result['median']:.2f} | {result['min']:.2f} | {result['cpu']:.2f} | "
        f"{result['load']:.1f} |"
    )


def app_rows(runs: int) -> list[str]:
    rows = []
    photos = {}
    for label, size in SIZES.items():
        rgb, disparity = scene(size)
        image = LoadedImage(rgb=rgb, alpha=None, bit_depth=8, icc_profile=None, source=None)
        photos[label] = make_photo("bench.png", image, disparity, "measured", None)
    cases = [("1 MP", 16.0, False), ("1 MP", 32.0, False), ("1 MP", 32.0, True)]
    cases += [("12 MP", 32.0, False), ("12 MP", 32.0, True)]
    for label, aperture, draft in cases:
        photo = photos[label]
        width, height = photo.size
        settings = LensSettings(focus=(FOCUS[0] * width, FOCUS[1] * height), aperture=aperture)
        shown = (photo.draft if draft else photo.screen).rgb.shape
        kind = "draft (while dragging)" if draft else "preview"
        name = f"{kind} of a {label} photo: {shown[-1]}×{shown[-2]}, K = {aperture:g}"
        result = timed(lambda p=photo, s=settings, d=draft: render_preview(p, s, draft=d), runs)
        rows.append(row(name, result))
        print(rows[-1], flush=True)
    photo = photos["12 MP"]
    width, height = photo.size
    settings = LensSettings(focus=(FOCUS[0] * width, FOCUS[1] * height), aperture=32.0)

    def full() -> None:
        result = render_full(photo, settings, model=None, max_megapixels=40.0)
        save_result(photo, result)

    rows.append(row("full render of the 12 MP photo + PNG + sidecar, K = 32", timed(full, 2)))
    print(rows[-1], flush=True)
    photo.close()
    return rows


def command(args: list[str], env: dict) -> tuple[float, float, float]:
    """``magicbokeh ARGS`` in a fresh process: wall s, CPU s, and the load when it started."""
    load, start = os.getloadavg()[0], time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "magicbokeh", *args], check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu, load


def batch_and_sweep_rows(count: int, frames: int, folder: Path) -> list[str]:
    env = dict(os.environ, MAGICBOKEH_HOME=str(folder / "no-models"))
    photos = folder / "photos"
    rgb, _ = scene(SIZES["12 MP"])
    for index in range(count):
        save_image(photos / f"photo{index}.png", np.roll(rgb, 97 * index, axis=1))
    seconds, cpu, load = command(
        [
            "render", str(photos), "-o", str(folder / "out"), "--engine", "physical",
            "--aperture", "32", "-q",
        ],
        env,
    )  # fmt: skip
    rows = [
        f"| batch: {count} × 12 MP PNG, depth guess, auto focus, K = 32 | {seconds:.1f} | "
        f"{cpu:.1f} | {60 * count / seconds:.1f} images/min | {load:.1f} |"
    ]
    print(rows[-1], flush=True)
    rgb, disparity = scene(SIZES["1 MP"])
    save_image(folder / "one.png", rgb)
    np.save(folder / "one_depth.npy", disparity)
    width, height = SIZES["1 MP"]
    seconds, cpu, load = command(
        [
            "sweep", str(folder / "one.png"), "-o", str(folder / "pull.mp4"), "--depth",
            str(folder / "one_depth.npy"), "--focus-from",
            f"{FOCUS[0] * width:.0f},{FOCUS[1] * height:.0f}", "--focus-to",
            f"{0.86 * width:.0f},{0.16 * height:.0f}", "--aperture", "16", "--frames",
            str(frames), "-q",
        ],
        env,
    )  # fmt: skip
    rows.append(
        f"| sweep: {frames} frames of the 1 MP photo to MP4, focus pull, K = 16 | "
        f"{seconds:.1f} | {cpu:.1f} | {seconds / frames:.2f} s/frame | {load:.1f} |"
    )
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, images and frames")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per preview row")
    parser.add_argument("--markdown", type=Path, help="write the tables to this file")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}, {time.strftime('%Y-%m-%d')}"
    )
    print(header, flush=True)
    lines = [
        header,
        "",
        "| app | median wall s | min wall s | CPU s | load avg |",
        "|---|---|---|---|---|",
        *app_rows(runs),
        "",
        "| command (fresh process) | wall s | CPU s | throughput | load avg |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-app-") as folder:
        lines += batch_and_sweep_rows(
            2 if args.quick else 4, 12 if args.quick else 60, Path(folder)
        )
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
