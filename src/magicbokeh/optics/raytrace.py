"""Thin-lens ray tracing through layered scenes: ground-truth bokeh for training.

A scene is a stack of :class:`SceneLayer` s, each an RGBA image in linear light with its own
disparity map (a plane, or a surface with depth variation). For a sensor pixel ``x`` and a
point ``u`` of the aperture (unit-radius shape), the thin lens focused at disparity ``d_f``
sends the ray to the point ``x' = x + K·(d(x') − d_f)·u`` of a layer, so a plane at disparity
``d`` is seen through a circle of confusion of radius ``K·|d − d_f|`` pixels: the same
convention as the rest of the package. For a layer with depth variation, ``x'`` is found by a
few fixed-point iterations.

Along each ray the layers are sorted by the disparity actually hit (nearest first) and
composited front to back with "over" on premultiplied colour; a ray stops contributing once
its transmittance is spent. The pixel is the weighted mean over aperture samples: a grid over
the aperture with the aperture kernel's anti-aliased weights, jittered per pixel (stratified
sampling), so the noise is unbiased and decreases with ``samples``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from magicbokeh.errors import MagicBokehError
from magicbokeh.optics.aperture import Aperture

#: Fixed-point iterations for the ray–surface intersection of layers with depth variation.
SURFACE_ITERATIONS = 3
#: Transmittance below which a ray counts as fully blocked.
OPAQUE = 1e-4


@dataclass
class SceneLayer:
    """One layer: ``rgba`` ``B×4×H×W`` linear light, straight alpha in [0, 1]; ``disparity``
    ``B×1×H×W`` in [0, 1], larger = nearer (a constant map for a plane)."""

    rgba: torch.Tensor
    disparity: torch.Tensor


def aperture_samples(
    aperture_shape: Aperture, samples: int, *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Aperture grid points ``S×2`` (x, y) in units of the aperture radius, weights ``S`` summing
    to 1, and the grid spacing (same units), for about ``samples`` points."""
    radius = max(1.0, math.sqrt(samples / math.pi))
    kernel = aperture_shape.kernel(radius, dtype=torch.float64)
    half = kernel.shape[-1] // 2
    ys, xs = torch.nonzero(kernel > 0, as_tuple=True)
    points = torch.stack([(xs - half) / radius, (ys - half) / radius], dim=1)
    weights = kernel[ys, xs]
    weights = weights / weights.sum()
    return points.float().to(device), weights.float().to(device), 1.0 / radius


def raytrace(
    layers: Sequence[SceneLayer],
    focus_disparity: float | torch.Tensor,
    aperture: float,
    *,
    aperture_shape: Aperture | None = None,
    samples: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render ``layers`` through a thin lens; returns colour ``B×3×H×W`` in linear light.

    ``aperture`` is K in pixels per unit disparity (≥ 0); ``samples`` is the number of aperture
    samples per pixel; ``generator`` seeds the per-pixel jitter (None: no jitter, grid samples).
    Pixels whose rays leave every layer transparent are black (give an opaque backmost layer).
    """
    if aperture < 0 or not math.isfinite(aperture):
        raise MagicBokehError(f"aperture K must be ≥ 0 (got {aperture:g})")
    if not layers:
        raise MagicBokehError("a scene needs at least one layer")
    first = layers[0].rgba
    batch, _, height, width = first.shape
    device, dtype = first.device, first.dtype
    focus = torch.as_tensor(focus_disparity, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    premultiplied = [
        torch.cat([layer.rgba[:, :3] * layer.rgba[:, 3:], layer.rgba[:, 3:]], dim=1)
        for layer in layers
    ]
    planar = [bool(layer.disparity.amax() - layer.disparity.amin() < 1e-6) for layer in layers]
    points, weights, spacing = aperture_samples(
        aperture_shape or Aperture(), samples, device=device
    )
    if aperture == 0:
        points, weights = points[:1] * 0, weights[:1] / weights[:1]
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    pixel = torch.stack([xs, ys])[None].expand(batch, 2, height, width)
    output = torch.zeros(batch, 3, height, width, device=device, dtype=dtype)
    for point, weight in zip(points, weights, strict=True):
        u = point.to(dtype).reshape(1, 2, 1, 1).expand(batch, 2, height, width)
        if generator is not None and aperture > 0:
            jitter = torch.rand(batch, 2, height, width, generator=generator, device=device)
            u = u + (jitter.to(dtype) - 0.5) * spacing
        hits = [
            _hit(layer, rgba, pixel, u, focus, aperture, flat)
            for layer, rgba, flat in zip(layers, premultiplied, planar, strict=True)
        ]
        output += weight * _composite(hits)
    return output


def _hit(
    layer: SceneLayer,
    rgba: torch.Tensor,
    pixel: torch.Tensor,
    u: torch.Tensor,
    focus: torch.Tensor,
    aperture: float,
    planar: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied RGBA ``B×4×H×W`` and disparity ``B×1×H×W`` where each ray meets ``layer``."""
    disparity = _sample(layer.disparity, pixel)
    for _ in range(1 if planar else SURFACE_ITERATIONS):
        target = pixel + aperture * (disparity - focus) * u
        disparity = _sample(layer.disparity, target)
    return _sample(rgba, target), disparity


def _sample(image: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``image`` (``B×C×H×W``) at pixel positions ``B×2×H×W`` (x, y)."""
    height, width = image.shape[-2:]
    grid = torch.stack(
        [(position[:, 0] + 0.5) / width * 2 - 1, (position[:, 1] + 0.5) / height * 2 - 1], dim=-1
    )
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _composite(hits: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Front-to-back "over" of premultiplied hits, nearest (largest disparity) first per ray."""
    rgba = torch.stack([h[0] for h in hits])  # L×B×4×H×W
    disparity = torch.stack([h[1] for h in hits])  # L×B×1×H×W
    order = torch.argsort(disparity, dim=0, descending=True)
    rgba = torch.gather(rgba, 0, order.expand_as(rgba))
    colour = torch.zeros_like(rgba[0, :, :3])
    transmittance = torch.ones_like(rgba[0, :, 3:])
    for layer in rgba:
        colour += transmittance * layer[:, :3]
        transmittance = transmittance * (1 - layer[:, 3:])
        if float(transmittance.max()) < OPAQUE:
            break
    return colour
