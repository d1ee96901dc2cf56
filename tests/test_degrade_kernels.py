"""Blur kernels of the degradation: normalisation, shapes, sampling and per-sample filtering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, special

from magicbokeh.degrade.kernels import (
    KERNEL_FAMILIES,
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    make_kernel,
    plateau_kernel,
    sample_blur_kernel,
    sinc_kernel,
)

SIZES = (7, 9, 11, 13, 15, 17, 19, 21)


def _moments(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (x, y) and 2×2 covariance of a kernel seen as a distribution over pixel offsets."""
    c = kernel.shape[0] // 2
    y, x = np.mgrid[-c : c + 1, -c : c + 1].astype(np.float64)
    pts = np.stack([x.ravel(), y.ravel()])
    w = kernel.ravel()
    mean = pts @ w
    centred = pts - mean[:, None]
    return mean, (centred * w) @ centred.T


@pytest.mark.parametrize("size", [7, 13, 21])
@pytest.mark.parametrize("family", [*KERNEL_FAMILIES, "sinc"])
def test_every_family_sums_to_one(family: str, size: int) -> None:
    params = {"family": family, "size": size, "sigma_x": 2.3, "sigma_y": 0.7, "theta": 0.4}
    params |= {"beta": 1.7, "omega_c": 1.1}
    kernel = make_kernel(params)
    assert kernel.shape == (size, size)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)


def test_isotropic_gaussian_is_rotation_symmetric_and_analytic() -> None:
    kernel = gaussian_kernel(21, 2.5, 2.5, 0.0)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-15)
    np.testing.assert_allclose(kernel, np.rot90(kernel), atol=1e-15)
    y, x = np.mgrid[-10:11, -10:11]
    expected = np.exp(-(x**2 + y**2) / (2 * 2.5**2))
    np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-12)
    # Points at the same radius (3-4-5 triangle) carry the same weight.
    assert kernel[10, 15] == pytest.approx(kernel[13, 14], rel=1e-12)


@pytest.mark.parametrize("theta", [0.0, 0.5, -1.2, 2.8])
def test_anisotropic_gaussian_has_drawn_orientation_and_axes(theta: float) -> None:
    sigma_x, sigma_y = 2.5, 1.0
    kernel = gaussian_kernel(21, sigma_x, sigma_y, theta)
    mean, cov = _moments(kernel)
    np.testing.assert_allclose(mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-15)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    assert math.sqrt(eigenvalues[1]) == pytest.approx(sigma_x, rel=0.02)
    assert math.sqrt(eigenvalues[0]) == pytest.approx(sigma_y, rel=0.02)
    major = eigenvectors[:, 1]  # (x, y) direction of the long axis
    angle = math.atan2(major[1], major[0])
    difference = (angle - theta + math.pi / 2) % math.pi - math.pi / 2  # axes are ±
    assert abs(difference) < math.radians(0.5)


def test_theta_zero_spreads_sigma_x_along_columns() -> None:
    kernel = gaussian_kernel(15, 3.0, 0.8, 0.0)
    _, cov = _moments(kernel)
    assert cov[0, 0] > 5 * cov[1, 1]  # x = column offset
    assert abs(cov[0, 1]) < 1e-12


def test_generalized_gaussian_beta_controls_the_top() -> None:
    gauss = gaussian_kernel(21, 2.0, 2.0, 0.0)
    np.testing.assert_allclose(generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 1.0), gauss)
    flat = generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 4.0)
    peaky = generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 0.5)

    def falloff(k: np.ndarray) -> float:
        return k[10, 11] / k[10, 10]

    assert falloff(peaky) < falloff(gauss) < falloff(flat)
    assert falloff(flat) > 0.99  # β = 4: nearly flat top inside one σ
    # Heavier tails for β < 1: more mass beyond 2σ.
    r = np.hypot(*np.mgrid[-10:11, -10:11])
    assert peaky[r > 4].sum() > gauss[r > 4].sum() > flat[r > 4].sum()


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_plateau_is_half_height_at_one_sigma(beta: float) -> None:
    kernel = plateau_kernel(21, 3.0, 3.0, 0.0, beta)
    assert kernel[10, 13] / kernel[10, 10] == pytest.approx(0.5, rel=1e-12)
    assert kernel[13, 10] / kernel[10, 10] == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_allclose(kernel, np.rot90(kernel), atol=1e-15)


def test_plateau_beta_steepens_the_edge() -> None:
    soft = plateau_kernel(21, 3.0, 3.0, 0.0, 1.0)
    hard = plateau_kernel(21, 3.0, 3.0, 0.0, 2.0)
    # One pixel out (q < 1) the larger β is flatter; two σ out (q > 1) it has fallen further.
    assert hard[10, 11] / hard[10, 10] > soft[10, 11] / soft[10, 10]
    assert hard[10, 16] / hard[10, 10] < soft[10, 16] / soft[10, 10]


def test_sinc_has_bessel_ringing_zero_crossings() -> None:
    omega = math.pi / 2  # J1 roots 3.8317 and 7.0156 → zeros at r ≈ 2.44 and 4.47 px
    kernel = sinc_kernel(21, omega)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-15)
    np.testing.assert_allclose(kernel, np.rot90(kernel), atol=1e-15)
    profile = kernel[10, 10:]
    assert profile[0] > profile[1] > profile[2] > 0
    assert profile[3] < 0 and profile[4] < 0
    assert profile[5] > 0
    signs = np.sign(profile[:6])
    assert list(signs) == [1, 1, 1, -1, -1, 1]
    # Values follow ω J1(ω r) / (2π r) up to the normalisation.
    r = np.arange(1, 11)
    analytic = omega * special.j1(omega * r) / (2 * math.pi * r)
    unnormalised = profile[1:] * (omega**2 / (4 * math.pi)) / profile[0]
    np.testing.assert_allclose(unnormalised, analytic, rtol=1e-10, atol=1e-14)


def test_sinc_cutoff_controls_the_passband() -> None:
    wide = sinc_kernel(21, math.pi / 5)
    narrow = sinc_kernel(21, math.pi)
    assert wide[10, 10] < narrow[10, 10]  # lower cutoff = more blur


def _draw_many(n: int, **overrides) -> list[dict]:
    rng = np.random.default_rng(1234)
    settings = {
        "sizes": SIZES,
        "family_probs": (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        "sigma_range": (0.2, 3.0),
        "betag_range": (0.5, 4.0),
        "betap_range": (1.0, 2.0),
        "sinc_prob": 0.1,
        "sinc_omega_range": (math.pi / 3, math.pi),
        "sinc_omega_range_large": (math.pi / 5, math.pi),
        "sinc_large_from_size": 13,
    } | overrides
    return [sample_blur_kernel(rng, **settings) for _ in range(n)]


def _within(count: int, n: int, p: float) -> bool:
    """Frequency check at 6 standard errors (deterministic here: the seed is fixed)."""
    return abs(count / n - p) <= 6 * math.sqrt(p * (1 - p) / n)


def test_kernel_draws_follow_the_released_table() -> None:
    n = 20000
    draws = _draw_many(n)
    families = [d["family"] for d in draws]
    assert _within(families.count("sinc"), n, 0.1)
    for family, p in zip(KERNEL_FAMILIES, (0.45, 0.25, 0.12, 0.03, 0.12, 0.03), strict=True):
        assert _within(families.count(family), n, 0.9 * p), family
    sizes = [d["size"] for d in draws]
    assert set(sizes) == set(SIZES)
    for size in SIZES:
        assert _within(sizes.count(size), n, 1 / 8)

    gaussians = [d for d in draws if d["family"] != "sinc"]
    sx = np.array([d["sigma_x"] for d in gaussians])
    assert 0.2 <= sx.min() < 0.21 and 2.99 < sx.max() <= 3.0
    assert abs(sx.mean() - 1.6) < 0.03
    for d in gaussians:
        if d["family"] in ("iso", "generalized_iso", "plateau_iso"):
            assert d["sigma_y"] == d["sigma_x"] and d["theta"] == 0.0
    aniso = [d for d in gaussians if d["family"].endswith("aniso")]
    theta = np.array([d["theta"] for d in aniso])
    assert -math.pi <= theta.min() < -3.0 and 3.0 < theta.max() <= math.pi
    sy = np.array([d["sigma_y"] for d in aniso])
    assert 0.2 <= sy.min() < 0.25 and 2.95 < sy.max() <= 3.0

    betag = np.array([d["beta"] for d in gaussians if d["family"].startswith("generalized")])
    assert 0.5 <= betag.min() < 0.55 and 3.9 < betag.max() <= 4.0
    assert _within(int((betag < 1).sum()), len(betag), 0.5)
    betap = np.array([d["beta"] for d in gaussians if d["family"].startswith("plateau")])
    assert betap.min() >= 1.0 and 1.95 < betap.max() <= 2.0
    assert all("beta" not in d for d in gaussians if d["family"] in ("iso", "aniso"))

    sincs = [d for d in draws if d["family"] == "sinc"]
    small = np.array([d["omega_c"] for d in sincs if d["size"] < 13])
    large = np.array([d["omega_c"] for d in sincs if d["size"] >= 13])
    assert math.pi / 3 <= small.min() < math.pi / 3 + 0.05 and small.max() <= math.pi
    assert math.pi / 5 <= large.min() < math.pi / 5 + 0.05 and large.max() <= math.pi


def test_filter2d_matches_reflect_correlation_per_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 24, 31, generator=gen, dtype=torch.float64)
    kernels = torch.stack(
        [
            torch.from_numpy(gaussian_kernel(7, 2.0, 0.7, 0.6)),
            torch.from_numpy(sinc_kernel(7, 1.3)),
        ]
    )
    out = filter2d(images, kernels)
    assert out.shape == images.shape
    for b in range(2):
        for c in range(3):
            expected = ndimage.correlate(images[b, c].numpy(), kernels[b].numpy(), mode="mirror")
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-12)


def test_filter2d_keeps_flat_images_and_handles_tiny_ones() -> None:
    flat = torch.full((1, 3, 5, 6), 0.3)
    kernel = torch.from_numpy(gaussian_kernel(21, 3.0, 3.0, 0.0))
    out = filter2d(flat, kernel)  # 10-px padding on a 5-px side falls back to replication
    torch.testing.assert_close(out, flat)


def test_filter2d_is_differentiable() -> None:
    images = torch.rand(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    kernel = torch.from_numpy(gaussian_kernel(5, 1.0, 1.0, 0.0))
    assert torch.autograd.gradcheck(lambda x: filter2d(x, kernel), (images,))
