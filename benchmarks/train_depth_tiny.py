"""Tiny CPU proof of ``magicbokeh train depth``: does the student see through degradation?

Four stages, each cached in ``--work`` (delete a stage's folder to redo it):

1. **scenes**: layered scenes with exact disparity (``magicbokeh.data.scene`` + the ray tracer,
   in focus, with depth haze), 128 px, built from scikit-image photos smoothed ×4 (so that
   the teacher's clean output is mostly predictable from a ×4-degraded view):
   ``--train-scenes`` training scenes and 48 held-out scenes (other random layouts, crops and
   cut-outs) of ten photos, 24 of them for validation during training and 24 for scoring,
   and 24 held-out scenes of seven other photos. ``--textures N`` adds N procedural
   dead-leaves images (``dead_leaves.py``) to the training scenes' sources.
2. **teacher**: the tiny random Depth Anything V2 of ``shared/vectors/depth_anything_tiny``
   converted to a transformers folder, then pretrained briefly on the training scenes against
   their true disparity (scale-and-shift-invariant L1), so that its output means something.
3. **distill**: the real command, ``magicbokeh train depth`` on the training scenes (112-px
   crops, ×4 degradation, batch 8, 500 steps, lr 3e-5 encoder / 1e-4 head after a 100-step
   warm-up, feature and output weights 1).
4. **score**: per held-out set, centre crops, each degraded with ``--score-seeds`` fixed
   degradations (the run's ``--degradation-scale``; gaps averaged over them): the teacher's gap
   (teacher(LQ) vs teacher(clean)), the student's (student(LQ) vs teacher(clean)), their
   ratio (below 1: the student sees through the degradation better than the teacher) and the
   student's drift on clean crops (student(clean) vs teacher(clean)).

Run: ``python benchmarks/train_depth_tiny.py [--work DIR] [--steps N] [-- more train-depth flags]``
(needs ../shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dead_leaves import dead_leaves  # noqa: E402
from magicbokeh import cli  # noqa: E402
from magicbokeh.data.scene import (  # noqa: E402
    Cutout,
    SourceInfo,
    build_layers,
    describe_cutout,
    sample_plan,
)
from magicbokeh.depth.convert_depth_anything import convert_checkpoint  # noqa: E402
from magicbokeh.depth.distill import (  # noqa: E402
    DistillSettings,
    degrade_crops,
    load_teacher,
    network_input,
    output_gap,
    scale_shift_invariant_loss,
    tapped_layers,
)
from magicbokeh.optics.color import linear_to_srgb  # noqa: E402
from magicbokeh.optics.raytrace import raytrace  # noqa: E402
from magicbokeh.train.depth_task import student_from_run  # noqa: E402
from magicbokeh.train.logs import read_metrics  # noqa: E402
from magicbokeh.train.run_folder import RunFolder  # noqa: E402
from tiny_depth import VECTORS, vector_config  # noqa: E402

TRAIN_PHOTOS = (
    "astronaut", "coffee", "rocket", "camera", "brick",
    "grass", "coins", "gravel", "hubble_deep_field", "retina",
)  # fmt: skip
OTHER_PHOTOS = ("chelsea", "immunohistochemistry", "moon", "clock", "page", "text", "colorwheel")
SCENE = 128
"""Side of a scene in px; training and scoring use 112-px crops."""
CROP = 112
SMOOTHING = 4
"""Photos are downscaled by this factor and scaled back before use (smooth textures)."""
HAZE = (0.1, 0.3)
"""Range of the haze density: transmittance exp(−density·(z − 1)), z = 1/(0.1 + 0.9·d)."""
HELD_OUT = 24
SCORE_SEED = 12345


def smooth(image: np.ndarray) -> np.ndarray:
    """``image`` (``H×W×3`` float32 in [0, 1]) downscaled by :data:`SMOOTHING` and back."""
    height, width = image.shape[:2]
    small = cv2.resize(
        image, (width // SMOOTHING, height // SMOOTHING), interpolation=cv2.INTER_AREA
    )
    return np.clip(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as ``H×W×3`` float32 sRGB in [0, 1], smoothed by :data:`SMOOTHING`."""
    image = getattr(skimage.data, name)()
    image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return smooth(image.astype(np.float32) / 255.0)


def sources(names, textures: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """The photos ``names`` and ``textures`` dead-leaves images (seeded), all smoothed."""
    rng = np.random.default_rng(seed)
    images = {name: photo(name) for name in names}
    return images | {f"leaves{i}": smooth(dead_leaves(rng)) for i in range(textures)}


def blob_alpha(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random smooth blob matte ``height×width`` in [0, 1]."""
    field = cv2.resize(
        rng.normal(size=(5, 5)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot((yy + 0.5) / height * 2 - 1, (xx + 0.5) / width * 2 - 1)
    alpha = np.clip((0.6 * field + 1.8 * (0.75 - radius)) / 0.15 + 0.5, 0, 1).astype(np.float32)
    return cv2.GaussianBlur(alpha, (0, 0), 0.7)


def make_scenes(
    seed: int, photos: dict[str, np.ndarray], count: int, cutout_count: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` in-focus layered scenes: sRGB ``N×S×S×3`` uint8 and disparity ``N×S×S`` float32
    (larger = nearer), with depth haze; backgrounds and ``cutout_count`` blob cut-outs from
    ``photos`` (name → ``H×W×3`` float32 sRGB)."""
    rng = np.random.default_rng(seed)
    names = list(photos)
    cutouts = {}
    for index in range(cutout_count):
        source = photos[names[int(rng.integers(len(names)))]]
        height, width = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        y = int(rng.integers(source.shape[0] - height))
        x = int(rng.integers(source.shape[1] - width))
        rgb = np.ascontiguousarray(source[y : y + height, x : x + width])
        cutouts[f"cut{index}"] = Cutout(rgb, blob_alpha(rng, height, width))
    backgrounds = [SourceInfo(n, p.shape[1], p.shape[0]) for n, p in photos.items()]
    foregrounds = [describe_cutout(n, c.alpha) for n, c in cutouts.items()]
    images, disparities = [], []
    for _ in range(count):
        plan = sample_plan(
            rng, SCENE, backgrounds, foregrounds, k_max=0.0, count=int(rng.integers(1, 3))
        )
        background = dataclasses.replace(
            plan.background,
            surface="tilted",
            span=float(rng.uniform(0.1, 0.6)),
            angle=float(math.pi / 2 + rng.uniform(-0.4, 0.4)),
            grid=(),
        )
        plan = dataclasses.replace(plan, background=background)
        scene = build_layers(
            plan, photos[plan.background.name], [cutouts[f.name] for f in plan.foregrounds]
        )
        with torch.no_grad():
            linear = raytrace(scene.layers, scene.focus_disparity, 0.0)
        depth = 1.0 / (0.1 + 0.9 * scene.disparity)
        transmittance = torch.exp(-float(rng.uniform(*HAZE)) * (depth - 1.0))
        airlight = torch.tensor([0.75, 0.8, 0.9]).view(1, 3, 1, 1) * float(rng.uniform(0.6, 1.0))
        linear = linear * transmittance + airlight * (1 - transmittance)
        srgb = linear_to_srgb(linear.clamp(0, 1))[0].permute(1, 2, 0).numpy()
        images.append((srgb * 255).round().astype(np.uint8))
        disparities.append(scene.disparity[0, 0].numpy())
    return np.stack(images), np.stack(disparities)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``N×H×W×3`` uint8 → ``N×3×H×W`` float sRGB in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def centre(batch: torch.Tensor) -> torch.Tensor:
    top = (batch.shape[-1] - CROP) // 2
    return batch[..., top : top + CROP, top : top + CROP]


def write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return folder


def pretrain_teacher(
    source: Path, output: Path, images: np.ndarray, disparity: np.ndarray, steps: int, seed: int
) -> None:
    """Fit the random teacher to true disparity (scale-and-shift-invariant L1, AdamW with
    lr 1e-4 encoder / 1e-3 head, 20-step warm-up, cosine decay, batch 8 of random 112-px crops
    and flips, gradient norm clipped to 1), then save it as a transformers folder."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = load_teacher(source).train().requires_grad_(True)
    head = [*model.neck.parameters(), *model.head.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": list(model.backbone.parameters()), "lr": 1e-4}, {"params": head, "lr": 1e-3}],
        weight_decay=0.01,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    clean, target = to_tensor(images), torch.from_numpy(disparity)
    reach = SCENE - CROP + 1
    for step in range(steps):
        index = rng.choice(len(clean), 8, replace=False)
        ys, xs, flips = rng.integers(0, reach, 8), rng.integers(0, reach, 8), rng.random(8) < 0.5
        windows = list(zip(index, ys, xs, strict=True))
        x = torch.stack([clean[i, :, y : y + CROP, s : s + CROP] for i, y, s in windows])
        d = torch.stack([target[i, y : y + CROP, s : s + CROP] for i, y, s in windows])
        x[flips], d[flips] = x[flips].flip(-1), d[flips].flip(-1)
        prediction = model(pixel_values=network_input(x, model)).predicted_depth
        loss = scale_shift_invariant_loss(prediction, d)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            print(f"teacher pretraining step {step + 1}: loss {loss.item():.3f}", flush=True)
    model.eval().save_pretrained(output)


@torch.no_grad()
def gt_gap(model, images: torch.Tensor, disparity: torch.Tensor) -> float:
    prediction = model(pixel_values=network_input(images, model)).predicted_depth
    return float(scale_shift_invariant_loss(prediction, disparity))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-scenes", type=int, default=192)
    parser.add_argument(
        "--textures",
        type=int,
        default=0,
        help="dead-leaves images added to the ten training photos (training scenes only)",
    )
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-5, help="encoder learning rate")
    parser.add_argument("--lr-head", type=float, default=1e-4)
    parser.add_argument("--feature-weight", type=float, default=1.0)
    parser.add_argument("--lr-warmup-steps", type=int, default=100)
    parser.add_argument(
        "--score-seeds", type=int, default=4, help="degradations per held-out crop when scoring"
    )
    parser.add_argument(
        "--work", type=Path, help="folder for data, teacher and run (default: temporary)"
    )
    parser.add_argument("extra", nargs="*", help="more `train depth` flags, after --")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    work = args.work or Path(tempfile.mkdtemp(prefix="train_depth_tiny."))
    work.mkdir(parents=True, exist_ok=True)

    data = work / "scenes.npz"
    if not data.is_file():
        start = time.perf_counter()
        train_sources = sources(TRAIN_PHOTOS, args.textures)
        cutout_count = max(24, len(train_sources) // 2)
        train, train_disparity = make_scenes(0, train_sources, args.train_scenes, cutout_count)
        photos_only = {name: train_sources[name] for name in TRAIN_PHOTOS}
        same, same_disparity = make_scenes(1, photos_only, 2 * HELD_OUT)
        other, other_disparity = make_scenes(2, sources(OTHER_PHOTOS), HELD_OUT)
        arrays = {"train": train, "same": same, "other": other}
        arrays |= {"train_disparity": train_disparity, "same_disparity": same_disparity}
        np.savez(data, other_disparity=other_disparity, **arrays)
        print(f"scenes: {time.perf_counter() - start:.0f} s", flush=True)
    scenes = np.load(data)
    train_dir = work / "train"
    if not train_dir.is_dir():
        write_images(train_dir, scenes["train"])
        write_images(work / "val", scenes["same"][HELD_OUT:])

    random_teacher, teacher = work / "teacher-random", work / "teacher"
    if not random_teacher.is_dir():
        convert_checkpoint(VECTORS / "original.pth", random_teacher, config=vector_config(VECTORS))
    if not teacher.is_dir():
        start = time.perf_counter()
        pretrain_teacher(
            random_teacher,
            teacher,
            scenes["train"],
            scenes["train_disparity"],
            args.pretrain_steps,
            seed=0,
        )
        print(f"teacher pretraining: {time.perf_counter() - start:.0f} s", flush=True)

    run = work / "run"
    argv = ["train", "depth", "--teacher", teacher, "--data", train_dir]
    argv += ["--val-data", work / "val", "--val-count", HELD_OUT, "--val-every", args.steps // 4]
    argv += ["--resolution", CROP, "--steps", args.steps, "--batch-size", args.batch_size]
    argv += ["--lr", args.lr, "--lr-head", args.lr_head, "--feature-weight", args.feature_weight]
    argv += ["--lr-warmup-steps", args.lr_warmup_steps]
    argv += ["--checkpoint-every", args.steps, "--sample-every", args.steps]
    argv += ["--device", "cpu", "--num-workers", "0", "-o", run, *args.extra, "-q"]
    if args.steps in RunFolder(run).checkpoint_steps():
        print(f"run {run} has its step-{args.steps} checkpoint: scoring it again")
    else:
        start = time.perf_counter()
        code = cli.main([str(a) for a in argv])
        elapsed = time.perf_counter() - start
        if code != 0:
            raise SystemExit(code)
        per_step = elapsed / args.steps
        print(f"{args.steps} steps in {elapsed:.0f} s ({per_step:.2f} s/step), run {run}")
    for record in read_metrics(RunFolder(run).metrics_path):
        if record["split"] == "val":
            ratio = record["output"] / record["teacher_output"]
            print(
                f"step {record['step']:4d} validation: student(LQ) gap {record['output']:.4f}, "
                f"teacher(LQ) gap {record['teacher_output']:.4f}, ratio {ratio:.3f}"
            )

    teacher_model = load_teacher(teacher)
    student, _ = student_from_run(RunFolder(run))
    # Score with the degradation the run trained on (``--degradation-scale``).
    scale = int(RunFolder(run).read_run("depth")["settings"]["degradation_scale"])
    settings = DistillSettings(feature_layers=tapped_layers(teacher_model), degrade_scale=scale)
    print(f"scoring with the ×{scale} degradation of the run")
    held_out = {
        "unseen scenes, same photos": ("same", slice(0, HELD_OUT)),
        "unseen scenes, other photos": ("other", slice(None)),
    }
    for name, (key, rows) in held_out.items():
        clean = centre(to_tensor(scenes[key][rows]))
        truth = centre(torch.from_numpy(scenes[f"{key}_disparity"][rows]))
        gaps = []  # per degradation seed: teacher(LQ), student(LQ), and both against truth
        for seed in range(SCORE_SEED, SCORE_SEED + args.score_seeds):
            lq = degrade_crops(clean, torch.Generator().manual_seed(seed), settings)
            gaps.append(
                (
                    float(output_gap(teacher_model, teacher_model, lq, clean)),
                    float(output_gap(student, teacher_model, lq, clean)),
                    gt_gap(teacher_model, lq, truth),
                    gt_gap(student, lq, truth),
                )
            )
        teacher_gap, student_gap, teacher_truth, student_truth = np.mean(gaps, axis=0)
        ratios = [student / teacher for teacher, student, _, _ in gaps]
        drift = float(output_gap(student, teacher_model, clean, clean))
        print(
            f"{name}: teacher(LQ) gap {teacher_gap:.4f}, student(LQ) gap {student_gap:.4f}, "
            f"ratio {student_gap / teacher_gap:.3f} (per degradation {min(ratios):.3f}–"
            f"{max(ratios):.3f}), student(HQ) drift {drift:.4f}; against true disparity: "
            f"teacher(HQ) {gt_gap(teacher_model, clean, truth):.3f}, teacher(LQ) "
            f"{teacher_truth:.3f}, student(LQ) {student_truth:.3f}"
        )


if __name__ == "__main__":
    main()
