"""Colour fixes: give the network's output the colours of its input.

Both take ``target`` (the restored image) and ``source`` (the input photo), B×3×H×W sRGB-encoded
in [0, 1], and return the corrected target clamped to [0, 1].

- :func:`adain_color_fix` (released): per image and channel, shift and scale the target to the
  source's mean and standard deviation (std = √(unbiased variance + eps)).
- :func:`wavelet_color_fix`: keep the target's high frequencies and take the low-frequency part
  from the source. The low-frequency part comes from a cascade of ``levels`` 3×3 binomial blurs
  ([1, 2, 1]ᵀ[1, 2, 1]/16, replicate padding) with dilation 1, 2, 4, …, 2^(levels−1) (an à trous
  wavelet decomposition); the high frequencies are what the cascade removes. As the blur is
  linear, target_high + source_low = target + low(source − target).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from magicbokeh.errors import MagicBokehError

__all__ = [
    "COLOR_FIXES",
    "ColorFix",
    "adain_color_fix",
    "apply_color_fix",
    "wavelet_color_fix",
    "wavelet_low_frequency",
]

ColorFix = Literal["adain", "wavelet", "none"]
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")


def adain_color_fix(target: torch.Tensor, source: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``target`` the per-channel mean and std of ``source`` (both B×C×H×W), clamp to [0, 1].

    std = √(unbiased variance + eps), over all pixels of each channel of each image (the
    biased variance for a one-pixel image, whose unbiased variance is undefined).
    """

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        variance = flat.var(dim=2, correction=1 if flat.shape[2] > 1 else 0)
        return flat.mean(dim=2)[..., None, None], (variance + eps).sqrt()[..., None, None]

    t_mean, t_std = stats(target)
    s_mean, s_std = stats(source)
    return ((target - t_mean) / t_std * s_std + s_mean).clamp(0, 1)


def _binomial_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3×3 [1, 2, 1]ᵀ[1, 2, 1]/16 blur with the given dilation, replicate padding, per channel."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, dilation=dilation, groups=x.shape[1])


def wavelet_low_frequency(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Low-frequency residual of a ``levels``-level à trous decomposition of B×C×H×W ``x``."""
    for level in range(levels):
        x = _binomial_blur(x, 2**level)
    return x


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Target's high frequencies + source's low frequencies (B×C×H×W in [0, 1]), clamped."""
    if target.shape != source.shape:
        raise MagicBokehError(
            f"colour fix needs equal sizes, got {tuple(target.shape)} and {tuple(source.shape)}"
        )
    source = source.to(target)
    return (target + wavelet_low_frequency(source - target, levels)).clamp(0, 1)


def apply_color_fix(target: torch.Tensor, source: torch.Tensor, method: str) -> torch.Tensor:
    """Apply the colour fix named ``method`` ("adain", "wavelet" or "none", which only clamps)."""
    if method == "adain":
        return adain_color_fix(target, source.to(target))
    if method == "wavelet":
        return wavelet_color_fix(target, source)
    if method == "none":
        return target.clamp(0, 1)
    raise MagicBokehError(f"unknown colour fix {method!r}; use one of {', '.join(COLOR_FIXES)}")
