"""Tiny CPU proof of ``magicbokeh train depth``: does the student see through degradation?

Teacher: the tiny random Depth Anything V2 of ``shared/vectors/depth_anything_tiny`` converted
to a transformers folder (``--teacher vectors``), or the smaller-weight 4-block random model
of ``tests/tiny_depth.py`` (``--teacher tests``). Training data: 36 tiles (128 px) cut from
the top 60 % of seven scikit-image photos. Held out: 12 tiles from the bottom 40 % of six of
those photos (unseen regions) and 12 tiles of three other photos (unseen photos). The run is
the real command (70-px crops, ×4 degradation, default learning rates), validated on the
held-out tiles.

Reports, per validation, the student's output gap to teacher(clean) on the degraded held-out
crops, the teacher's own gap, and their ratio (below 1: the student's view of the degraded
image is closer to what the teacher sees on the clean one); after the run, per held-out set,
the same ratio on centre crops with one fixed degradation and the student's drift on the clean
crops (student(clean) vs teacher(clean)).

Run: ``python benchmarks/train_depth_tiny.py [--teacher vectors|tests] [--steps 150] [--work DIR]``
(needs ../shared).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from magicbokeh import cli  # noqa: E402
from magicbokeh.depth.convert_depth_anything import convert_checkpoint  # noqa: E402
from magicbokeh.depth.distill import (  # noqa: E402
    DistillSettings,
    degrade_crops,
    load_teacher,
    output_gap,
    tapped_layers,
)
from magicbokeh.train.depth_task import student_from_run  # noqa: E402
from magicbokeh.train.logs import read_metrics  # noqa: E402
from magicbokeh.train.run_folder import RunFolder  # noqa: E402
from tiny_depth import VECTORS, tiny_model, vector_config  # noqa: E402

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "camera", "brick", "grass", "coins")
HELD_OUT_PHOTOS = ("chelsea", "immunohistochemistry", "moon")
TILE = 128
TRAIN_ROWS = 0.6
"""Training tiles come from the top 60 % of each training photo, unseen regions from the rest."""


def tiles(names, per_photo: int, seed: int, rows=(0.0, 1.0)) -> list[np.ndarray]:
    """``per_photo`` random ``TILE×TILE`` RGB uint8 tiles of each photo, within ``rows``."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        photo = getattr(skimage.data, name)()
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
        photo = photo[int(rows[0] * len(photo)) : int(rows[1] * len(photo))]
        for _ in range(per_photo):
            y = rng.integers(photo.shape[0] - TILE + 1)
            x = rng.integers(photo.shape[1] - TILE + 1)
            out.append(photo[y : y + TILE, x : x + TILE])
    return out


def write(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


def centre_crops(images: list[np.ndarray], size: int) -> torch.Tensor:
    top = (TILE - size) // 2
    batch = np.stack([image[top : top + size, top : top + size] for image in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=70)
    parser.add_argument(
        "--teacher",
        choices=("vectors", "tests"),
        default="vectors",
        help="vectors: the 12-block random DA-V2 of the test vectors (default); tests: the "
        "4-block random model of tests/tiny_depth.py (smaller weights, a smoother function)",
    )
    parser.add_argument("--work", type=Path, help="folder for data and run (default: temporary)")
    parser.add_argument("extra", nargs="*", help="more `train depth` flags, after --")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="train_depth_tiny."))
    teacher_dir = work / f"teacher-{args.teacher}"
    if args.teacher == "tests" and not teacher_dir.is_dir():
        tiny_model().save_pretrained(teacher_dir)
    elif not teacher_dir.is_dir():
        convert_checkpoint(VECTORS / "original.pth", teacher_dir, config=vector_config(VECTORS))
    train = write(work / "train", tiles(TRAIN_PHOTOS, 6, seed=0, rows=(0.0, TRAIN_ROWS))[:36])
    held_out = {
        "unseen regions": tiles(TRAIN_PHOTOS[:6], 2, seed=1, rows=(TRAIN_ROWS, 1.0)),
        "unseen photos": tiles(HELD_OUT_PHOTOS, 4, seed=2),
    }
    write(work / "held_out" / "regions", held_out["unseen regions"])
    write(work / "held_out" / "photos", held_out["unseen photos"])
    run = work / f"run-{args.teacher}"
    argv = ["train", "depth", "--teacher", teacher_dir, "--data", train]
    argv += ["--val-data", work / "held_out", "--val-count", "24", "--val-every", "50"]
    argv += ["--resolution", args.resolution, "--steps", args.steps]
    argv += ["--batch-size", args.batch_size, "--checkpoint-every", args.steps]
    argv += ["--sample-every", args.steps, "--device", "cpu", "--num-workers", "0", "-o", run]
    argv += [*args.extra, "-q"]
    start = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(code)
    print(f"{args.steps} steps in {elapsed:.0f} s ({elapsed / args.steps:.2f} s/step), run {run}")
    for record in read_metrics(RunFolder(run).metrics_path):
        if record["split"] == "val":
            ratio = record["output"] / record["teacher_output"]
            print(
                f"step {record['step']:4d} validation: student(LQ) gap {record['output']:.4f}, "
                f"teacher(LQ) gap {record['teacher_output']:.4f}, ratio {ratio:.3f}"
            )
    teacher = load_teacher(teacher_dir)
    student, _ = student_from_run(RunFolder(run))
    settings = DistillSettings(feature_layers=tapped_layers(teacher))
    for name, images in held_out.items():
        clean = centre_crops(images, args.resolution)
        lq = degrade_crops(clean, torch.Generator().manual_seed(12345), settings)
        teacher_gap = float(output_gap(teacher, teacher, lq, clean))
        student_gap = float(output_gap(student, teacher, lq, clean))
        drift = float(output_gap(student, teacher, clean, clean))
        print(
            f"{name}: teacher(LQ) gap {teacher_gap:.4f}, student(LQ) gap {student_gap:.4f}, "
            f"ratio {student_gap / teacher_gap:.3f}, student(HQ) drift {drift:.4f}"
        )


if __name__ == "__main__":
    main()
