"""Throughput of ``magicbokeh synth``: samples per second at a given size and ray count.

Usage: ``python benchmarks/bench_synth.py [--size 512] [--rays 64 256] [--count 4]
[--workers 2]``. Inputs are made from scikit-image's bundled photos (three cut-outs with
a synthetic soft matte, three backgrounds) in a temporary folder. For each ray count a fresh
dataset of ``--count`` samples is built with ``--workers`` processes (wall clock, including
worker start-up, scanning and writing); then one sample is timed stage by stage in this
process (one thread). Prints one line per ray count and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data as photos

from magicbokeh.data import synth
from magicbokeh.data.scene import build_layers, sample_plan
from magicbokeh.degrade import degrade
from magicbokeh.optics.raytrace import raytrace


def make_inputs(root: Path) -> tuple[Path, Path]:
    """Cut-outs (photos with an elliptical soft matte) and background photos."""
    fg, bg = root / "fg", root / "bg"
    fg.mkdir()
    bg.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        rgb = getattr(photos, name)()
        height, width = rgb.shape[:2]
        y, x = np.mgrid[:height, :width]
        r = np.hypot((y - height / 2) / (0.45 * height), (x - width / 2) / (0.4 * width))
        alpha = (np.clip((1 - r) * 12 + 0.5, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, alpha])).save(fg / f"{name}.png")
    for name in ("rocket", "immunohistochemistry", "hubble_deep_field"):
        rgb = getattr(photos, name)()
        big = cv2.resize(rgb, (rgb.shape[1] * 2, rgb.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
        Image.fromarray(big).save(bg / f"{name}.jpg", quality=95)
    return fg, bg


def stages(fg: Path, bg: Path, size: int, rays: int) -> dict:
    """Seconds per stage of one sample, in this process with one thread."""
    torch.set_num_threads(1)
    fg_set = synth.scan_sources(fg, cutouts=True)
    bg_set = synth.scan_sources(bg, cutouts=False)
    rng = synth.sample_rng(0, 0)
    plan = sample_plan(rng, size, [s.info for s in bg_set.files], [s.info for s in fg_set.files])
    plan = plan.__class__(**{**plan.__dict__, "aperture": 16.0})
    by_name = {s.info.name: s for s in fg_set.files + bg_set.files}
    timings = {}
    start = time.perf_counter()
    background = synth._load_background(by_name[plan.background.name].path)
    cutouts = [synth._load_cutout(by_name[f.name].path) for f in plan.foregrounds]
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    scene = build_layers(plan, background, cutouts)
    timings["compose"] = time.perf_counter() - start
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    bokeh = raytrace(scene.layers, scene.focus_disparity, 16.0, samples=rays, generator=generator)
    timings["raytrace"] = time.perf_counter() - start
    start = time.perf_counter()
    degrade(bokeh.clamp(0, 1), generator=generator, resize_back=True)
    timings["degrade"] = time.perf_counter() - start
    return {k: round(v, 3) for k, v in timings.items()}


def measure(fg: Path, bg: Path, size: int, rays: int, count: int, workers: int) -> dict:
    settings = synth.SynthSettings(size=size, rays=rays)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = synth.synthesize(fg, bg, Path(out) / "ds", count, settings, workers=workers)
        elapsed = time.perf_counter() - start
    return {
        "size": size,
        "rays": rays,
        "samples": report.made,
        "workers": workers,
        "seconds": round(elapsed, 2),
        "samples_per_second": round(report.made / elapsed, 4),
        "seconds_per_sample": round(elapsed / report.made, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="sample side in pixels")
    parser.add_argument("--rays", type=int, nargs="+", default=[64, 256], help="rays per pixel")
    parser.add_argument("--count", type=int, default=4, help="samples per ray count")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        fg, bg = make_inputs(Path(folder))
        for rays in args.rays:
            result = measure(fg, bg, args.size, rays, args.count, args.workers)
            result["stages_one_thread_seconds"] = stages(fg, bg, args.size, rays)
            results.append(result)
            print(
                f"{args.size}² rays={rays}: {result['samples_per_second']:.3f} samples/s "
                f"({result['seconds_per_sample']} s/sample, {args.workers} workers); "
                f"one sample, one thread: {result['stages_one_thread_seconds']}"
            )
    summary = {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
