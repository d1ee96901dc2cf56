"""Tiny evaluation folders for tests: bokeh pairs whose targets the physical engine made (so
the right settings reproduce them exactly), SR pairs, EBB!-layout folders, LPIPS weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from magicbokeh.io import save_image
from magicbokeh.optics import render_physical

K_TRUE = 6.0


def scene(index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sRGB image on 8-bit levels, disparity in [0, 1] with min 0 and max 1, subject mask)."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [
            0.5 + 0.35 * np.sin(xx / (2.5 + index + c) + c) * np.cos(yy / (3.0 + c))
            for c in range(3)
        ],
        axis=-1,
    )
    rgb = np.rint(np.clip(rgb + 0.04 * rng.standard_normal(rgb.shape), 0, 1) * 255) / 255
    disparity = 0.6 * yy / (height - 1)
    subject = ((xx - width / 2) / (width / 5)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2 < 1
    disparity[subject] = 1.0
    return rgb.astype(np.float32), disparity.astype(np.float32), subject


def render(rgb: np.ndarray, disparity: np.ndarray, k: float = K_TRUE) -> np.ndarray:
    """The physical engine focused on the subject (d_f = 1)."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    out = render_physical(image, torch.from_numpy(disparity)[None, None], 1.0, k)
    return out[0].permute(1, 2, 0).numpy()


def bokeh_set(
    root: Path,
    n: int = 3,
    size: tuple[int, int] = (48, 72),
    *,
    ebb: bool = False,
    depth: bool = True,
    focus: bool = True,
    scale: int = 1,
) -> Path:
    """``root`` with ``input/``, ``target/`` (PNG, rendered at K_TRUE), ``depth/`` (.npy) and
    ``focus/`` masks; ``ebb`` uses the EBB! names (``original/``, ``bokeh/``); ``scale`` > 1
    makes inputs that much smaller (area) than the targets."""
    names = ("original", "bokeh") if ebb else ("input", "target")
    for i in range(n):
        rgb, disparity, subject = scene(i, *size)
        small = rgb
        if scale > 1:
            small = rgb.reshape(size[0] // scale, scale, size[1] // scale, scale, 3).mean((1, 3))
        save_image(root / names[0] / f"{i}.png", small)
        save_image(root / names[1] / f"{i}.png", render(rgb, disparity))
        if depth:
            (root / "depth").mkdir(exist_ok=True)
            np.save(root / "depth" / f"{i}.npy", disparity)
        if focus:
            save_image(root / "focus" / f"{i}.png", np.repeat(subject[..., None], 3, 2) * 1.0)
    return root


def sr_set(root: Path, n: int = 3, size: tuple[int, int] = (48, 64), scale: int = 2) -> Path:
    """``root/LR/<i>_LR2.png`` and ``root/HR/<i>_HR.png`` (RealSR-style names)."""
    for i in range(n):
        rgb = scene(i, *size)[0]
        small = rgb.reshape(size[0] // scale, scale, size[1] // scale, scale, 3).mean((1, 3))
        save_image(root / "LR" / f"{i}_LR{scale}.png", small)
        save_image(root / "HR" / f"{i}_HR.png", rgb)
    return root


def install_random_lpips(home: Path, net: str = "alex") -> Path:
    """Random LPIPS weights under the installed names in ``home/lpips`` (same compute as the
    real ones; the values mean nothing)."""
    from magicbokeh.metrics.lpips import LPIPS
    from magicbokeh.metrics.lpips_weights import LPIPS_ASSETS

    torch.manual_seed(0)
    model = LPIPS(net)
    for head in model.heads:
        head.weight.data.uniform_(0, 1)
    folder = home / "lpips"
    folder.mkdir(parents=True, exist_ok=True)
    backbone, heads = LPIPS_ASSETS[net]
    torch.save(
        {f"features.{k}": v for k, v in model.features.state_dict().items()},
        folder / backbone.name,
    )
    torch.save(
        {f"lin{k}.model.1.weight": h.weight.data for k, h in enumerate(model.heads)},
        folder / heads.name,
    )
    return folder
