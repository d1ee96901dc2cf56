"""Depth layers for the layered renderer: a signed layer index per pixel and a radius per layer.

Disparity offsets ``delta = d - d_f`` are mapped to a continuous signed layer coordinate ``u``:
integer ``u`` values are layer centres, negative behind the focal plane, positive in front.
Layer ``k`` has circle-of-confusion radius ``rho(|k|)`` pixels: steps of 1 px up to
``LINEAR_LAYERS`` px, then geometric steps of ``GEOMETRIC_STEP`` (relative), so neighbouring
layers never differ by more than about one pixel of radius at the resolution they are blurred at.

Soft membership: a pixel at coordinate ``u`` belongs fully to layer ``floor(u)`` and with weight
``u - floor(u)`` to layer ``floor(u) + 1``. For back-to-front compositing layer ``l`` uses the
matte ``m_l(u) = clamp(u - l + 1, 0, 1) * [u < l + 1]`` (cumulative form of the linear tent
weights), so a surface between two layers is split smoothly and nothing bands or leaks.

Occlusion: a layer is extended (filled) only under pixels at least ``OCCLUDER_STEP`` layers
nearer, i.e. behind a depth step; along a continuous surface the next layer is the surface
itself, and filling under it would only cost time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LINEAR_LAYERS = 8
GEOMETRIC_STEP = 1.0 / LINEAR_LAYERS
OCCLUDER_STEP = 2  # layers nearer than this count as occluders (see :func:`layer_matte`)
_LOG_RATIO = math.log1p(GEOMETRIC_STEP)


def layer_radius(index: int | float) -> float:
    """Radius in pixels (for ``K = K_max``) of the layer at signed coordinate ``index``."""
    k = abs(float(index))
    if k <= LINEAR_LAYERS:
        return k
    return LINEAR_LAYERS * math.exp((k - LINEAR_LAYERS) * _LOG_RATIO)


def layer_coordinate(radius: Tensor) -> Tensor:
    """Inverse of :func:`layer_radius` for signed radii (any shape): the continuous ``u``."""
    size = radius.abs()
    big = LINEAR_LAYERS + torch.log(size.clamp_min(LINEAR_LAYERS) / LINEAR_LAYERS) / _LOG_RATIO
    return torch.sign(radius) * torch.where(size <= LINEAR_LAYERS, size, big)


def layer_coordinate_scalar(radius: float) -> float:
    """:func:`layer_coordinate` for one signed radius."""
    size = abs(radius)
    if size <= LINEAR_LAYERS:
        value = size
    else:
        value = LINEAR_LAYERS + math.log(size / LINEAR_LAYERS) / _LOG_RATIO
    return math.copysign(value, radius)


def layer_matte(
    u: Tensor, layer: int, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Matte of ``layer`` and the area it lies hidden behind, for coordinates ``u`` (any shape).

    Returns ``(matte, hidden)``: ``matte = clamp(u - layer + 1, 0, 1) * [u < layer + 1]`` is the
    share of each pixel in the layer; ``hidden = [u >= layer + OCCLUDER_STEP]`` marks pixels of a
    nearer surface that occludes the layer (a depth step of at least ``OCCLUDER_STEP`` layers;
    the next layer of a continuous surface is the same surface, not an occluder). With ``out``
    (two tensors shaped like ``u``) the results are written there (no autograd).
    """
    if out is None:
        matte = (u - (layer - 1)).clamp(0.0, 1.0) * (u < layer + 1)
        return matte, (u >= layer + OCCLUDER_STEP).to(u.dtype)
    matte, hidden = out
    torch.sub(u, layer - 1, out=matte).clamp_(0.0, 1.0).mul_(u < layer + 1)
    torch.ge(u, layer + OCCLUDER_STEP, out=hidden)
    return matte, hidden
