"""Throughput of the second-order degradation: HR images per second at a given size and batch.

Usage: ``python benchmarks/bench_degrade.py [--size 512] [--batch 1 8] [--images 64]
[--device cpu] [--resize-back] [--threads N]``. Each batch draws fresh random parameters, so
the figure averages over the whole parameter distribution. Prints one line per batch size and
a JSON summary. On a busy CPU, torch's multi-threaded kernels slow down sharply; ``--threads 1``
gives steadier numbers there.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from magicbokeh.degrade import degrade


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(size: int, batch: int, images: int, device: torch.device, resize_back: bool) -> dict:
    """Degrade ``images`` random ``size²`` HR images in batches of ``batch``; return timings."""
    generator = torch.Generator(device=device).manual_seed(0)
    hr = torch.rand(batch, 3, size, size, generator=generator, device=device)
    hr = torch.nn.functional.avg_pool2d(hr, 3, stride=1, padding=1)  # some spatial correlation
    degrade(hr, generator=generator, resize_back=resize_back)  # warm-up
    _synchronize(device)
    steps = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(steps):
        degrade(hr, generator=generator, resize_back=resize_back)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    done = steps * batch
    return {
        "size": size,
        "batch": batch,
        "images": done,
        "seconds": round(elapsed, 3),
        "images_per_second": round(done / elapsed, 2),
        "ms_per_image": round(1000 * elapsed / done, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="HR side in pixels")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--images", type=int, default=64, help="images per batch size")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    parser.add_argument("--resize-back", action="store_true", help="also resize back to HR size")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for batch in args.batch:
        result = measure(args.size, batch, args.images, device, args.resize_back)
        results.append(result)
        print(
            f"{args.size}² batch {batch}: {result['images_per_second']} img/s "
            f"({result['ms_per_image']} ms/img over {result['images']} images)"
        )
    summary = {
        "device": str(device),
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
