"""Tiny CPU proof of degradation-aware depth self-distillation (the pieces, no run machinery).

Teacher: the tiny random Depth Anything V2 of ``shared/vectors/depth_anything_tiny``. Student:
its copy, trained with :func:`magicbokeh.depth.distill.distillation_loss` (fresh seeded
degradation every step) and plain AdamW on random crops + flips of 36 tiles cut from the top
60 % of seven scikit-image photos. Held out, each tile with one fixed degradation: 12 tiles
from the bottom 40 % of those photos (unseen regions) and 12 tiles of three other photos.

Reports, on each held-out set, the scale-and-shift-invariant L1 gap to teacher(clean) of
teacher(degraded) and of student(degraded) and their ratio (below 1: the student's view of the
degraded image is closer to what the teacher sees on the clean one), and the student's drift on
clean tiles (student(clean) vs teacher(clean)).

Run: ``python benchmarks/distill_depth_tiny.py [--steps 150] [--seed 0]`` (needs ../shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from magicbokeh.depth.convert_depth_anything import (  # noqa: E402
    build_model,
    load_original_state_dict,
)
from magicbokeh.depth.distill import (  # noqa: E402
    DistillSettings,
    degrade_crops,
    distillation_loss,
    make_student,
    output_gap,
    tapped_layers,
)
from tiny_depth import VECTORS, vector_config  # noqa: E402

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "camera", "brick", "grass", "coins")
HELD_OUT_PHOTOS = ("chelsea", "immunohistochemistry", "moon")
TILE = 128
TRAIN_ROWS = 0.6
"""Training tiles come from the top 60 % of each training photo, unseen regions from the rest."""


def tiles(
    names: tuple[str, ...], per_photo: int, seed: int, rows: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """``per_photo`` random ``TILE×TILE`` sRGB tiles of each photo, taken within the band
    ``rows`` (fractions of the height), ``N×3×TILE×TILE`` in [0, 1]."""
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
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


def random_crops(
    images: torch.Tensor, count: int, size: int, rng: np.random.Generator
) -> torch.Tensor:
    """``count`` random ``size×size`` crops, each flipped left-right with probability 0.5."""
    batch = []
    for index in rng.integers(len(images), size=count):
        y, x = rng.integers(TILE - size + 1, size=2)
        crop = images[index, :, y : y + size, x : x + size]
        batch.append(crop.flip(-1) if rng.uniform() < 0.5 else crop)
    return torch.stack(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=70, help="crop side, multiple of 14")
    parser.add_argument("--scale", type=int, default=4, help="degradation downscaling factor")
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--output-weight", type=float, default=1.0)
    parser.add_argument("--freeze-head", action="store_true")
    parser.add_argument("--freeze-encoder", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    state = load_original_state_dict(VECTORS / "original.pth")
    teacher = build_model(state, vector_config(VECTORS)).requires_grad_(False).eval()
    student = make_student(
        teacher, freeze_head=args.freeze_head, freeze_encoder=args.freeze_encoder
    )
    settings = DistillSettings(
        feature_layers=tapped_layers(teacher),
        feature_weight=args.feature_weight,
        output_weight=args.output_weight,
        degrade_scale=args.scale,
    )
    crop = args.resolution
    per_photo = 36 // len(TRAIN_PHOTOS) + 1
    train = tiles(TRAIN_PHOTOS, per_photo, seed=args.seed, rows=(0.0, TRAIN_ROWS))[:36]
    held_out = {
        "unseen regions": tiles(TRAIN_PHOTOS[:6], 2, seed=args.seed + 1, rows=(TRAIN_ROWS, 1.0)),
        "unseen photos": tiles(HELD_OUT_PHOTOS, 4, seed=args.seed + 2),
    }
    held_out = {name: images[:, :, :crop, :crop] for name, images in held_out.items()}
    held_out_lq = {
        name: degrade_crops(images, torch.Generator().manual_seed(12345), settings)
        for name, images in held_out.items()
    }

    def report(label: str) -> None:
        student.eval()
        for name, clean in held_out.items():
            lq = held_out_lq[name]
            teacher_gap = float(output_gap(teacher, teacher, lq, clean))
            student_gap = float(output_gap(student, teacher, lq, clean))
            clean_drift = float(output_gap(student, teacher, clean, clean))
            print(
                f"{label}, {name}: teacher(LQ) gap {teacher_gap:.4f}, student(LQ) gap "
                f"{student_gap:.4f}, ratio {student_gap / teacher_gap:.3f}, "
                f"student(HQ) drift {clean_drift:.4f} ({clean_drift / teacher_gap:.3f} of the gap)"
            )
        student.train()

    report("before")
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    running = np.zeros(2)
    for step in range(args.steps):
        clean = random_crops(train, args.batch_size, crop, rng)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        losses = distillation_loss(teacher, student, clean, generator=generator, settings=settings)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        running += [float(losses.feature), float(losses.output)]
        if (step + 1) % 50 == 0:
            print(f"steps {step - 48}-{step + 1}: mean feature loss {running[0] / 50:.4f}, "
                  f"output loss {running[1] / 50:.4f}")  # fmt: skip
            running[:] = 0
            report(f"after {step + 1} steps")
    elapsed = time.perf_counter() - start
    report(f"after {args.steps} steps ({elapsed:.0f} s, {elapsed / args.steps:.2f} s/step)")


if __name__ == "__main__":
    main()
