"""Speed of ``magicbokeh eval bokeh``: 12 pairs at 768×512, physical engine, PSNR/SSIM/LPIPS.

Builds a data folder of synthetic photo-like pairs (the scene of ``bench_physical.py``, one
seed per pair; targets rendered by the physical engine at K = 24, depth as ``.npy``, the
subject as the focal-region mask), then times the whole command in this process, as a user
runs it: loading, depth files, focus from masks, rendering at K = 32, the three metrics,
outputs, gallery and report. LPIPS (AlexNet) uses the installed weights when
``$MAGICBOKEH_HOME/lpips`` has them, else random weights of the same network under the
installed names (the same computation, so the same time).

Prints the load average before and after (``os.getloadavg()``): on a shared machine the wall
time depends on it; the process CPU time (both cores together) depends on it much less.

Usage: ``python benchmarks/bench_eval.py [--pairs 12] [--size 768x512] [--runs 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_physical import make_scene  # noqa: E402
from magicbokeh.cli import main  # noqa: E402
from magicbokeh.io import save_image  # noqa: E402
from magicbokeh.metrics.lpips import LPIPS  # noqa: E402
from magicbokeh.metrics.lpips_weights import LPIPS_ASSETS, LPIPS_DIR  # noqa: E402
from magicbokeh.optics import render_physical  # noqa: E402
from magicbokeh.runtime import model_home  # noqa: E402


def build_data(root: Path, pairs: int, height: int, width: int) -> None:
    """``root/input``, ``target``, ``depth``, ``focus`` with ``pairs`` synthetic scenes."""
    for i in range(pairs):
        image, disparity, focus = make_scene(height, width, seed=i)
        target = render_physical(image, disparity, focus, 24.0)
        save_image(root / "input" / f"{i}.png", image[0].permute(1, 2, 0).numpy())
        save_image(root / "target" / f"{i}.jpg", target[0].permute(1, 2, 0).numpy(), quality=95)
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{i}.npy", disparity[0, 0].numpy())
        mask = (disparity[0, 0] - focus).abs() < 0.02
        save_image(root / "focus" / f"{i}.png", mask[..., None].expand(-1, -1, 3).float().numpy())


def lpips_home(work: Path) -> tuple[Path, str]:
    """A model home with LPIPS AlexNet weights: the installed ones, or random stand-ins."""
    installed = model_home() / LPIPS_DIR
    if all((installed / a.name).is_file() for a in LPIPS_ASSETS["alex"]):
        return model_home(), "installed weights"
    home = work / "home"
    folder = home / LPIPS_DIR
    folder.mkdir(parents=True)
    model = LPIPS("alex")
    for head in model.heads:  # real heads are non-negative
        head.weight.abs_()
    backbone, heads = LPIPS_ASSETS["alex"]
    torch.save(
        {f"features.{k}": v for k, v in model.features.state_dict().items()}, folder / backbone.name
    )
    torch.save(
        {f"lin{k}.model.1.weight": h.weight for k, h in enumerate(model.heads)}, folder / heads.name
    )
    return home, "random weights of the same network (same computation)"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--size", default="768x512")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    try:
        build_data(work / "data", args.pairs, height, width)
        home, weights = lpips_home(work)
        os.environ["MAGICBOKEH_HOME"] = str(home)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; LPIPS: {weights}"
        )
        for run in range(args.runs):
            out = work / f"report{run}"
            load_before = os.getloadavg()
            wall, cpu = time.perf_counter(), time.process_time()
            code = main(
                [
                    "eval",
                    "bokeh",
                    "--data",
                    str(work / "data"),
                    "-o",
                    str(out),
                    "--engine",
                    "physical",
                    "--metrics",
                    "psnr,ssim,lpips",
                    "-q",
                ]
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            load_after = os.getloadavg()
            assert code == 0, code
            report = json.loads((out / "report.json").read_text())
            means = report["means"]
            load = " ".join(f"{v:.2f}" for v in load_before)
            load += ", after " + " ".join(f"{v:.2f}" for v in load_after)
            print(
                f"run {run}: {args.pairs} pairs at {width}×{height}: wall {wall:.1f} s, "
                f"process CPU {cpu:.1f} s; load average before {load}; mean engine time "
                f"{means['time']['total']:.2f} s/image; PSNR {means['psnr']:.2f}, "
                f"SSIM {means['ssim']:.4f}, LPIPS {means['lpips']:.4f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
