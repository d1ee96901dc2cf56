"""Colour fixes: AdaIN statistics and the à trous wavelet low/high-frequency split."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from magicbokeh.color_fix import (  # noqa: E402
    adain_color_fix,
    apply_color_fix,
    wavelet_color_fix,
    wavelet_low_frequency,
)
from magicbokeh.errors import MagicBokehError  # noqa: E402


def smooth_and_fine(seed: int = 0, size: int = 48):
    gen = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, size)[:, None]
    x = torch.linspace(0, 1, size)[None, :]
    smooth = torch.stack([0.3 + 0.2 * x + 0 * y, 0.4 + 0.2 * y + 0 * x, 0.5 - 0.1 * (x + y)])[None]
    fine = 0.05 * (torch.rand(1, 3, size, size, generator=gen) - 0.5)
    return smooth, fine


def test_adain_matches_source_statistics_per_image():
    gen = torch.Generator().manual_seed(0)
    source = torch.rand(2, 3, 32, 32, generator=gen) * 0.5 + 0.25
    target = torch.rand(2, 3, 32, 32, generator=gen)
    fixed = adain_color_fix(target, source)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), source.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std(dim=(2, 3)), source.std(dim=(2, 3)), atol=1e-3, rtol=0)


def test_pipeline_reexports_the_same_adain():
    from magicbokeh import pipeline

    assert pipeline.adain_color_fix is adain_color_fix


def test_blur_kernel_is_the_dilated_binomial():
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[..., 10, 10] = 1
    once = wavelet_low_frequency(impulse, levels=1)
    taps = torch.tensor([1.0, 2.0, 1.0])
    torch.testing.assert_close(once[0, 0, 9:12, 9:12], taps[:, None] * taps / 16)
    assert once.sum() == pytest.approx(1.0)
    twice = wavelet_low_frequency(impulse, levels=2)
    assert twice[0, 0, 10, 13] > 0 and twice[0, 0, 10, 14] == 0  # reach 1 + 2 pixels
    constant = torch.full((1, 3, 9, 13), 0.4)
    torch.testing.assert_close(wavelet_low_frequency(constant), constant)  # replicate padding


def test_wavelet_is_target_high_plus_source_low():
    smooth, fine = smooth_and_fine()
    target = (smooth.flip(-1) + fine).clamp(0, 1)
    source = smooth + fine.roll(7, dims=-1)
    result = wavelet_color_fix(target, source)
    low = wavelet_low_frequency
    expected = ((target - low(target)) + low(source)).clamp(0, 1)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)


def test_wavelet_transfers_colour_and_keeps_detail():
    smooth, fine = smooth_and_fine(1)
    target = smooth + fine
    shifted = smooth + torch.tensor([0.1, -0.05, 0.08]).view(1, 3, 1, 1)
    result = wavelet_color_fix(target, shifted)
    # a smooth colour cast of the source moves into the output, the target's detail stays (up to
    # the low-frequency part of the detail itself, largest at the replicate-padded corners)
    torch.testing.assert_close(result, shifted + fine, atol=5e-3, rtol=0)
    assert (result - target).mean(dim=(2, 3)).flatten().tolist() == pytest.approx(
        [0.1, -0.05, 0.08], abs=2e-3
    )
    # AdaIN, in contrast, cannot follow a colour change that is not global
    ramp = smooth + 0.1 * torch.linspace(0, 1, 48)[None, None, None, :]
    wavelet_error = (wavelet_color_fix(target, ramp) - (ramp + fine)).abs().mean()
    adain_error = (adain_color_fix(target, ramp) - (ramp + fine)).abs().mean()
    assert wavelet_error < adain_error / 2


def test_apply_color_fix_by_name():
    target = torch.tensor([[-0.5, 0.3, 1.5]]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.equal(apply_color_fix(target, target, "none"), target.clamp(0, 1))
    assert apply_color_fix(target, target * 0 + 0.5, "wavelet").sub(0.5).abs().max() < 1e-6
    with pytest.raises(MagicBokehError, match="colour fix"):
        apply_color_fix(target, target, "histogram")
    with pytest.raises(MagicBokehError, match="sizes"):
        wavelet_color_fix(target, target[..., :2])


def test_adain_on_a_one_pixel_image_is_finite() -> None:
    target = torch.full((1, 3, 1, 1), 0.3)
    source = torch.full((1, 3, 1, 1), 0.6)
    out = adain_color_fix(target, source)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, source)
