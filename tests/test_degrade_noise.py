"""Noise and JPEG steps of the degradation: statistics, gray noise, determinism, real codec."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from magicbokeh.degrade.jpeg import jpeg_compress
from magicbokeh.degrade.noise import (
    add_gaussian_noise,
    add_poisson_noise,
    apply_noise,
    sample_noise,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sigma", [1.0, 10.0, 30.0])
def test_gaussian_noise_std_matches_sigma(sigma: float) -> None:
    flat = torch.full((1, 3, 128, 128), 0.5, dtype=torch.float64)
    noise = add_gaussian_noise(flat, sigma, False, generator=_gen(), clip=False) - flat
    assert noise.std().item() == pytest.approx(sigma / 255, rel=0.02)
    assert abs(noise.mean().item()) < 4 * sigma / 255 / math.sqrt(noise.numel())
    channels = noise[0].reshape(3, -1)
    correlation = np.corrcoef(channels.numpy())
    assert np.abs(correlation[np.triu_indices(3, 1)]).max() < 0.03  # colour noise: independent


def test_gaussian_gray_noise_is_equal_across_channels() -> None:
    flat = torch.full((2, 3, 64, 64), 0.5)
    noise = add_gaussian_noise(flat, [20.0, 5.0], [True, True], generator=_gen()) - flat
    torch.testing.assert_close(noise[:, 0], noise[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(noise[:, 0], noise[:, 2], rtol=0, atol=0)
    assert noise[0].std() > 3 * noise[1].std()  # each sample keeps its own σ


def test_gaussian_noise_is_clipped_to_the_unit_range() -> None:
    images = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 32, 2).contiguous()
    out = add_gaussian_noise(images, 30.0, False, generator=_gen())
    assert out.min() >= 0 and out.max() <= 1
    assert (out[..., 0] > 0).any() and (out[..., 1] < 1).any()


def _row_ramp(width: int = 64) -> torch.Tensor:
    """256 rows holding every 8-bit level once per row: Poisson uses L = 256 levels."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    return levels.view(1, 1, 256, 1).expand(1, 3, 256, width).contiguous()


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_poisson_variance_grows_linearly_with_the_signal(scale: float) -> None:
    ramp = _row_ramp()
    noise = add_poisson_noise(ramp, scale, False, generator=_gen(3), clip=False) - ramp
    assert torch.all(noise[:, :, 0] == 0)  # no signal, no shot noise
    values = ramp[0, 0, :, 0]
    row_var = noise[0].var(dim=(0, 2), unbiased=True)
    for low in range(32, 256, 32):  # bins of 32 rows, 6144 samples each
        rows = slice(low, low + 32)
        expected = scale**2 * values[rows].mean() / 256
        assert row_var[rows].mean().item() == pytest.approx(expected.item(), rel=0.08)
    assert abs(noise.mean().item()) < 3 * scale * math.sqrt(0.5 / 256 / noise.numel())


def test_poisson_gray_noise_is_equal_across_channels() -> None:
    ramp = _row_ramp()
    noise = add_poisson_noise(ramp, 1.0, True, generator=_gen(), clip=False) - ramp
    torch.testing.assert_close(noise[:, 0], noise[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(noise[:, 1], noise[:, 2], rtol=0, atol=0)
    assert noise.abs().max() > 0


def test_noise_is_deterministic_per_seed() -> None:
    image = torch.rand(2, 3, 32, 32, generator=_gen(9))
    params = [
        {"type": "gaussian", "sigma": 12.0, "gray": False},
        {"type": "poisson", "scale": 1.5, "gray": True},
    ]
    a = apply_noise(image, params, generator=_gen(1))
    b = apply_noise(image, params, generator=_gen(1))
    c = apply_noise(image, params, generator=_gen(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_noise_draws_follow_the_table() -> None:
    rng = np.random.default_rng(5)
    n = 20000
    draws = [
        sample_noise(
            rng,
            gaussian_prob=0.5,
            sigma_range=(1.0, 30.0),
            poisson_scale_range=(0.05, 3.0),
            gray_prob=0.4,
        )
        for _ in range(n)
    ]
    gaussian = [d for d in draws if d["type"] == "gaussian"]
    poisson = [d for d in draws if d["type"] == "poisson"]
    assert len(gaussian) + len(poisson) == n
    assert abs(len(gaussian) / n - 0.5) < 6 * math.sqrt(0.25 / n)
    grays = sum(d["gray"] for d in draws)
    assert abs(grays / n - 0.4) < 6 * math.sqrt(0.24 / n)
    sigma = np.array([d["sigma"] for d in gaussian])
    assert 1.0 <= sigma.min() < 1.05 and 29.95 < sigma.max() <= 30.0
    scale = np.array([d["scale"] for d in poisson])
    assert 0.05 <= scale.min() < 0.06 and 2.99 < scale.max() <= 3.0


def _texture(seed: int = 0) -> torch.Tensor:
    smooth = torch.rand(1, 3, 12, 12, generator=_gen(seed))
    return torch.nn.functional.interpolate(smooth, size=(96, 80), mode="bicubic").clamp(0, 1)


def test_jpeg_uses_a_real_codec_per_sample_quality() -> None:
    images = torch.cat([_texture(0), _texture(0)])
    out = jpeg_compress(images, [30, 95])
    assert out.shape == images.shape and out.dtype == images.dtype
    torch.testing.assert_close(out * 255, (out * 255).round(), rtol=0, atol=1e-4)
    err_low = (out[0] - images[0]).abs().mean()
    err_high = (out[1] - images[1]).abs().mean()
    assert err_low > 2 * err_high > 0
    # Same bytes as a direct libjpeg round trip through Pillow at that quality.
    codes = (images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(codes).save(buffer, format="JPEG", quality=30, subsampling=2)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal((out[0].permute(1, 2, 0) * 255).round().byte().numpy(), expected)


def test_jpeg_keeps_dtype_and_rejects_bad_quality() -> None:
    image = _texture(1).double()
    assert jpeg_compress(image, 80).dtype == torch.float64
    with pytest.raises(ValueError):
        jpeg_compress(image, 100)
    with pytest.raises(ValueError):
        jpeg_compress(image, [50, 60])
