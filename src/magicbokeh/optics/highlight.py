"""Invertible highlight boost for clipped 8-bit highlights, applied in linear light.

An 8-bit photo stores a light source a hundred times brighter than white as 1.0, so a blurred
highlight would come out dim. Before blurring, linear values above a knee are lifted:

    h(v) = v + g * ((v - t) / (1 - t))**2   for v > t,   h(v) = v otherwise,

with knee ``t = HIGHLIGHT_KNEE`` (linear) and gain ``g = HIGHLIGHT_GAIN * amount``. ``h`` is
strictly increasing on [0, inf), so after blurring it is inverted exactly (closed form): a pixel
that is not blurred comes back unchanged, while a small clipped highlight spread over a disk
keeps the boosted energy and shows as a bright disk.
"""

from __future__ import annotations

from torch import Tensor

HIGHLIGHT_KNEE = 0.8
HIGHLIGHT_GAIN = 16.0


def boost_highlights(linear: Tensor, amount: float) -> Tensor:
    """Apply ``h`` to linear light (any shape); ``amount`` >= 0, 0 returns the input."""
    if amount <= 0:
        return linear
    gain = HIGHLIGHT_GAIN * amount
    excess = (linear - HIGHLIGHT_KNEE).clamp_min_(0.0).div_(1.0 - HIGHLIGHT_KNEE)
    return excess.square_().mul_(gain).add_(linear)


def unboost_highlights(boosted: Tensor, amount: float) -> Tensor:
    """Invert :func:`boost_highlights` (any shape); exact up to floating-point rounding."""
    if amount <= 0:
        return boosted
    gain = HIGHLIGHT_GAIN * amount
    scale = 1.0 - HIGHLIGHT_KNEE
    # Solve v + g*((v - t)/s)**2 = y for v > t: with e = (v - t)/s, g*e**2 + s*e - (y - t) = 0.
    over = (boosted - HIGHLIGHT_KNEE).clamp_min_(0.0)
    root = (over * (4.0 * gain)).add_(scale * scale).sqrt_()
    excess = over.mul_(2.0 * scale).div_(root + scale)  # scale * e
    return excess.add_(boosted.clamp_max(HIGHLIGHT_KNEE))
