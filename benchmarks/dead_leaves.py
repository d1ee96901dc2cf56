"""Procedural "dead leaves" textures: an unlimited supply of distinct source images.

A dead-leaves image stacks opaque shapes whose sizes follow a power law (many small, few
large), as objects occlude each other in a photo; each shape here is filled with a flat
colour, a colour ramp, stripes or 1/f^β noise, so that edges, smooth shading and texture all
occur at every scale. Used by ``train_depth_tiny.py`` to train on many more distinct images
than the few photos scikit-image ships.
"""

from __future__ import annotations

import numpy as np

MIN_RADIUS, MAX_RADIUS = 6.0, 100.0
"""Range of the shapes' radii in px; the density of radius r falls as r⁻³ (scale invariant)."""
COVERAGE = 2.0
"""Sum of the shapes' areas over the image's area (little background remains)."""


def noise(rng: np.random.Generator, height: int, width: int, beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^β amplitude spectrum, ``height×width``, scaled to [0, 1]."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = np.hypot(fy, fx)
    amplitude[0, 0] = 1.0
    spectrum = rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)
    field = np.fft.irfft2(spectrum / amplitude**beta, s=(height, width))
    low, high = field.min(), field.max()
    return (field - low) / max(high - low, 1e-12)


def palette(rng: np.random.Generator, count: int = 6) -> np.ndarray:
    """``count×3`` colours of one image: grey levels in [0.05, 0.95] with a mild tint."""
    grey = rng.uniform(0.05, 0.95, (count, 1))
    tint = rng.normal(0.0, 0.12, (count, 3))
    return np.clip(grey + tint - tint.mean(axis=1, keepdims=True), 0.0, 1.0)


def fill(rng: np.random.Generator, height: int, width: int, colours: np.ndarray) -> np.ndarray:
    """One shape's fill: ``height×width×3`` float32 in [0, 1], one of four kinds, blending two
    of ``colours`` (``N×3``)."""
    first, second = colours[rng.choice(len(colours), 2, replace=False)]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    kind = rng.integers(4)
    if kind == 0:
        mix = np.zeros((height, width), np.float32)
    elif kind == 1:
        mix = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif kind == 2:
        period = rng.uniform(4.0, 24.0)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
    else:
        mix = noise(rng, height, width, rng.uniform(1.0, 2.5))
    return (first + (second - first) * mix[..., None]).astype(np.float32)


def dead_leaves(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A ``size×size×3`` float32 sRGB image in [0, 1] of textured discs and rectangles."""
    colours = palette(rng)
    image = fill(rng, size, size, colours)
    # Inverse-CDF samples of p(r) ∝ r⁻³ on [MIN_RADIUS, MAX_RADIUS].
    mean_area = np.pi * 2 * np.log(MAX_RADIUS / MIN_RADIUS) / (MIN_RADIUS**-2 - MAX_RADIUS**-2)
    count = int(COVERAGE * size * size / mean_area)
    u = rng.uniform(size=count)
    radii = (MIN_RADIUS**-2 - u * (MIN_RADIUS**-2 - MAX_RADIUS**-2)) ** -0.5
    for radius in radii:
        cy, cx = rng.uniform(0, size, 2)
        top, left = int(max(cy - radius, 0)), int(max(cx - radius, 0))
        bottom, right = int(min(cy + radius + 1, size)), int(min(cx + radius + 1, size))
        if bottom <= top or right <= left:
            continue
        yy, xx = np.mgrid[top:bottom, left:right]
        if rng.random() < 0.5:
            inside = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx) <= radius
        else:
            aspect = rng.uniform(0.4, 1.0)
            inside = (np.abs(yy + 0.5 - cy) <= radius * aspect) & (np.abs(xx + 0.5 - cx) <= radius)
        patch = fill(rng, bottom - top, right - left, colours)
        image[top:bottom, left:right][inside] = patch[inside]
    return image
