"""Thin-lens ray tracer: disks, energy, partial occlusion, and agreement with the fast renderer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from magicbokeh.errors import MagicBokehError
from magicbokeh.optics import Aperture, render_physical, render_scatter_reference
from magicbokeh.optics.color import linear_to_srgb, srgb_to_linear
from magicbokeh.optics.raytrace import SceneLayer, aperture_samples, raytrace


def plane(rgb: torch.Tensor, alpha: torch.Tensor, disparity: float) -> SceneLayer:
    """Layer from ``3×H×W`` colour and ``H×W`` alpha at a constant disparity."""
    rgba = torch.cat([rgb, alpha[None]])[None].float()
    return SceneLayer(rgba, torch.full_like(rgba[:, :1], disparity))


def smooth_texture(height: int, width: int, seed: int) -> torch.Tensor:
    """``3×H×W`` low-frequency colour texture in linear light, (0.1, 0.9)."""
    noise = np.random.default_rng(seed).uniform(size=(3, height, width))
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 4, 4))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return torch.from_numpy(0.1 + 0.8 * smooth).float()


def test_aperture_samples_cover_the_shape_and_sum_to_one() -> None:
    points, weights, spacing = aperture_samples(Aperture(), 400)
    assert abs(len(points) - 400) < 60
    assert float(weights.sum()) == pytest.approx(1.0)
    assert float(points.norm(dim=1).max()) <= 1.0 + spacing
    hexagon, _, _ = aperture_samples(Aperture(blades=6), 400)
    assert len(hexagon) < len(points)


def test_point_light_gives_a_disk_with_its_energy() -> None:
    colour = torch.zeros(3, 61, 61)
    colour[:, 30, 30] = 1.0
    layer = plane(colour, torch.ones(61, 61), disparity=0.2)
    out = raytrace([layer], focus_disparity=0.7, aperture=20.0, samples=900)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, rel=0.01)
    lit = torch.nonzero(out > 1e-4)
    radius = (lit - 30).float().norm(dim=1).max()
    assert 9.0 <= float(radius) <= 11.0
    inner = out[30 - 6 : 30 + 7, 30 - 6 : 30 + 7]
    assert float(inner.std() / inner.mean()) < 0.1  # a flat disk, not a Gaussian


def test_zero_aperture_returns_the_front_layer() -> None:
    colour = smooth_texture(24, 32, seed=1)
    out = raytrace([plane(colour, torch.ones(24, 32), 0.4)], 0.9, 0.0)
    torch.testing.assert_close(out[0], colour)


def test_blurred_foreground_edge_reveals_the_background() -> None:
    height, width, edge = 48, 96, 48
    red, green = torch.zeros(3, height, width), torch.zeros(3, height, width)
    red[0], green[1] = 1.0, 1.0
    alpha = torch.zeros(height, width)
    alpha[:, :edge] = 1.0
    layers = [plane(red, alpha, 0.9), plane(green, torch.ones(height, width), 0.1)]
    out = raytrace(layers, focus_disparity=0.1, aperture=20.0, samples=400)[0, :, 24]
    # Inside the foreground, within its radius (16 px) of the edge, the background shows through.
    assert float(out[1, edge - 4]) > 0.2
    assert float(out[1, edge - 24]) < 1e-3 and float(out[0, edge - 24]) > 0.99
    # Outside, the foreground spills over the in-focus background by about its radius.
    assert float(out[0, edge + 8]) > 0.05
    assert float(out[0, edge + 20]) < 1e-3
    assert torch.allclose(out.sum(0), torch.ones(width), atol=1e-4)


def test_surface_with_depth_variation_is_sharp_only_at_the_focus_disparity() -> None:
    height, width = 64, 64
    stripes = (torch.arange(width) % 4 < 2).float().expand(3, height, width).clone()
    rgba = torch.cat([stripes, torch.ones(1, height, width)])[None]
    ramp = torch.linspace(0.0, 1.0, height)[:, None].expand(height, width)[None, None].clone()
    out = raytrace([SceneLayer(rgba, ramp)], focus_disparity=0.5, aperture=16.0, samples=200)[0, 0]
    contrast = (out[:, 8:56:4] - out[:, 10:58:4]).abs().mean(dim=1)
    assert float(contrast[32]) > 0.9
    assert float(contrast[4]) < 0.2 and float(contrast[60]) < 0.2


def test_jitter_is_seeded() -> None:
    layer = plane(smooth_texture(16, 16, seed=2), torch.ones(16, 16), 0.0)
    runs = [
        raytrace([layer], 1.0, 6.0, samples=16, generator=torch.Generator().manual_seed(s))
        for s in (0, 0, 1)
    ]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_negative_aperture_is_refused() -> None:
    with pytest.raises(MagicBokehError):
        raytrace([plane(torch.zeros(3, 4, 4), torch.ones(4, 4), 0.5)], 0.5, -1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("focus", [0.8, 0.2])
def test_raytracer_and_fast_renderer_agree_on_layered_scenes(focus: float) -> None:
    """physics.md test 8: PSNR ≥ 35 dB away from occlusion boundaries."""
    height, width, k = 96, 128, 16.0
    background = smooth_texture(height, width, seed=3)
    foreground = smooth_texture(height, width, seed=4)
    alpha = torch.zeros(height, width)
    alpha[30:66, 40:88] = 1.0
    layers = [plane(foreground, alpha, 0.8), plane(background, torch.ones(height, width), 0.2)]
    traced = linear_to_srgb(raytrace(layers, focus, k, samples=300).clamp(0, 1))
    sharp = alpha * foreground + (1 - alpha) * background
    disparity = 0.2 + 0.6 * alpha
    fast = render_physical(
        linear_to_srgb(sharp)[None], disparity[None, None], focus, k, highlight=0.0
    )
    edge = np.zeros((height, width), dtype=bool)
    edge[30:66, 40:88] = True
    distance = np.where(
        edge, ndimage.distance_transform_edt(edge), ndimage.distance_transform_edt(~edge)
    )
    margin = int(k * 0.6) + 3
    away = torch.from_numpy(distance > margin)
    away[:margin], away[-margin:], away[:, :margin], away[:, -margin:] = False, False, False, False
    assert away.sum() > 1000
    assert psnr(traced[0][:, away], fast[0][:, away]) >= 35.0
    assert float(srgb_to_linear(traced).mean()) == pytest.approx(float(sharp.mean()), abs=0.02)


@pytest.mark.parametrize("disparity", [0.9, 0.1])
def test_odd_blade_aperture_is_reflected_in_front_of_focus_by_every_renderer(
    disparity: float,
) -> None:
    """Rays from a point in front of the focal plane cross before the sensor: its bokeh is the
    aperture turned by 180°; behind the focal plane it is upright."""
    size, k, focus = 61, 30.0, 0.5
    colour = torch.zeros(3, size, size)
    colour[:, 30, 30] = 1.0
    shape = Aperture(blades=3)
    traced = raytrace(
        [plane(colour, torch.ones(size, size), disparity)],
        focus,
        k,
        aperture_shape=shape,
        samples=900,
    )[0, 0]
    image = linear_to_srgb(colour)[None]
    depth = torch.full((1, 1, size, size), disparity)
    fast = srgb_to_linear(
        render_physical(image, depth, focus, k, aperture_shape=shape, highlight=0.0)
    )[0, 0]
    exact = srgb_to_linear(
        render_scatter_reference(image, depth, focus, k, aperture_shape=shape, highlight=0.0)
    )[0, 0]
    for other in (fast, exact):
        assert float((other - traced).abs().sum()) < 0.2
        assert float((other - traced.flip(0, 1)).abs().sum()) > 0.5  # orientation matters
