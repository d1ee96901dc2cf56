"""Physics tests 1-7 of spec/physics.md for the fast renderer (and the exact scatter reference)."""

from __future__ import annotations

import math

import pytest
import torch

from magicbokeh.optics import (
    Aperture,
    linear_to_srgb,
    render_physical,
    render_scatter_reference,
    srgb_to_linear,
)

RENDERERS = [render_physical, render_scatter_reference]


def _smooth_depth(seed: int, size: int = 48) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def _point_scene(size: int, disparity: float, value: float = 1.0, where=None):
    image = torch.zeros(1, 3, size, size, dtype=torch.float64)
    y, x = where if where is not None else (size // 2, size // 2)
    image[0, :, y, x] = value
    depth = torch.full((1, 1, size, size), disparity, dtype=torch.float64)
    return image, depth


def _radius_from_moment(energy: torch.Tensor, centre: tuple[int, int]) -> float:
    """Radius of the uniform disk with the same second moment: r = sqrt(2 E|x|^2)."""
    ys, xs = torch.meshgrid(
        torch.arange(energy.shape[0], dtype=energy.dtype),
        torch.arange(energy.shape[1], dtype=energy.dtype),
        indexing="ij",
    )
    dist2 = (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2
    return math.sqrt(2.0 * float((energy * dist2).sum() / energy.sum()))


def _support_radius(energy: torch.Tensor, centre: tuple[int, int], fraction: float = 0.02) -> float:
    ys, xs = torch.nonzero(energy > fraction * energy.max(), as_tuple=True)
    return float(torch.sqrt((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2.0).max())


# 1. A constant image stays constant for any depth, K and focus.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aperture,focus", [(6.0, 0.5), (25.0, 0.1), (48.0, 0.9)])
def test_constant_image_stays_constant(seed: int, aperture: float, focus: float) -> None:
    depth = _smooth_depth(seed)
    if seed == 2:  # add hard steps and pixel noise
        gen = torch.Generator().manual_seed(7)
        depth = (depth + (torch.rand(depth.shape, generator=gen) > 0.8) * 0.4).clamp(0, 1)
    image = torch.tensor([0.2, 0.55, 0.9]).reshape(1, 3, 1, 1).expand(1, 3, 48, 48).clone()
    out = render_physical(image, depth, focus, aperture)
    assert (out - image).abs().max() < 1e-4


def test_constant_image_stays_constant_reference() -> None:
    image = torch.full((1, 3, 24, 24), 0.6)
    out = render_scatter_reference(image, _smooth_depth(3, 24), 0.4, 12.0)
    assert (out - image).abs().max() < 1e-6


# 2. A single bright pixel becomes a disk of radius K|d - d_f| with its energy conserved.
@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("disparity", [0.2, 0.62, 1.0])
def test_point_becomes_disk_with_energy_conserved(renderer, disparity: float) -> None:
    aperture, focus, size = 20.0, 0.7, 41
    expected = aperture * abs(disparity - focus)
    image, depth = _point_scene(size, disparity, value=0.8)
    out = renderer(image, depth, focus, aperture, highlight=0.0)
    energy = srgb_to_linear(out[0, 0])
    input_energy = float(srgb_to_linear(torch.tensor(0.8, dtype=torch.float64)))
    assert abs(float(energy.sum()) / input_energy - 1.0) < 0.01
    centre = (size // 2, size // 2)
    assert abs(_radius_from_moment(energy, centre) - expected) <= 1.0
    assert abs(_support_radius(energy, centre) - expected) <= 1.0


def test_large_radius_point_energy_and_radius() -> None:
    """Radii blurred at reduced resolution keep their energy and size."""
    aperture, focus, size = 60.0, 0.9, 151  # r = 36 px; borders beyond 2r of the disk
    image, depth = _point_scene(size, 0.3, value=1.0)
    out = render_physical(image, depth, focus, aperture, highlight=0.0)
    energy = srgb_to_linear(out[0, 1])
    assert abs(float(energy.sum()) - 1.0) < 0.01
    assert abs(_radius_from_moment(energy, (75, 75)) - 36.0) <= 1.0


# 3. K = 0, or d = d_f everywhere, returns the input (up to 8-bit rounding).
@pytest.mark.parametrize("highlight", [0.0, 0.5, 1.5])
def test_in_focus_returns_input(highlight: float) -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 32, 40), generator=gen).float() / 255
    image[:, :, 5:9, 5:9] = 1.0  # clipped highlights must survive too
    depth = torch.rand(2, 1, 32, 40, generator=gen)
    out = render_physical(image, depth, 0.5, 0.0, highlight=highlight)
    assert torch.equal(out, image)
    flat = torch.full_like(depth, 0.35)
    for renderer in RENDERERS:
        out = renderer(image, flat, 0.35, 30.0, highlight=highlight)
        assert (out - image).abs().max() <= 0.5 / 255


# 4. Two planes: occlusion is right on both sides of the focal plane.
def _two_planes(size: int = 64):
    image = torch.zeros(1, 3, size, size)
    image[:, 0, :, : size // 2] = 0.9  # near plane: red, left half
    image[:, 2, :, size // 2 :] = 0.9  # far plane: blue, right half
    depth = torch.full((1, 1, size, size), 0.2)
    depth[..., : size // 2] = 0.8
    return image, depth


@pytest.mark.parametrize("renderer", RENDERERS)
def test_sharp_near_plane_keeps_its_edge(renderer) -> None:
    image, depth = _two_planes()
    out = renderer(image, depth, 0.8, 30.0)  # near in focus, far r = 18 px
    near = out[0, :, :, :31]  # more than 1 px inside the near plane
    assert near[2].max() < 1e-6  # no far (blue) light inside the near plane
    assert (near[0] - 0.9).abs().max() < 1e-5
    assert out[0, 2, :, 33:].min() > 0.5  # and the far plane stays blue up to the edge


@pytest.mark.parametrize("renderer", RENDERERS)
def test_blurred_near_plane_spills_over_sharp_far_plane(renderer) -> None:
    image, depth = _two_planes()
    radius = 18
    out = srgb_to_linear(renderer(image, depth, 0.2, 30.0, highlight=0.0))
    red = out[0, 0, 32, :]  # middle row; the edge is between columns 31 and 32
    assert red[32 + 2] > 0.1 * red[8]  # spill just beyond the edge
    assert red[32 + radius // 2] > 0.01 * red[8]
    assert red[32 + radius + 2 :].max() < 1e-6  # nothing beyond the radius
    assert out[0, 2, 32, 32 + radius + 2 :].min() > 0.7  # far plane untouched there


# 5. Polygon apertures give polygonal disks with the requested blades and rotation.
def _boundary_profile(energy: torch.Tensor, centre: int, angles: torch.Tensor) -> torch.Tensor:
    """Distance from the centre to the disk boundary along each screen angle (ray march)."""
    mask = energy > 0.5 * energy.max()
    steps = torch.arange(0, centre, 0.25)
    extent = []
    for angle in angles.tolist():
        ys = (centre - steps * math.sin(angle)).round().long()
        xs = (centre + steps * math.cos(angle)).round().long()
        inside = mask[ys, xs]
        extent.append(float(steps[inside].max()))
    return torch.tensor(extent)


def _polygon_extent(blades: int, rotation: float, radius: float, angles: torch.Tensor):
    sector = 2 * math.pi / blades
    phase = torch.remainder(angles - math.radians(rotation), sector) - sector / 2
    return radius * math.cos(sector / 2) / torch.cos(phase)


@pytest.mark.parametrize("blades,rotation", [(5, 0.0), (6, 20.0), (7, -35.0)])
def test_polygon_aperture_has_blades_and_rotation(blades: int, rotation: float) -> None:
    size, radius = 125, 30.0
    image, depth = _point_scene(size, 0.1)
    shape = Aperture(blades=blades, rotation=rotation)
    out = render_physical(image, depth, 0.85, radius / 0.75, aperture_shape=shape, highlight=0.0)
    energy = srgb_to_linear(out[0, 0])
    angles = torch.linspace(0, 2 * math.pi, 361)[:-1]
    profile = _boundary_profile(energy, size // 2, angles)
    error = (profile - _polygon_extent(blades, rotation, radius, angles)).abs()
    assert float(error.mean()) <= 1.0 and float(error.max()) <= 2.5  # corners soften slightly
    # A different blade count or a half-sector rotation fits clearly worse.
    half_turn = rotation + 180.0 / blades
    for wrong in (
        _polygon_extent(blades, half_turn, radius, angles),
        _polygon_extent(blades + 1, rotation, radius, angles),
    ):
        assert float((profile - wrong).abs().max()) > 3.0
    # Angular spectrum: the strongest harmonic is the blade count, its phase the rotation.
    spectrum = torch.fft.rfft(profile - profile.mean())
    assert int(spectrum[1:25].abs().argmax()) + 1 == blades
    sector = 360.0 / blades
    found = math.degrees(-float(torch.angle(spectrum[blades]))) / blades
    assert abs((found - rotation + sector / 2) % sector - sector / 2) < 3.0


# 6. Blur grows monotonically with K and with |d - d_f|.
def _detail(out: torch.Tensor) -> float:
    return float((out[..., 1:, :] - out[..., :-1, :]).abs().mean())


def test_blur_grows_with_aperture_and_defocus() -> None:
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 48, 48, generator=gen)
    depth = torch.full((1, 1, 48, 48), 0.3)
    by_k = [_detail(render_physical(image, depth, 0.8, k)) for k in (0.0, 2.0, 5.0, 10.0, 20.0)]
    assert all(a > b for a, b in zip(by_k, by_k[1:], strict=False))
    by_focus = [_detail(render_physical(image, depth, f, 16.0)) for f in (0.3, 0.4, 0.6, 0.9)]
    assert all(a > b for a, b in zip(by_focus, by_focus[1:], strict=False))
    image_p, depth_p = _point_scene(49, 0.2)
    radii = [
        _radius_from_moment(
            srgb_to_linear(render_physical(image_p, depth_p, f, 30.0)[0, 0]), (24, 24)
        )
        for f in (0.3, 0.4, 0.55, 0.7)
    ]
    assert all(a < b for a, b in zip(radii, radii[1:], strict=False))


# 7. sRGB -> linear -> sRGB round-trips.
def test_srgb_round_trip() -> None:
    x = torch.linspace(0, 1, 10001, dtype=torch.float64)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-12)
    assert abs(float(srgb_to_linear(torch.tensor(0.5, dtype=torch.float64))) - 0.214041) < 1e-6
    assert float(srgb_to_linear(torch.tensor(0.04045 / 2))) == pytest.approx(0.04045 / 2 / 12.92)
    x32 = torch.rand(3, 5, 7)
    assert (linear_to_srgb(srgb_to_linear(x32)) - x32).abs().max() < 1e-5


# 4b. A blurred near plane touching the image border stays opaque there: the scene continues
# beyond the frame, so the far plane must not show through (compared with the exact scatter of
# the scene extended beyond the frame).
def _border_scene(size: int = 64, strip: int = 16):
    gen = torch.Generator().manual_seed(5)
    texture = torch.nn.functional.interpolate(
        torch.rand(1, 1, 8, 8, generator=gen), size=(size, size), mode="bicubic"
    ).clamp(0, 1)[0, 0]
    image = torch.zeros(1, 3, size, size, dtype=torch.float64)
    image[0, 1] = 0.2 + 0.2 * texture  # far plane: blue-green
    image[0, 2] = 0.8
    image[0, 0, -strip:] = 0.5 + 0.3 * texture[-strip:]  # near strip along the bottom: red
    image[0, 1, -strip:] = 0.3 * texture[-strip:]
    image[0, 2, -strip:] = 0.0
    depth = torch.full((1, 1, size, size), 0.2, dtype=torch.float64)
    depth[..., -strip:, :] = 0.9
    return image, depth


def test_blurred_near_plane_at_the_border_hides_the_far_plane() -> None:
    size, strip, radius = 64, 16, 8.0
    aperture = radius / 0.7  # near strip r = 8 px, far plane in focus
    image, depth = _border_scene(size, strip)
    fast = render_physical(image, depth, 0.2, aperture)
    # Truth: the exact scatter of the scene extended beyond the frame (mirrored), then cropped.
    pad = 24
    index = torch.arange(-pad, size + pad)
    mirror = torch.where(
        index < 0, -index - 1, torch.where(index >= size, 2 * size - 1 - index, index)
    )
    wide_image = image[..., mirror, :][..., mirror]
    wide_depth = depth[..., mirror, :][..., mirror]
    exact = render_scatter_reference(wide_image, wide_depth, 0.2, aperture)
    exact = exact[..., pad : pad + size, pad : pad + size]
    edge = size - strip
    border = slice(edge + int(radius) + 2, size)  # rows of the strip away from its depth edge
    assert float(fast[0, 2, border].max()) < 2e-3  # no far (blue) light at the border
    assert float(exact[0, 2, border].max()) < 2e-3
    keep = torch.ones(size, dtype=torch.bool)
    keep[edge - int(radius) - 2 : edge + int(radius) + 2] = False
    assert _psnr(fast[..., keep, :], exact[..., keep, :]) > 40.0


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))
