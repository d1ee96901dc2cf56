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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LINEAR_LAYERS = 8
GEOMETRIC_STEP = 1.0 / LINEAR_LAYERS
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


def layer_matte(u: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """Matte of ``layer`` and its cumulative coverage for coordinates ``u`` (any shape).

    Returns ``(matte, coverage)``: ``coverage = clamp(u - layer + 1, 0, 1)`` is the share of the
    pixel at or in front of the layer, ``matte = coverage * [u < layer + 1]`` the share in the
    layer itself; ``coverage - matte`` marks pixels in front of the layer (its hidden area).
    """
    coverage = (u - (layer - 1)).clamp_(0.0, 1.0)
    matte = coverage * (u < layer + 1)
    return matte, coverage
