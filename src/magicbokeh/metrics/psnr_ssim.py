"""PSNR and SSIM in the two conventions evaluation reports.

Inputs are ``B×3×H×W`` sRGB-encoded images with values in [0, 1] (any float dtype); the
results are ``B`` float64 values. ``crop_border`` removes that many pixels from every side
first.

**RGB convention** (the default): both images are rounded to 8-bit codes (0..255, the values
a saved PNG holds) and compared on all three RGB channels over the whole image, in float64.

- PSNR = 10·log10(255² / MSE), MSE over all pixels and channels; identical images give +inf.
- SSIM as defined by Wang et al. (2004): an 11-tap Gaussian window with σ = 1.5 (normalised to
  sum 1), C1 = (0.01·255)², C2 = (0.03·255)², computed per channel on the region where the
  window fits inside the image (no padding), averaged over that map and then over the three
  channels. This is ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=...)``.

**Y convention** (``y_channel=True``): what pyiqa's ``psnr`` and ``ssim`` metrics compute with
``test_y_channel=True, color_space="ycbcr"``, the setting OSEDiff, S3Diff and most one-step
Real-ISR papers report.

- Y = (65.481·R + 128.553·G + 24.966·B + 16) / 255 (ITU-R BT.601, inputs in [0, 1], computed
  in float32 as pyiqa does).
- PSNR = 10·log10(1 / (MSE + 1e-8)) on Y in [0, 1], not rounded; identical images give 80 dB.
- SSIM on round(255·Y) with the same window and constants as above, except that the contrast-
  structure term is clamped at 0 (pyiqa's ``relu``) before the product.
"""

from __future__ import annotations

import torch

from magicbokeh.errors import MagicBokehError

__all__ = ["psnr", "quantize_8bit", "rgb_to_y", "ssim"]

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
#: BT.601 RGB → Y weights (for [0, 1] inputs, giving Y in 16..235) and offset, as pyiqa uses.
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
Y_PSNR_EPS = 1e-8


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """8-bit codes (0..255, float64) of images in [0, 1]: clip, scale, round half to even."""
    return torch.round(images.double().clamp(0.0, 1.0) * 255.0)


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``B×1×H×W`` in [0, 1] of ``B×3×H×W`` RGB in [0, 1], in float32 (pyiqa's
    ``to_y_channel(x, 1.0, "ycbcr")``)."""
    weights = torch.tensor(Y_WEIGHTS, dtype=torch.float32, device=images.device)
    y = torch.matmul(images.float().permute(0, 2, 3, 1), weights)[:, None] + Y_OFFSET
    return y / 255.0


def _prepare(x: torch.Tensor, y: torch.Tensor, crop_border: int) -> tuple:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
        raise MagicBokehError(
            f"PSNR/SSIM need two B×3×H×W images of one size, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if crop_border < 0:
        raise MagicBokehError(f"the crop border must be ≥ 0, got {crop_border}")
    if crop_border:
        if min(x.shape[-2:]) <= 2 * crop_border:
            raise MagicBokehError(
                f"cannot crop {crop_border} px from each side of a {x.shape[-1]}×{x.shape[-2]} "
                "image"
            )
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return x, y


def psnr(
    x: torch.Tensor, y: torch.Tensor, *, y_channel: bool = False, crop_border: int = 0
) -> torch.Tensor:
    """PSNR in dB between ``x`` and ``y`` (``B×3×H×W`` in [0, 1]); see the module doc."""
    x, y = _prepare(x, y, crop_border)
    if y_channel:
        mse = ((rgb_to_y(x).double() - rgb_to_y(y).double()) ** 2).mean(dim=(1, 2, 3))
        return 10.0 * torch.log10(1.0 / (mse + Y_PSNR_EPS))
    mse = ((quantize_8bit(x) - quantize_8bit(y)) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)  # +inf where mse is 0


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> torch.Tensor:
    """The 1-D normalised Gaussian (float64) of ``size`` taps; SSIM's 2-D window is its outer
    product."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def _filter_valid(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of ``B×C×H×W`` over the region where the window fits
    (weighted sums of shifted views: faster than a float64 convolution on the CPU)."""
    n = taps.numel()
    weights = taps.tolist()
    width = images.shape[-1] - n + 1
    rows = images[..., :width] * weights[0]
    for i in range(1, n):
        rows.add_(images[..., i : i + width], alpha=weights[i])
    height = images.shape[-2] - n + 1
    out = rows[..., :height, :] * weights[0]
    for i in range(1, n):
        out.add_(rows[..., i : i + height, :], alpha=weights[i])
    return out


def ssim(
    x: torch.Tensor, y: torch.Tensor, *, y_channel: bool = False, crop_border: int = 0
) -> torch.Tensor:
    """SSIM between ``x`` and ``y`` (``B×3×H×W`` in [0, 1]); see the module doc.

    Images need at least 11×11 pixels (after cropping).
    """
    x, y = _prepare(x, y, crop_border)
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise MagicBokehError(
            f"SSIM needs images of at least {WINDOW_SIZE}×{WINDOW_SIZE} px, got "
            f"{x.shape[-1]}×{x.shape[-2]}"
        )
    if y_channel:
        a = torch.round(rgb_to_y(x) * 255.0).double()
        b = torch.round(rgb_to_y(y) * 255.0).double()
    else:
        a, b = quantize_8bit(x), quantize_8bit(y)
    taps = gaussian_window().to(a.device)
    c1, c2 = (K1 * 255.0) ** 2, (K2 * 255.0) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
    if y_channel:
        contrast_structure = contrast_structure.clamp(min=0.0)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * contrast_structure).mean(dim=(1, 2, 3))
