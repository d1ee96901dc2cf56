"""A weight-free disparity guess for when no depth is given and no depth model is installed.

It is a prior, not a measurement, and the CLI says so. Two cues are mixed:

- **ground plane**: lower rows are nearer (a camera looking at a scene standing on a floor),
  a linear ramp from 0 at the top to 1 at the bottom;
- **subject**: pixels whose colour differs from the image border's colours are likely the
  subject, which is nearer than the background. Contrast is the distance in CIELAB to the
  nearest of 8 border colour clusters, weighted by a centre Gaussian (σ = 0.35 of each side).

``d = 0.35·ramp + 0.65·subject``, then smoothed with an edge-aware guided filter on the image
(radius 2 % of the shorter side, ε = 1e-3) so depth edges follow image edges, and min-max
normalised. Output: ``H×W`` float32 disparity in [0, 1], larger = nearer.
"""

from __future__ import annotations

import cv2
import numpy as np

RAMP_WEIGHT = 0.35
BORDER_FRACTION = 0.05
BORDER_CLUSTERS = 8
WORKING_SIDE = 512


def heuristic_disparity(rgb: np.ndarray) -> np.ndarray:
    """Guess disparity from sRGB ``H×W×3`` float in [0, 1]; returns ``H×W`` float32 in [0, 1]."""
    height, width = rgb.shape[:2]
    scale = min(1.0, WORKING_SIDE / max(height, width))
    small = cv2.resize(
        np.ascontiguousarray(rgb, dtype=np.float32),
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )
    h, w = small.shape[:2]
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    subject = _border_contrast(lab) * _centre_weight(h, w)
    subject = subject / max(float(subject.max()), 1e-6)
    ramp = np.repeat(np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None], w, axis=1)
    guess = RAMP_WEIGHT * ramp + (1.0 - RAMP_WEIGHT) * subject
    guide = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    guess = guided_filter(guide, guess, radius=max(1, round(0.02 * min(h, w))), eps=1e-3)
    guess = cv2.resize(guess, (width, height), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(guess.min()), float(guess.max())
    return ((guess - lo) / (hi - lo) if hi > lo else np.zeros_like(guess)).astype(np.float32)


def _border_contrast(lab: np.ndarray) -> np.ndarray:
    h, w = lab.shape[:2]
    band = max(1, round(BORDER_FRACTION * min(h, w)))
    border = np.concatenate(
        [
            lab[:band].reshape(-1, 3),
            lab[-band:].reshape(-1, 3),
            lab[:, :band].reshape(-1, 3),
            lab[:, -band:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    k = min(BORDER_CLUSTERS, len(border))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)
    _, _, centres = cv2.kmeans(border, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    pixels = lab.reshape(-1, 1, 3)
    distance = np.linalg.norm(pixels - centres[None], axis=2).min(axis=1)
    return cv2.GaussianBlur(distance.reshape(h, w).astype(np.float32), (0, 0), 2.0)


def _centre_weight(h: int, w: int) -> np.ndarray:
    y = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5) / 0.35
    x = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5) / 0.35
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter (He et al.): smooth ``source`` keeping ``guide``'s edges (both ``H×W``)."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    guide = guide.astype(np.float32)
    source = source.astype(np.float32)
    mean_i, mean_p = box(guide), box(source)
    cov = box(guide * source) - mean_i * mean_p
    var = box(guide * guide) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)
