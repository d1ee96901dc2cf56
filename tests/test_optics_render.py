"""Fast layered renderer vs the exact reference, tiling, chromatic and cat-eye, errors, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.optics import (
    Aperture,
    render_physical,
    render_scatter_reference,
    srgb_to_linear,
)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def _smooth_image(size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


@pytest.mark.parametrize("radius", [4.0, 7.3, 12.0])
def test_fast_matches_reference_on_single_plane(radius: float) -> None:
    image = _smooth_image(48, 0)
    depth = torch.full((1, 1, 48, 48), 0.25)
    fast = render_physical(image, depth, 0.65, radius / 0.4)
    exact = render_scatter_reference(image, depth, 0.65, radius / 0.4)
    assert _psnr(fast, exact) > 40.0


@pytest.mark.parametrize("focus", [0.2, 0.8])
def test_fast_matches_reference_on_two_planes_away_from_boundary(focus: float) -> None:
    size, radius = 64, 9
    image = _smooth_image(size, 1)
    depth = torch.full((1, 1, size, size), 0.2)
    depth[..., : size // 2] = 0.8
    aperture = radius / 0.6
    fast = render_physical(image, depth, focus, aperture)
    exact = render_scatter_reference(image, depth, focus, aperture)
    keep = torch.ones(size, dtype=torch.bool)
    keep[size // 2 - radius - 2 : size // 2 + radius + 2] = False
    assert _psnr(fast[..., keep], exact[..., keep]) > 40.0


def test_tiled_matches_untiled() -> None:
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 112, 144, generator=gen)
    depth = torch.nn.functional.interpolate(
        torch.rand(1, 1, 5, 5, generator=gen), size=(112, 144), mode="bilinear"
    )
    depth[..., 40:80, 50:90] = 0.9  # a near object with hard edges
    whole = render_physical(image, depth, 0.5, 24.0)
    tiled = render_physical(image, depth, 0.5, 24.0, max_tile_pixels=96 * 96)
    assert (whole - tiled).abs().max() < 2e-3
    batch = render_physical(image.expand(2, -1, -1, -1), depth.expand(2, -1, -1, -1), 0.5, 24.0)
    assert (batch - whole).abs().max() < 1e-6


def test_chromatic_gives_per_channel_radii() -> None:
    size = 61
    image = torch.zeros(1, 3, size, size, dtype=torch.float64)
    image[0, :, 30, 30] = 1.0
    depth = torch.full((1, 1, size, size), 0.1, dtype=torch.float64)
    out = srgb_to_linear(
        render_physical(image, depth, 0.7, 20.0, chromatic=(1.0, 0.75, 0.5), highlight=0.0)
    )
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist2 = ((ys - 30) ** 2 + (xs - 30) ** 2).double()
    for channel, expected in enumerate((12.0, 9.0, 6.0)):
        energy = out[0, channel]
        moment = math.sqrt(2 * float((energy * dist2).sum() / energy.sum()))
        assert abs(moment - expected) <= 1.0
        assert abs(float(energy.sum()) - 1.0) < 0.01


def test_cat_eye_cuts_corner_kernels() -> None:
    shape = Aperture(cat_eye=0.8)
    centre = shape.kernel(10.0)
    corner = shape.kernel(10.0, offset=(1.0, -1.0))
    assert float(corner.sum()) == pytest.approx(1.0) and float(centre.sum()) == pytest.approx(1.0)
    assert int((corner > 0).sum()) < 0.7 * int((centre > 0).sum())
    # The cut is radial: the kernel is narrower along the diagonal towards the centre.
    diag = torch.diagonal(corner.flip(1))  # direction (1, -1) and back
    anti = torch.diagonal(corner)
    assert int((diag > 0).sum()) < int((anti > 0).sum())
    # In a render, a point near the corner spreads over less area than one at the centre.
    size = 96
    image = torch.zeros(1, 3, size, size)
    image[0, :, 48, 48] = 1.0
    image[0, :, 8, 88] = 1.0
    depth = torch.full((1, 1, size, size), 0.2)
    out = srgb_to_linear(render_physical(image, depth, 0.7, 16.0, aperture_shape=shape))[0, 0]
    centre_area = int((out[30:67, 30:67] > 1e-4).sum())
    corner_area = int((out[:27, 69:] > 1e-4).sum())
    assert corner_area < 0.8 * centre_area


def test_highlights_make_bright_disks_and_keep_focus() -> None:
    size = 64
    image = torch.full((1, 3, size, size), 0.1)
    image[0, :, 30:33, 30:33] = 1.0  # small clipped highlight
    depth = torch.full((1, 1, size, size), 0.2)
    plain = render_physical(image, depth, 0.7, 24.0, highlight=0.0)
    boosted = render_physical(image, depth, 0.7, 24.0)
    assert float(boosted[0, 0, 31, 31]) > float(plain[0, 0, 31, 31]) + 0.05
    assert float(boosted[0, 0, 31, 31 + 8]) > float(plain[0, 0, 31, 31 + 8]) + 0.05
    assert float(boosted[0, 0, 0, 0]) == pytest.approx(float(plain[0, 0, 0, 0]), abs=1e-3)


def test_background_extension_reveals_background_not_black() -> None:
    """A blurred near disk over a sharp far plane shows far colour at its edge, not black."""
    size = 80
    image = torch.zeros(1, 3, size, size)
    image[:, 1] = 0.8  # green far plane
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = ((ys - 40) ** 2 + (xs - 40) ** 2) < 20**2
    image[:, :, disk] = torch.tensor([0.8, 0.0, 0.0])[:, None]
    depth = torch.where(disk, 0.9, 0.3)[None, None].float()
    out = srgb_to_linear(render_physical(image, depth, 0.3, 30.0, highlight=0.0))
    ring = (((ys - 40) ** 2 + (xs - 40) ** 2) - 17**2).abs() < 40  # just inside the edge
    colour = out[0][:, ring]
    total = colour.sum(0)
    assert float(total.min()) > 0.4  # no dark fringe: light sums to the plane brightness
    assert float(colour[1].mean()) > 0.1  # the background shows through there


def test_negative_aperture_and_bad_inputs_raise() -> None:
    image = torch.rand(1, 3, 16, 16)
    depth = torch.rand(1, 1, 16, 16)
    with pytest.raises(MagicBokehError, match="negative"):
        render_physical(image, depth, 0.5, -1.0)
    with pytest.raises(MagicBokehError):
        render_scatter_reference(image, depth, 0.5, -1.0)
    with pytest.raises(MagicBokehError):
        render_physical(image, depth[:, :, :8], 0.5, 4.0)
    with pytest.raises(MagicBokehError):
        render_physical(image, depth * float("nan"), 0.5, 4.0)
    with pytest.raises(MagicBokehError):
        render_physical(image, depth, torch.tensor([0.1, 0.2]), 4.0)
    with pytest.raises(MagicBokehError):
        render_physical(image, depth, 0.5, 4.0, chromatic=(1.0, -1.0, 1.0))
    with pytest.raises(MagicBokehError):
        Aperture(blades=2)
    with pytest.raises(MagicBokehError):
        Aperture(roundness=1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_device_and_gradient(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(2, 3, 24, 24, generator=gen).to(dtype).requires_grad_(True)
    depth = torch.rand(2, 1, 24, 24, generator=gen).to(dtype)
    out = render_physical(image, depth, torch.tensor([0.3, 0.7]), 10.0)
    assert out.dtype == dtype and out.device == image.device and out.shape == image.shape
    out.mean().backward()
    assert image.grad is not None and bool(torch.isfinite(image.grad).all())
    assert float(image.grad.abs().sum()) > 0


def test_kernels_are_normalised_and_tend_to_delta() -> None:
    for shape in (Aperture(), Aperture(blades=6, roundness=0.3), Aperture(cat_eye=1.0)):
        for radius in (0.0, 0.3, 1.0, 2.5, 9.7):
            kernel = shape.kernel(radius, offset=(0.7, 0.2), dtype=torch.float64)
            half = math.ceil(radius)
            assert kernel.shape == (2 * half + 1, 2 * half + 1)
            assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(Aperture().kernel(0.0), torch.ones(1, 1))
    assert float(Aperture().kernel(0.3)[1, 1]) == 1.0
    round_kernel = Aperture(blades=6, roundness=1.0).kernel(8.0)
    assert torch.allclose(round_kernel, Aperture().kernel(8.0))


def test_parallel_tiles_match_one_thread_and_restore_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(6)
    image = torch.rand(1, 3, 96, 112, generator=gen)
    depth = torch.rand(1, 1, 6, 7, generator=gen)
    depth = torch.nn.functional.interpolate(depth, size=(96, 112), mode="bilinear")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = render_physical(image, depth, 0.4, 20.0, max_tile_pixels=64 * 64)
        torch.set_num_threads(2)
        parallel = render_physical(image, depth, 0.4, 20.0, max_tile_pixels=64 * 64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, parallel)


def test_parallel_tiles_under_inference_mode() -> None:
    """Worker threads take the caller's inference mode (it is per thread in torch)."""
    gen = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, 96, 112, generator=gen)
    depth = torch.nn.functional.interpolate(
        torch.rand(1, 1, 6, 7, generator=gen), size=(96, 112), mode="bilinear"
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        plain = render_physical(image, depth, 0.4, 20.0, max_tile_pixels=64 * 64)
        with torch.inference_mode():
            inferred = render_physical(image, depth, 0.4, 20.0, max_tile_pixels=64 * 64)
    finally:
        torch.set_num_threads(threads)
    assert inferred.is_inference() and torch.equal(plain, inferred)
