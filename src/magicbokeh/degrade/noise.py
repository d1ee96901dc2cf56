"""Additive Gaussian and signal-dependent Poisson noise, per sample, colour or gray.

Images are ``B×C×H×W`` float, sRGB-encoded in [0, 1] (the noise is added to encoded values,
as in Real-ESRGAN). Noise is drawn from an explicit ``torch.Generator`` on that generator's
device and moved to the images' device, so one seed gives the same noise on one device.

"Gray" noise is a single noise plane added equally to every channel (luminance-only noise);
colour noise is drawn independently per channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for the gray plane of Poisson noise


def _per_sample(values: float | Sequence, batch: int, name: str) -> list:
    if isinstance(values, (int, float, bool)):
        return [values] * batch
    values = list(values)
    if len(values) != batch:
        raise ValueError(f"{name} has {len(values)} entries for a batch of {batch}")
    return values


def add_gaussian_noise(
    images: torch.Tensor,
    sigma: float | Sequence[float],
    gray: bool | Sequence[bool],
    *,
    generator: torch.Generator,
    clip: bool = True,
) -> torch.Tensor:
    """Add zero-mean Gaussian noise of std ``sigma / 255`` (``sigma`` in 8-bit code values).

    images: ``B×C×H×W`` in [0, 1]; ``sigma`` and ``gray`` are one value or one per sample.
    Returns the noisy images, clipped to [0, 1] when ``clip``.
    """
    b, c, h, w = images.shape
    sigmas = _per_sample(sigma, b, "sigma")
    grays = _per_sample(gray, b, "gray")
    out = []
    for i in range(b):
        channels = 1 if grays[i] else c
        noise = torch.randn(
            (1, channels, h, w), generator=generator, device=generator.device, dtype=torch.float32
        )
        noise = noise.to(images) * (float(sigmas[i]) / 255.0)
        out.append(images[i : i + 1] + noise)
    result = torch.cat(out)
    return result.clamp(0.0, 1.0) if clip else result


def _poisson_levels(codes: torch.Tensor) -> float:
    """Number of Poisson levels: the count of distinct 8-bit codes rounded up to a power of 2."""
    distinct = int((torch.bincount(codes.flatten(), minlength=256) > 0).sum())
    return float(2 ** math.ceil(math.log2(distinct)))


def add_poisson_noise(
    images: torch.Tensor,
    scale: float | Sequence[float],
    gray: bool | Sequence[bool],
    *,
    generator: torch.Generator,
    clip: bool = True,
) -> torch.Tensor:
    """Add signal-dependent (shot) noise: ``scale · (Poisson(v·L)/L − v)``.

    ``v`` is the image (or its BT.601 gray plane for gray noise) rounded to 8 bits and ``L`` the
    number of distinct 8-bit values in it rounded up to a power of two, so the noise variance
    is ``scale² · v / L``: it grows linearly with the signal. images: ``B×C×H×W`` in [0, 1];
    ``scale`` and ``gray`` are one value or one per sample. Clipped to [0, 1] when ``clip``.
    """
    b, c, h, w = images.shape
    scales = _per_sample(scale, b, "scale")
    grays = _per_sample(gray, b, "gray")
    out = []
    for i in range(b):
        sample = images[i : i + 1]
        if grays[i]:
            luma = torch.tensor(_LUMA, dtype=sample.dtype, device=sample.device)
            sample_for_noise = (sample * luma.view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            sample_for_noise = sample
        codes = (sample_for_noise * 255.0).round().clamp(0, 255).to(torch.uint8)
        quantized = codes.to(sample.dtype) / 255.0
        levels = _poisson_levels(codes)
        rate = (quantized * levels).to(device=generator.device, dtype=torch.float32)
        counts = torch.poisson(rate, generator=generator).to(sample)
        noise = (counts / levels - quantized) * float(scales[i])
        out.append(sample + noise)
    result = torch.cat(out)
    return result.clamp(0.0, 1.0) if clip else result


def sample_noise(
    rng: np.random.Generator,
    *,
    gaussian_prob: float,
    sigma_range: Sequence[float],
    poisson_scale_range: Sequence[float],
    gray_prob: float,
) -> dict:
    """Draw one stage's noise: Gaussian with ``gaussian_prob`` (σ uniform over ``sigma_range``,
    8-bit units), else Poisson (scale uniform over ``poisson_scale_range``); gray with
    ``gray_prob``. Returns ``{"type", "sigma" | "scale", "gray"}``."""
    if rng.uniform() < gaussian_prob:
        params = {"type": "gaussian", "sigma": float(rng.uniform(*sigma_range))}
    else:
        params = {"type": "poisson", "scale": float(rng.uniform(*poisson_scale_range))}
    params["gray"] = bool(rng.uniform() < gray_prob)
    return params


def apply_noise(
    images: torch.Tensor, params: Sequence[dict], *, generator: torch.Generator
) -> torch.Tensor:
    """Add per-sample noise described by :func:`sample_noise` dicts; clipped to [0, 1].

    images: ``B×C×H×W`` in [0, 1] with ``len(params) == B``.
    """
    out = []
    for i, p in enumerate(params):
        sample = images[i : i + 1]
        if p["type"] == "gaussian":
            out.append(add_gaussian_noise(sample, p["sigma"], p["gray"], generator=generator))
        elif p["type"] == "poisson":
            out.append(add_poisson_noise(sample, p["scale"], p["gray"], generator=generator))
        else:
            raise ValueError(f"unknown noise type {p['type']!r}")
    return torch.cat(out)
