"""The MagicBokeh recipe end to end at toy scale, on a CPU, with measured numbers.

One command (``python benchmarks/train_tiny_demo.py [--out DIR]``) does everything, each
stage cached in ``DIR`` so an interrupted run continues:

1. **data**: procedurally generated "photos" (gradients, shapes, stripes, noise textures;
   anti-aliased, 64×64), split into training and held-out images; cut-out foregrounds (the
   same generator with soft elliptical mattes) and backgrounds; ``magicbokeh synth`` builds
   ray-traced bokeh pairs from them (48×48, K in [0, 24] px per unit disparity, LQ degraded
   ×2 and resized back).
2. **base**: a tiny Stable-Diffusion-style base folder: an ``AutoencoderKL`` (factor 2) trained
   as an autoencoder on the photos, then the (pruned) UNet trained as an ε-prediction DDPM on
   the autoencoder's latents, written in the SD2.1 diffusers layout (mid block and
   cross-attention present but zero, so pruning them changes nothing).
3. **train sr**: stage 1 with ``magicbokeh train sr`` on the training photos.
4. **train bokeh**: the alternating stage with ``magicbokeh train bokeh``, and the two ablations
   (``--no-fama``, ``--joint``) with the same budget.
5. **evaluation** on held-out data: SR (PSNR against the HR crop) of the model vs the
   Lanczos-upscaled LQ input; bokeh (PSNR against the ray-traced ground truth) of the model vs
   the all-sharp image, the LQ input and the stage-1 model.

Writes ``DIR/results.json`` and prints a Markdown table (docs/training.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from magicbokeh import cli  # noqa: E402
from magicbokeh.io import save_image  # noqa: E402
from tiny_models import UNET as TINY_UNET  # noqa: E402

PHOTO_SIZE = 64
RESOLUTION = 48
SCALE = 2
CUTOUT_SIZE = 32
K_MAX = 24.0


# --------------------------------------------------------------------------------- data
def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1], ``size×size``."""
    grid = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def generated_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """An ``size×size×3`` sRGB image in [0, 1] with edges and textures at several scales."""
    big = size * 2
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ramp = value_noise(rng, big, 2)[..., None]
    image = a * ramp + b * (1 - ramp)
    for _ in range(int(rng.integers(4, 9))):
        color = rng.uniform(0, 1, 3)
        mask = np.zeros((big, big), np.uint8)
        kind = rng.integers(3)
        center = tuple(int(v) for v in rng.integers(0, big, 2))
        if kind == 0:
            axes = tuple(int(v) for v in rng.integers(big // 16, big // 3, 2))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif kind == 1:
            points = rng.integers(0, big, (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(mask, [points], 1)
        else:
            end = tuple(int(v) for v in rng.integers(0, big, 2))
            cv2.line(mask, center, end, 1, int(rng.integers(2, 8)))
        fill = np.broadcast_to(color, image.shape).copy()
        texture = rng.integers(3)
        if texture == 0:  # stripes
            y, x = np.mgrid[:big, :big]
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 14)
            stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period) > 0
            fill = fill * (0.6 + 0.4 * stripes[..., None])
        elif texture == 1:  # fine noise texture
            fill = fill * (0.7 + 0.3 * value_noise(rng, big, big // 4)[..., None])
        image = np.where(mask[..., None] > 0, fill, image)
    image = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return image.clip(0, 1)


def make_data(root: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("photos", 64), ("val_photos", 16)):
        folder = root / split
        folder.mkdir(parents=True)
        for i in range(count):
            save_image(folder / f"{i:03d}.png", generated_photo(rng, PHOTO_SIZE))
    for split, count in (("fg", 24), ("bg", 16)):
        folder = root / "synth_inputs" / split
        folder.mkdir(parents=True)
        for i in range(count):
            rgb = generated_photo(rng, PHOTO_SIZE if split == "bg" else CUTOUT_SIZE)
            if split == "bg":
                save_image(folder / f"{i:03d}.png", rgb)
                continue
            y, x = np.mgrid[:CUTOUT_SIZE, :CUTOUT_SIZE] / (CUTOUT_SIZE - 1) - 0.5
            rx, ry = rng.uniform(0.25, 0.45, 2)
            alpha = np.clip((1 - np.hypot(x / rx, y / ry)) * 8, 0, 1).astype(np.float32)
            save_image(folder / f"{i:03d}.png", rgb, alpha=alpha)
    from magicbokeh.data.synth import SynthSettings, synthesize

    inputs = root / "synth_inputs"
    for split, count, synth_seed in (("bokeh", 64, seed), ("val_bokeh", 16, seed + 1)):
        settings = SynthSettings(
            size=RESOLUTION, rays=64, seed=synth_seed, k_max=K_MAX, scale=SCALE
        )
        synthesize(inputs / "fg", inputs / "bg", root / split, count, settings, progress=False)


# --------------------------------------------------------------------------------- base
#: The test suite's tiny UNet layout (two levels, 32/64 channels) at this resolution, with
#: SD2.1's linear attention projections.
UNET = {**TINY_UNET, "sample_size": RESOLUTION // 2, "use_linear_projection": True}
VAE = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": RESOLUTION,
}
SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
}


def photo_crops(
    folder: Path, rng: np.random.Generator, count: int, size: int = RESOLUTION
) -> torch.Tensor:
    """``count`` random ``size``² crops (with flips) of the photos, B×3×H×W in [−1, 1]."""
    from magicbokeh.io import load_image

    images = [load_image(p).rgb for p in sorted(folder.glob("*.png"))]
    crops = []
    for _ in range(count):
        image = images[int(rng.integers(len(images)))]
        y, x = rng.integers(0, PHOTO_SIZE - size + 1, 2)
        crop = image[y : y + size, x : x + size]
        crops.append(crop[:, ::-1] if rng.uniform() < 0.5 else crop)
    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()) * 2 - 1


def train_autoencoder(root: Path, steps: int, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = AutoencoderKL(**VAE, scaling_factor=1.0)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(steps):
        batch = photo_crops(root / "photos", rng, 16, size=32)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - batch).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            print(f"  autoencoder step {step}: L1 {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(photo_crops(root / "photos", rng, 64)).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def train_diffusion_unet(root: Path, vae, steps: int, seed: int):
    """The pruned UNet trained as an ε-prediction DDPM on scaled latents of the photos."""
    from diffusers import DDPMScheduler

    from magicbokeh.model.unet import MagicBokehUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    unet = MagicBokehUNet(**UNET)
    scheduler = DDPMScheduler.from_config(SCHEDULER)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    scale = vae.config.scaling_factor
    for step in range(steps):
        with torch.no_grad():
            z = vae.encode(photo_crops(root / "photos", rng, 16)).latent_dist.sample() * scale
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (z.shape[0],))
        # Half of every batch at the high end, where the one-step model works (t = 999).
        t[: z.shape[0] // 2] = torch.randint(900, 1000, (z.shape[0] // 2,))
        noisy = scheduler.add_noise(z, noise, t)
        loss = (unet(noisy, t) - noise).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0:
            print(f"  diffusion step {step}: ε-MSE {loss.item():.4f}", flush=True)
    return unet.eval()


def write_base(root: Path, vae, pruned) -> Path:
    """SD2.1 diffusers layout: stock UNet with zero mid block and zero cross-attention."""
    from diffusers import UNet2DConditionModel

    base = root / "base"
    stock = UNet2DConditionModel(
        **{**UNET, "attention_head_dim": tuple(UNET["attention_head_dim"])},
    )
    state = stock.state_dict()
    own = pruned.state_dict()
    for key in state:
        if key in own:
            state[key] = own[key]
        elif (
            key.startswith("mid_block.") and (".conv2." in key or ".proj_out." in key)
        ) or ".attn2.to_out." in key:
            state[key] = torch.zeros_like(state[key])  # residual branches that add nothing
    stock.load_state_dict(state)
    stock.save_pretrained(base / "unet")
    vae.save_pretrained(base / "vae")
    (base / "scheduler").mkdir(parents=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    return base


# ------------------------------------------------------------------------------ metrics
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def network(folder: Path):
    from magicbokeh.model.network import MagicBokehNetwork

    return MagicBokehNetwork.from_pretrained(folder).eval()


def run_model(net, lq: np.ndarray, defocus: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One forward pass on one H×W×3 image in [0, 1]; returns H×W×3 in [0, 1]."""
    image = torch.from_numpy(lq.transpose(2, 0, 1).copy())[None] * 2 - 1
    d = torch.from_numpy(defocus)[None, None] * 2 - 1
    m = None if mask is None else torch.from_numpy(mask)[None, None]
    with torch.no_grad():
        out = net(image.float(), d.float(), m)
    return ((out[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)


def held_out_crops(root: Path) -> list[np.ndarray]:
    """The centre RESOLUTION² crops of the held-out photos (H×W×3 in [0, 1])."""
    from magicbokeh.io import load_image

    offset = (PHOTO_SIZE - RESOLUTION) // 2
    return [
        load_image(path).rgb[offset : offset + RESOLUTION, offset : offset + RESOLUTION]
        for path in sorted((root / "val_photos").glob("*.png"))
    ]


def autoencoder_psnr(root: Path) -> float:
    """Mean PSNR of the base autoencoder's reconstruction of the held-out crops: the frozen
    decoder bounds what the trained network can reach."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(root / "base" / "vae").eval()
    scores = []
    for hr in held_out_crops(root):
        x = torch.from_numpy(hr.transpose(2, 0, 1).copy())[None] * 2 - 1
        with torch.no_grad():
            out = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        scores.append(psnr((out[0].permute(1, 2, 0).numpy() + 1) / 2, hr))
    return float(np.mean(scores))


def evaluate_sr(root: Path, model_dirs: dict[str, Path], seed: int) -> dict[str, float]:
    """Mean PSNR on held-out crops: Lanczos upscaling of the degraded LQ, and each model on it."""
    from magicbokeh.degrade import degrade

    nets = {name: network(folder) for name, folder in model_dirs.items()}
    scores: dict[str, list[float]] = {"Lanczos-upscaled LQ": [], **{name: [] for name in nets}}
    for i, hr in enumerate(held_out_crops(root)):
        hr_t = torch.from_numpy(hr.transpose(2, 0, 1).copy())[None]
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        lq = degrade(hr_t, generator=generator, scale=SCALE)[0].permute(1, 2, 0).numpy()
        up = cv2.resize(lq, (RESOLUTION, RESOLUTION), interpolation=cv2.INTER_LANCZOS4).clip(0, 1)
        scores["Lanczos-upscaled LQ"].append(psnr(up, hr))
        zero = np.zeros((RESOLUTION, RESOLUTION), np.float32)
        for name, net in nets.items():
            scores[name].append(psnr(run_model(net, up, zero, None), hr))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def evaluate_bokeh(root: Path, model_dirs: dict[str, Path], masks: dict[str, bool]) -> dict:
    """Mean PSNR against the ray-traced ground truth on the held-out synth samples."""
    from magicbokeh.data.datasets import BokehPairs
    from magicbokeh.focus import focus_mask, learned_defocus

    nets = {name: network(folder) for name, folder in model_dirs.items()}
    data = BokehPairs(root / "val_bokeh")
    scores: dict[str, list[float]] = {"all-sharp HQ": [], "LQ input": [], **{n: [] for n in nets}}
    for item in (data[i] for i in range(len(data))):
        gt = item["bokeh"].permute(1, 2, 0).numpy()
        scores["all-sharp HQ"].append(psnr(item["hq"].permute(1, 2, 0).numpy(), gt))
        lq = item["lq"].permute(1, 2, 0).numpy()
        scores["LQ input"].append(psnr(lq, gt))
        d = item["disparity"][0]
        defocus = learned_defocus(d, float(item["d_f"]), float(item["K"])).numpy()
        mask = focus_mask(d, float(item["d_f"]), float(item["K"])).numpy()
        for name, net in nets.items():
            out = run_model(net, lq, defocus, mask if masks[name] else None)
            scores[name].append(psnr(out, gt))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def loss_summary(run: Path) -> dict:
    """Per phase: the training loss (mean of the first and of the last fifth of its records)
    and the validation loss (first and last record, with their steps)."""
    from magicbokeh.train.logs import read_metrics
    from magicbokeh.train.run_folder import RunFolder

    records = read_metrics(RunFolder(run).metrics_path)
    summary = {}
    for phase in sorted({r["phase"] for r in records}):
        train = [r["loss"] for r in records if r["split"] == "train" and r["phase"] == phase]
        val = [
            (r["step"], r["loss"]) for r in records if r["split"] == "val" and r["phase"] == phase
        ]
        fifth = max(1, len(train) // 5)
        summary[phase] = {
            "train_first_fifth": float(np.mean(train[:fifth])) if train else None,
            "train_last_fifth": float(np.mean(train[-fifth:])) if train else None,
            "val_first": val[0] if val else None,
            "val_last": val[-1] if val else None,
        }
    return summary


# -------------------------------------------------------------------------------- main
def magicbokeh(*args) -> None:
    code = cli.main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"magicbokeh {' '.join(map(str, args[:2]))} failed with {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tiny_demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, default=2000)
    parser.add_argument("--diffusion-steps", type=int, default=1000)
    parser.add_argument("--sr-steps", type=int, default=1500)
    parser.add_argument("--bokeh-steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str, done: Path, work) -> None:
        if done.exists():
            print(f"{name}: done before ({done})", flush=True)
            return
        print(f"{name} ...", flush=True)
        started = time.perf_counter()
        work()
        timings[name] = time.perf_counter() - started
        print(f"{name}: {timings[name]:.0f} s", flush=True)

    stage("data", root / "val_bokeh", lambda: make_data(root, args.seed))

    from diffusers import AutoencoderKL

    from magicbokeh.model.unet import MagicBokehUNet

    pretrained = root / "pretrained"
    stage(
        "autoencoder",
        pretrained / "vae",
        lambda: train_autoencoder(root, args.ae_steps, args.seed).save_pretrained(
            pretrained / "vae"
        ),
    )
    vae = AutoencoderKL.from_pretrained(pretrained / "vae").eval()
    stage(
        "diffusion UNet",
        pretrained / "unet",
        lambda: train_diffusion_unet(root, vae, args.diffusion_steps, args.seed).save_pretrained(
            pretrained / "unet"
        ),
    )
    stage(
        "base",
        root / "base",
        lambda: write_base(root, vae, MagicBokehUNet.from_pretrained(pretrained / "unet")),
    )
    common = ["--resolution", RESOLUTION, "--batch-size", 4, "--lpips-weight", 0]
    common += ["--num-workers", 0, "--device", "cpu", "--log-every", 10, "--val-count", 16]
    common += ["--seed", args.seed, "--sample-every", 200, "--degradation-scale", SCALE, "-q"]
    stage(
        "train sr",
        root / "sr_run" / "checkpoints" / f"step-{args.sr_steps}",
        lambda: magicbokeh(
            "train",
            "sr",
            "--base",
            root / "base",
            "--data",
            root / "photos",
            "--val-data",
            root / "val_photos",
            "-o",
            root / "sr_run",
            "--steps",
            args.sr_steps,
            "--lr",
            "1e-3",
            "--rank-unet",
            8,
            "--rank-vae",
            8,
            "--checkpoint-every",
            500,
            "--val-every",
            250,
            *common,
        ),
    )
    variants = {"full": [], "no-fama": ["--no-fama"], "joint": ["--joint"]}
    for name, extra in variants.items():
        run = root / f"bokeh_{name}"
        stage(
            f"train bokeh ({name})",
            run / "checkpoints" / f"step-{args.bokeh_steps}",
            lambda run=run, extra=extra: magicbokeh(
                "train",
                "bokeh",
                "--init",
                root / "sr_run",
                "--bokeh-data",
                root / "bokeh",
                "--sr-data",
                root / "photos",
                "--val-bokeh-data",
                root / "val_bokeh",
                "--val-sr-data",
                root / "val_photos",
                "-o",
                run,
                "--steps",
                args.bokeh_steps,
                "--cycle",
                "bokeh:100,sr:50",
                "--lr-bokeh",
                "5e-4",
                "--lr-sr",
                "5e-5",
                "--checkpoint-every",
                300,
                "--val-every",
                150,
                *extra,
                *common,
            ),
        )
    exports = {}
    for name in ("sr_run", *(f"bokeh_{v}" for v in variants)):
        exports[name] = root / "export" / name
        if not exports[name].exists():
            magicbokeh("export", root / name, "-o", exports[name])
    from magicbokeh.train.run_folder import RunFolder

    init_dir = RunFolder(root / "sr_run").init_dir
    sr = evaluate_sr(
        root,
        {
            "base (untrained LoRA)": init_dir,
            "after train sr": exports["sr_run"],
            "after train bokeh": exports["bokeh_full"],
        },
        args.seed,
    )
    bokeh_models = {
        "after train sr": exports["sr_run"],
        **{f"after train bokeh ({v})": exports[f"bokeh_{v}"] for v in variants},
    }
    masks = {
        "after train sr": False,
        "after train bokeh (full)": True,
        "after train bokeh (no-fama)": False,
        "after train bokeh (joint)": True,
    }
    bokeh = evaluate_bokeh(root, bokeh_models, masks)
    sr["autoencoder reconstruction of the HR (bound)"] = autoencoder_psnr(root)
    losses = {name: loss_summary(root / name) for name in exports}
    results = {"sr_psnr_db": sr, "bokeh_psnr_db": bokeh, "losses": losses, "stage_seconds": timings}
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n| held-out SR ({RESOLUTION}² crops, ×{SCALE} degradation) | PSNR dB |\n|---|---|")
    for name, value in sr.items():
        print(f"| {name} | {value:.2f} |")
    print("\n| held-out bokeh (ray-traced GT) | PSNR dB |\n|---|---|")
    for name, value in bokeh.items():
        print(f"| {name} | {value:.2f} |")
    print(
        "\n| run | phase | train loss, first fifth | last fifth | validation loss (step: value) |"
    )
    print("|---|---|---|---|---|")
    for name, phases in losses.items():
        for phase, v in phases.items():
            train = (
                f"{v['train_first_fifth']:.4f} | {v['train_last_fifth']:.4f}"
                if v["train_first_fifth"] is not None
                else "– | –"
            )
            val = (
                f"{v['val_first'][0]}: {v['val_first'][1]:.4f} → "
                f"{v['val_last'][0]}: {v['val_last'][1]:.4f}"
                if v["val_first"] is not None
                else "–"
            )
            print(f"| {name} | {phase} | {train} | {val} |")


if __name__ == "__main__":
    sys.exit(main())
