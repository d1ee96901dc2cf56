"""Real-ESRGAN-style second-order degradation that makes low-quality training inputs.

``degrade(hr, generator=g)`` turns a ``B×3×H×W`` batch of sRGB-encoded HR images in [0, 1]
into realistic low-quality ones (blur, resize, noise and JPEG, twice, then a final sinc
filter), ``H/4×W/4`` by default, with every number from :class:`DegradationConfig`.
"""

from __future__ import annotations

from magicbokeh.degrade.pipeline import (
    DegradationConfig,
    apply_degradation,
    degrade,
    minimum_hr_size,
    sample_params,
)

__all__ = [
    "DegradationConfig",
    "apply_degradation",
    "degrade",
    "minimum_hr_size",
    "sample_params",
]
