"""PSNR and SSIM: constructed cases, scikit-image (RGB convention) and pyiqa (Y convention).

The pyiqa numbers below were computed with pyiqa 0.1.16, torch 2.14.1 and torchvision 0.29.1
on the PNG pairs in tests/data/iqa (``pyiqa.create_metric("psnr" | "ssim",
test_y_channel=True, color_space="ycbcr", crop_border=c)(x_path, y_path)``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from magicbokeh.errors import MagicBokehError
from magicbokeh.metrics.psnr_ssim import psnr, quantize_8bit, ssim

DATA = Path(__file__).parent / "data" / "iqa"

#: (distorted, reference, crop border, pyiqa psnr Y, pyiqa ssim Y)
PYIQA_Y = [
    ("astronaut_jpeg20", "astronaut", 0, 32.40085220336914, 0.9097676790962264),
    ("astronaut_noise12", "astronaut", 0, 31.657184600830078, 0.8227185570568378),
    ("astronaut_negative", "astronaut", 0, 6.6689300537109375, 0.06642251541022066),
    ("ramp_shift1", "ramp", 0, 27.802879333496094, 0.9477848695673438),
    ("astronaut_jpeg20", "astronaut", 4, 32.742008209228516, 0.910672275786223),
]


def load(name: str) -> torch.Tensor:
    """A test PNG as pyiqa reads it: ``1×3×H×W`` float32, 8-bit values / 255."""
    array = np.array(Image.open(DATA / f"{name}.png").convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize(("x", "y", "border", "ref_psnr", "ref_ssim"), PYIQA_Y)
def test_y_convention_reproduces_pyiqa(x, y, border, ref_psnr, ref_ssim) -> None:
    a, b = load(x), load(y)
    assert abs(psnr(a, b, y_channel=True, crop_border=border).item() - ref_psnr) < 1e-4
    assert abs(ssim(a, b, y_channel=True, crop_border=border).item() - ref_ssim) < 1e-4


def test_the_y_ssim_clamp_matters_on_anticorrelated_images() -> None:
    """The negative image has negative local covariance: pyiqa's clamp changes SSIM there."""
    a, b = load("astronaut_negative"), load("astronaut")
    clamped = ssim(a, b, y_channel=True).item()
    rgb = ssim(a, b).item()
    assert clamped > 0.05 and rgb < 0.0


@pytest.mark.parametrize(("x", "y"), [("astronaut_jpeg20", "astronaut"), ("ramp_shift1", "ramp")])
def test_rgb_convention_equals_scikit_image(x: str, y: str) -> None:
    a, b = load(x), load(y)
    u8 = [np.rint(t[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for t in (a, b)]
    expected_psnr = peak_signal_noise_ratio(u8[1], u8[0], data_range=255)
    expected_ssim = structural_similarity(
        u8[0],
        u8[1],
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2,
    )
    assert psnr(a, b).item() == pytest.approx(expected_psnr, abs=1e-9)
    assert ssim(a, b).item() == pytest.approx(expected_ssim, abs=1e-9)


def test_identical_images_score_perfectly() -> None:
    a = load("astronaut")
    assert psnr(a, a).item() == math.inf and ssim(a, a).item() == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, a, y_channel=True).item() == pytest.approx(80.0)
    assert ssim(a, a, y_channel=True).item() == pytest.approx(1.0, abs=1e-12)


def test_a_known_offset_gives_a_known_psnr() -> None:
    """Every code value one level up: MSE = 1, PSNR = 20·log10(255) dB."""
    a = torch.full((2, 3, 20, 30), 100 / 255)
    b = a + 1 / 255
    assert psnr(a, b).tolist() == pytest.approx([20 * math.log10(255)] * 2, abs=1e-9)
    quarter = a.clone()
    quarter[..., :10, :15] += 4 / 255  # a quarter of the pixels off by 4: MSE = 4
    assert psnr(a, quarter)[0].item() == pytest.approx(10 * math.log10(255**2 / 4), abs=1e-9)


def test_values_are_rounded_to_8_bits_first() -> None:
    a = torch.full((1, 3, 16, 16), 0.5)
    assert torch.equal(quantize_8bit(a), torch.full_like(a, 128.0, dtype=torch.float64))
    assert psnr(a, a + 0.001).item() == math.inf  # same 8-bit code


def test_crop_border_removes_the_edges() -> None:
    a = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[..., :3, :] = 0.0
    assert psnr(a, b, crop_border=3).item() == math.inf
    assert psnr(a, b).item() < 30


@pytest.mark.parametrize(
    ("x", "y", "options", "match"),
    [
        ((1, 3, 16, 16), (1, 3, 16, 17), {}, "one size"),
        ((1, 1, 16, 16), (1, 1, 16, 16), {}, "B×3×H×W"),
        ((1, 3, 16, 16), (1, 3, 16, 16), {"crop_border": 8}, "cannot crop"),
        ((1, 3, 16, 16), (1, 3, 16, 16), {"crop_border": -1}, "≥ 0"),
    ],
)
def test_bad_inputs_are_refused(x, y, options, match) -> None:
    with pytest.raises(MagicBokehError, match=match):
        psnr(torch.zeros(x), torch.zeros(y), **options)


def test_ssim_needs_the_window_to_fit() -> None:
    with pytest.raises(MagicBokehError, match="at least 11×11"):
        ssim(torch.zeros(1, 3, 10, 40), torch.zeros(1, 3, 10, 40))
