"""The second-order degradation pipeline: sizes, range, determinism, parameter distributions."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magicbokeh.degrade import (
    DegradationConfig,
    apply_degradation,
    degrade,
    minimum_hr_size,
    sample_params,
)
from magicbokeh.degrade.pipeline import FINAL_ORDERS
from magicbokeh.errors import MagicBokehError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _photo(batch: int = 2, height: int = 96, width: int = 128) -> torch.Tensor:
    """Smooth random colour fields with some edges: a stand-in for a photo, sRGB in [0, 1]."""
    coarse = torch.rand(batch, 3, height // 16, width // 16, generator=_gen(42))
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return image.clamp(0, 1)


def test_output_size_range_and_levels() -> None:
    hr = _photo()
    lq, params = degrade(hr, generator=_gen(0), return_params=True)
    assert lq.shape == (2, 3, 24, 32) and lq.dtype == torch.float32
    assert lq.min() >= 0 and lq.max() <= 1
    torch.testing.assert_close(lq * 255, (lq * 255).round(), rtol=0, atol=1e-4)
    assert len(params) == 2 and params[0] != params[1]


def test_resize_back_gives_the_hr_size() -> None:
    hr = _photo(1, 70, 66)
    assert degrade(hr, generator=_gen(0)).shape == (1, 3, 17, 16)
    assert degrade(hr, generator=_gen(0), resize_back=True).shape == (1, 3, 70, 66)
    assert degrade(hr, generator=_gen(0), scale=2).shape == (1, 3, 35, 33)


def test_float64_stays_float64() -> None:
    lq = degrade(_photo(1).double(), generator=_gen(1))
    assert lq.dtype == torch.float64 and lq.min() >= 0 and lq.max() <= 1


def test_same_seed_same_image_different_seed_different_image() -> None:
    hr = _photo()
    a, pa = degrade(hr, generator=_gen(7), return_params=True)
    b, pb = degrade(hr, generator=_gen(7), return_params=True)
    c = degrade(hr, generator=_gen(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert pa == pb
    assert not torch.equal(a, c)


def test_content_survives_the_degradation() -> None:
    """A horizontal ramp stays a horizontal ramp: no transposition, no flip, no colour swap."""
    x = torch.linspace(0.1, 0.9, 128).view(1, 1, 1, 128).expand(1, 1, 128, 128)
    hr = torch.cat([x, 1 - x, torch.full_like(x, 0.5)], dim=1).expand(4, 3, 128, 128)
    lq = degrade(hr.contiguous(), generator=_gen(3))
    reference = F.interpolate(hr, size=(32, 32), mode="area")
    for sample in range(4):
        for c in range(2):
            corr = np.corrcoef(lq[sample, c].flatten(), reference[sample, c].flatten())[0, 1]
            assert corr > 0.8
        assert (lq[sample, 0, :, -4:].mean() - lq[sample, 0, :, :4].mean()) > 0.4


def test_every_branch_runs_on_small_images() -> None:
    """Many parameter draws (all families, modes, orders, skips) on the smallest sizes."""
    config = DegradationConfig()
    rng = np.random.default_rng(11)
    draws = [sample_params(rng, config) for _ in range(60)]
    seen = Counter()
    for p in draws:
        seen[p["kernel1"]["family"]] += 1
        seen[p["resize1"]["mode"]] += 1
        seen[p["final_order"]] += 1
        seen["skip2" if p["kernel2"] is None else "blur2"] += 1
        seen["nosinc" if p["final_sinc"] is None else "sinc"] += 1
    assert {
        "area",
        "bilinear",
        "bicubic",
        "skip2",
        "blur2",
        "sinc",
        "nosinc",
        *FINAL_ORDERS,
    } <= set(seen)
    side = minimum_hr_size(4, config)
    hr = torch.rand(len(draws), 3, side, side + 3, generator=_gen(0))
    lq = apply_degradation(hr, draws, generator=_gen(1), scale=4, resize_back=True)
    assert lq.shape == hr.shape and torch.isfinite(lq).all()
    assert lq.min() >= 0 and lq.max() <= 1


def test_input_checks_are_user_errors() -> None:
    with pytest.raises(MagicBokehError, match="B×3×H×W"):
        degrade(torch.rand(3, 64, 64), generator=_gen(0))
    with pytest.raises(MagicBokehError, match="float"):
        degrade(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), generator=_gen(0))
    with pytest.raises(MagicBokehError, match="at least"):
        degrade(torch.rand(1, 3, 8, 64), generator=_gen(0))
    with pytest.raises(MagicBokehError, match="scale"):
        degrade(torch.rand(1, 3, 64, 64), generator=_gen(0), scale=0)
    with pytest.raises(MagicBokehError, match="parameter sets"):
        apply_degradation(torch.rand(2, 3, 64, 64), [{}], generator=_gen(0))


def test_config_defaults_are_the_released_table() -> None:
    c = DegradationConfig()
    assert c.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
    assert c.kernel_prob == c.kernel_prob2 == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert (c.blur_sigma, c.blur_sigma2) == ((0.2, 3.0), (0.2, 1.5))
    assert c.betag_range == c.betag_range2 == (0.5, 4.0)
    assert c.betap_range == c.betap_range2 == (1.0, 2.0)
    assert c.sinc_prob == c.sinc_prob2 == 0.1
    assert (c.second_blur_prob, c.final_sinc_prob) == (0.8, 0.8)
    assert (c.resize_prob, c.resize_range) == ((0.2, 0.7, 0.1), (0.15, 1.5))
    assert (c.resize_prob2, c.resize_range2) == ((0.3, 0.4, 0.3), (0.3, 1.2))
    assert (c.gaussian_noise_prob, c.gaussian_noise_prob2) == (0.5, 0.5)
    assert (c.noise_range, c.noise_range2) == ((1.0, 30.0), (1.0, 25.0))
    assert (c.poisson_scale_range, c.poisson_scale_range2) == ((0.05, 3.0), (0.05, 2.5))
    assert (c.gray_noise_prob, c.gray_noise_prob2) == (0.4, 0.4)
    assert c.jpeg_range == c.jpeg_range2 == (30, 95)
    assert DegradationConfig.from_dict(c.to_dict()) == c


def test_config_rejects_inconsistent_numbers() -> None:
    with pytest.raises(MagicBokehError):
        DegradationConfig(kernel_prob=(0.5, 0.5, 0.1, 0.0, 0.0, 0.0))
    with pytest.raises(MagicBokehError):
        DegradationConfig(resize_range=(1.2, 1.5))
    with pytest.raises(MagicBokehError):
        DegradationConfig(jpeg_range=(30, 100))
    with pytest.raises(MagicBokehError):
        DegradationConfig(resize_modes=("nearest",))
    with pytest.raises(MagicBokehError):
        DegradationConfig.from_dict({"not_a_setting": 1})


def _freq_ok(values: list, expected: dict) -> bool:
    n = len(values)
    counts = Counter(values)
    return set(counts) <= set(expected) and all(
        abs(counts[k] / n - p) <= 6 * math.sqrt(p * (1 - p) / n) for k, p in expected.items()
    )


def _span(values, low: float, high: float, slack: float) -> bool:
    """All values inside [low, high], and both ends approached within ``slack``."""
    values = np.asarray(values, dtype=np.float64)
    return low <= values.min() <= low + slack and high - slack <= values.max() <= high


def test_parameter_distributions_match_the_table() -> None:
    rng = np.random.default_rng(2024)
    n = 20000
    draws = [sample_params(rng) for _ in range(n)]
    third = {"area": 1 / 3, "bilinear": 1 / 3, "bicubic": 1 / 3}

    for key, probs, (low, high) in (
        ("resize1", (0.2, 0.7, 0.1), (0.15, 1.5)),
        ("resize2", (0.3, 0.4, 0.3), (0.3, 1.2)),
    ):
        resizes = [d[key] for d in draws]
        directions = [r["direction"] for r in resizes]
        assert _freq_ok(directions, dict(zip(("up", "down", "keep"), probs, strict=True)))
        assert _freq_ok([r["mode"] for r in resizes], third)
        assert _span([r["scale"] for r in resizes if r["direction"] == "up"], 1.0, high, 0.01)
        assert _span([r["scale"] for r in resizes if r["direction"] == "down"], low, 1.0, 0.01)
        assert all(r["scale"] == 1.0 for r in resizes if r["direction"] == "keep")

    for key, sigma_high, poisson_high in (("noise1", 30.0, 3.0), ("noise2", 25.0, 2.5)):
        noises = [d[key] for d in draws]
        assert _freq_ok([x["type"] for x in noises], {"gaussian": 0.5, "poisson": 0.5})
        assert _freq_ok([x["gray"] for x in noises], {True: 0.4, False: 0.6})
        sigmas = [x["sigma"] for x in noises if x["type"] == "gaussian"]
        assert _span(sigmas, 1.0, sigma_high, 0.05)
        assert _span(
            [x["scale"] for x in noises if x["type"] == "poisson"], 0.05, poisson_high, 0.01
        )

    for key in ("jpeg1", "jpeg2"):
        qualities = [d[key] for d in draws]
        assert all(isinstance(q, int) for q in qualities)
        assert min(qualities) == 30 and max(qualities) == 95
        assert _freq_ok([q < 63 for q in qualities], {True: 33 / 66, False: 33 / 66})

    assert _freq_ok([d["kernel2"] is None for d in draws], {True: 0.2, False: 0.8})
    for key, sigma_high in (("kernel1", 3.0), ("kernel2", 1.5)):
        kernels = [d[key] for d in draws if d[key] is not None]
        assert _freq_ok([k["family"] == "sinc" for k in kernels], {True: 0.1, False: 0.9})
        gaussian = [k for k in kernels if k["family"] != "sinc"]
        family_probs = dict(
            zip(
                (
                    "iso",
                    "aniso",
                    "generalized_iso",
                    "generalized_aniso",
                    "plateau_iso",
                    "plateau_aniso",
                ),
                (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                strict=True,
            )
        )
        assert _freq_ok([k["family"] for k in gaussian], family_probs)
        assert _span([k["sigma_x"] for k in gaussian], 0.2, sigma_high, 0.02)
        assert _freq_ok([k["size"] for k in kernels], {s: 1 / 8 for s in range(7, 22, 2)})

    sincs = [d["final_sinc"] for d in draws]
    assert _freq_ok([s is None for s in sincs], {True: 0.2, False: 0.8})
    omegas = [s["omega_c"] for s in sincs if s is not None]
    assert _span(omegas, math.pi / 3, math.pi, 0.01)
    assert _freq_ok(
        [s["size"] for s in sincs if s is not None], {s: 1 / 8 for s in range(7, 22, 2)}
    )
    assert _freq_ok([d["final_order"] for d in draws], dict.fromkeys(FINAL_ORDERS, 0.5))
    assert _freq_ok([d["final_resize_mode"] for d in draws], third)
    assert _freq_ok([d["resize_back_mode"] for d in draws], third)


def test_params_follow_a_custom_config() -> None:
    config = DegradationConfig(
        second_blur_prob=0.0,
        final_sinc_prob=1.0,
        jpeg_range=(90, 90),
        resize_back_modes=("bicubic",),
    )
    rng = np.random.default_rng(0)
    draws = [sample_params(rng, config) for _ in range(200)]
    assert all(d["kernel2"] is None for d in draws)
    assert all(d["final_sinc"] is not None for d in draws)
    assert all(d["jpeg1"] == 90 for d in draws)
    assert all(d["resize_back_mode"] == "bicubic" for d in draws)
