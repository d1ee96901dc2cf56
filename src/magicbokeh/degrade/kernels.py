"""Blur kernels of the second-order degradation, their random draw, and per-sample filtering.

Kernels are square, odd-sized (7..21 taps in the released settings), float64 numpy arrays that
sum to 1, indexed ``[row, column]`` = ``[y, x]`` with the centre tap at ``size // 2``.

Families (``family`` in a kernel's parameter dict):

- ``iso`` / ``aniso``: bivariate Gaussian ``exp(-½ xᵀΣ⁻¹x)``;
- ``generalized_iso`` / ``generalized_aniso``: ``exp(-½ (xᵀΣ⁻¹x)^β)``;
- ``plateau_iso`` / ``plateau_aniso``: ``1 / (1 + (xᵀΣ⁻¹x)^β)``;
- ``sinc``: the ideal circular low-pass filter ``ω_c J₁(ω_c r) / (2π r)`` (ringing, overshoot).

``Σ = R(θ) diag(σ_x², σ_y²) R(θ)ᵀ`` with ``x`` the column offset and ``y`` the row offset in
pixels; isotropic kernels have ``σ_y = σ_x`` and ``θ = 0``.

Parameter draws (:func:`sample_blur_kernel`, :func:`sample_sinc_kernel`) are plain dicts of
Python numbers so they can be logged as JSON; :func:`make_kernel` turns one into an array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special

KERNEL_FAMILIES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
"""The six Gaussian-like families, in the order of the released ``kernel_prob`` list."""


def _offsets(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) offsets from the centre tap, each ``size×size``, in pixels."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    axis = np.arange(size, dtype=np.float64) - size // 2
    x, y = np.meshgrid(axis, axis)
    return x, y


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``xᵀΣ⁻¹x`` on the kernel grid for the rotated covariance (σ in px, θ in radians)."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    x, y = _offsets(size)
    cos, sin = math.cos(theta), math.sin(theta)
    u = cos * x + sin * y  # coordinate along the σ_x axis
    v = -sin * x + cos * y  # coordinate along the σ_y axis
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Bivariate Gaussian kernel ``exp(-½ xᵀΣ⁻¹x)``, ``size×size``, sums to 1."""
    return _normalised(np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float, beta: float
) -> np.ndarray:
    """Generalized Gaussian ``exp(-½ (xᵀΣ⁻¹x)^β)``: β < 1 peaky, β > 1 flat-topped; sums to 1."""
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalised(np.exp(-0.5 * np.power(q, beta)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float, beta: float
) -> np.ndarray:
    """Plateau kernel ``1 / (1 + (xᵀΣ⁻¹x)^β)``: flat top, heavy tails; sums to 1."""
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalised(1.0 / (1.0 + np.power(q, beta)))


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass (2-D sinc) kernel with cutoff ``omega_c`` in rad/px; sums to 1.

    ``k(r) = ω_c J₁(ω_c r) / (2π r)`` with the limit ``ω_c² / (4π)`` at ``r = 0``; it crosses
    zero near the roots of J₁ (``r ≈ 3.83/ω_c, 7.02/ω_c, …``), which gives ringing artefacts.
    """
    if not 0 < omega_c <= math.pi:
        raise ValueError(f"omega_c must be in (0, pi], got {omega_c}")
    x, y = _offsets(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = omega_c * special.j1(omega_c * r) / (2 * math.pi * r)
    kernel[size // 2, size // 2] = omega_c**2 / (4 * math.pi)
    return _normalised(kernel)


def make_kernel(params: dict) -> np.ndarray:
    """Build the kernel described by a parameter dict from :func:`sample_blur_kernel` or
    :func:`sample_sinc_kernel` (keys ``family``, ``size`` and the family's own numbers)."""
    family, size = params["family"], int(params["size"])
    if family == "sinc":
        return sinc_kernel(size, params["omega_c"])
    shape = (size, params["sigma_x"], params["sigma_y"], params["theta"])
    if family in ("iso", "aniso"):
        return gaussian_kernel(*shape)
    if family in ("generalized_iso", "generalized_aniso"):
        return generalized_gaussian_kernel(*shape, params["beta"])
    if family in ("plateau_iso", "plateau_aniso"):
        return plateau_kernel(*shape, params["beta"])
    raise ValueError(f"unknown kernel family {family!r}")


def _draw_beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    """β below or above 1 with equal odds, uniform within each side of ``beta_range``."""
    if rng.uniform() < 0.5:
        return float(rng.uniform(beta_range[0], 1.0))
    return float(rng.uniform(1.0, beta_range[1]))


def sample_sinc_kernel(
    rng: np.random.Generator,
    sizes: Sequence[int],
    omega_range: Sequence[float],
    omega_range_large: Sequence[float] | None = None,
    large_from_size: int = 13,
) -> dict:
    """Draw a sinc kernel: size uniform over ``sizes``, ``ω_c`` uniform over ``omega_range``
    (or ``omega_range_large`` when given and ``size >= large_from_size``)."""
    size = int(rng.choice(np.asarray(sizes)))
    low, high = omega_range
    if omega_range_large is not None and size >= large_from_size:
        low, high = omega_range_large
    return {"family": "sinc", "size": size, "omega_c": float(rng.uniform(low, high))}


def sample_blur_kernel(
    rng: np.random.Generator,
    *,
    sizes: Sequence[int],
    family_probs: Sequence[float],
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
    sinc_prob: float,
    sinc_omega_range: Sequence[float],
    sinc_omega_range_large: Sequence[float],
    sinc_large_from_size: int,
) -> dict:
    """Draw one blur kernel's parameters as in a Real-ESRGAN degradation stage.

    Size uniform over ``sizes``; with probability ``sinc_prob`` a sinc kernel (``ω_c`` range
    depending on the size), otherwise one of :data:`KERNEL_FAMILIES` with ``family_probs``:
    σ uniform over ``sigma_range`` (px; anisotropic kernels draw σ_x, σ_y independently and
    θ uniform over [-π, π]), β from ``betag_range`` / ``betap_range`` for generalized / plateau.
    """
    if rng.uniform() < sinc_prob:
        return sample_sinc_kernel(
            rng, sizes, sinc_omega_range, sinc_omega_range_large, sinc_large_from_size
        )
    size = int(rng.choice(np.asarray(sizes)))
    family = KERNEL_FAMILIES[int(rng.choice(len(KERNEL_FAMILIES), p=np.asarray(family_probs)))]
    sigma_x = float(rng.uniform(*sigma_range))
    if family in ("iso", "generalized_iso", "plateau_iso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(-math.pi, math.pi))
    params = {
        "family": family,
        "size": size,
        "sigma_x": sigma_x,
        "sigma_y": sigma_y,
        "theta": theta,
    }
    if family.startswith("generalized"):
        params["beta"] = _draw_beta(rng, betag_range)
    elif family.startswith("plateau"):
        params["beta"] = _draw_beta(rng, betap_range)
    return params


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each sample with its own kernel, reflect-padded so the size is unchanged.

    images: ``B×C×H×W`` float (any encoding; filtering is linear). kernels: ``B×k×k`` (k odd) or
    ``k×k`` for the whole batch. Returns ``B×C×H×W``. Sides too short to reflect ``k // 2``
    pixels are padded by edge replication instead.
    """
    b, c, h, w = images.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(b, -1, -1)
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(images).repeat_interleave(c, dim=0).unsqueeze(1)
    out = F.conv2d(padded.reshape(1, b * c, h + 2 * pad, w + 2 * pad), weight, groups=b * c)
    return out.view(b, c, h, w)
