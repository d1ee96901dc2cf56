"""Focus: where the lens is focused, and how far every pixel is from it.

A focus spec (point, box, mask, disparity value or ``"auto"``) resolves to one focus disparity
``d_f`` in [0, 1] on a disparity map ``d`` (``H×W``, [0, 1], larger = nearer). From ``d`` and
``d_f`` follow the maps both engines use:

- :func:`defocus_radius`: circle-of-confusion radius ``r = K·|d − d_f|`` in output pixels.
- :func:`signed_defocus`: ``K·(d − d_f)``; positive = in front of the focal plane (nearer, it
  occludes), negative = behind it.
- :func:`learned_defocus`: the map the learned engine sees, ``|d − d_f|·K/32`` (the released
  model was trained for K in 0..32, where K = 32 gives a full-range map in [0, 1]).
- :func:`focus_mask`: the learned engine's binary focus mask, in focus where
  ``|d − d_f|·K/32 ≤ 0.1``, i.e. the in-focus band is ``|d − d_f| ≤ 3.2/K`` (every pixel is in
  focus for K ≤ 3). The threshold is compared in float32, as the released code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from magicbokeh.errors import MagicBokehError

FocusKind = Literal["point", "box", "mask", "disparity", "auto"]

#: Half-width of the window around a focus point, as a fraction of the shorter image side.
POINT_WINDOW_FRACTION = 0.02
#: ``--focus auto`` decides on a disparity map of at most this many pixels (subsampled).
AUTO_FOCUS_PIXELS = 1_000_000
#: Disparity band around the clicked surface that counts as "the same surface".
POINT_SURFACE_BAND = 0.05
#: The learned engine's training range of K and its in-focus threshold on the K/32-scaled map.
LEARNED_K_MAX = 32.0
LEARNED_FOCUS_THRESHOLD = 0.1


@dataclass(frozen=True)
class FocusSpec:
    """One way of saying where to focus.

    ``point`` is ``(x, y)`` in pixels of the map it is resolved on (x = column, y = row);
    ``box`` is ``(x0, y0, x1, y1)``, corners inclusive-exclusive; ``mask`` is ``H×W`` with
    values in [0, 1] (selected where > 0.5); ``value`` is a disparity in [0, 1].
    """

    kind: FocusKind
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    value: float | None = None

    def describe(self) -> dict:
        """JSON-ready description for sidecars (masks are summarised, not embedded)."""
        if self.kind == "point":
            return {"kind": "point", "x": self.point[0], "y": self.point[1]}
        if self.kind == "box":
            return {"kind": "box", "box": list(self.box)}
        if self.kind == "mask":
            return {"kind": "mask", "selected_fraction": float((self.mask > 0.5).mean())}
        if self.kind == "disparity":
            return {"kind": "disparity", "value": self.value}
        return {"kind": "auto"}


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    """Parse ``count`` comma-separated numbers such as ``"120,80"``."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        example = ",".join(["120", "80", "360", "300"][:count])
        raise MagicBokehError(f"cannot read {what} {text!r}: give {count} numbers like {example}")
    return values


def as_focus_spec(focus: object) -> FocusSpec:
    """Turn the API's flexible ``focus`` argument into a :class:`FocusSpec`.

    Accepts a :class:`FocusSpec`, ``"auto"``, ``(x, y)``, ``(x0, y0, x1, y1)``, a disparity
    value (float in [0, 1]) or a mask (``H×W`` array, bool or [0, 1]).
    """
    if isinstance(focus, FocusSpec):
        return focus
    if focus is None or (isinstance(focus, str) and focus == "auto"):
        return FocusSpec("auto")
    if isinstance(focus, str):
        raise MagicBokehError(f"unknown focus {focus!r}: use 'auto', a point (x, y) or a box")
    if isinstance(focus, np.ndarray | torch.Tensor) and np.ndim(focus) >= 2:
        mask = np.asarray(focus.detach().cpu() if isinstance(focus, torch.Tensor) else focus)
        return FocusSpec("mask", mask=np.squeeze(mask).astype(np.float32))
    if isinstance(focus, int | float | np.floating):
        return FocusSpec("disparity", value=float(focus))
    try:
        values = tuple(float(v) for v in focus)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = ()
    if len(values) == 2:
        return FocusSpec("point", point=values)
    if len(values) == 4:
        return FocusSpec("box", box=values)
    raise MagicBokehError(f"cannot use {focus!r} as focus: give (x, y), (x0, y0, x1, y1) or 'auto'")


def resolve_focus(disparity: np.ndarray, spec: FocusSpec) -> float:
    """The focus disparity ``d_f`` in [0, 1] for ``spec`` on ``disparity`` (``H×W``, [0, 1]).

    - point: the median of the window around the point (half-width 2 % of the shorter side)
      restricted to the surface under the point (values within ±0.05 of the 3×3 median at the
      point), so neither a noisy pixel nor a nearby depth edge moves it;
    - box and mask: the median disparity inside;
    - disparity: the value itself;
    - auto: the median of :func:`auto_focus_region` inside the central ellipse (semi-axes 35 %
      of width and height), or of the whole region if less than a tenth of it is central;
      maps larger than ``AUTO_FOCUS_PIXELS`` are subsampled (every s-th row and column) first.
    """
    d = np.asarray(disparity, dtype=np.float32)
    height, width = d.shape
    if spec.kind == "disparity":
        if not 0.0 <= spec.value <= 1.0:
            raise MagicBokehError(
                f"focus disparity {spec.value} is outside [0, 1]: 0 is the farthest plane, "
                "1 the nearest"
            )
        return float(spec.value)
    if spec.kind == "point":
        x, y = spec.point
        if not (0 <= x < width and 0 <= y < height):
            raise MagicBokehError(
                f"focus point ({x:g}, {y:g}) is outside the {width}×{height} image: "
                f"give x in 0..{width - 1} and y in 0..{height - 1}"
            )
        return _point_focus(d, int(x), int(y))
    if spec.kind == "box":
        x0, y0, x1, y1 = (round(c) for c in spec.box)
        x0, x1 = (min(max(c, 0), width) for c in sorted((x0, x1)))
        y0, y1 = (min(max(c, 0), height) for c in sorted((y0, y1)))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise MagicBokehError(
                f"focus box {spec.box} has no pixels inside the {width}×{height} image: "
                "give X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1 inside the image"
            )
        return float(np.median(d[y0:y1, x0:x1]))
    if spec.kind == "mask":
        selected = resize_mask(spec.mask, height, width) > 0.5
        if not selected.any():
            raise MagicBokehError(
                "the focus mask selects no pixels: paint the subject white (> 50 % grey) on black"
            )
        return float(np.median(d[selected]))
    stride = max(1, math.ceil(math.sqrt(d.size / AUTO_FOCUS_PIXELS)))
    d = d[::stride, ::stride]  # every stride-th pixel: a 12 MP map is decided at ≤ 1 MP
    height, width = d.shape
    region = auto_focus_region(d)
    yy, xx = np.mgrid[0:height, 0:width]
    central = region & (((xx / width - 0.5) / 0.35) ** 2 + ((yy / height - 0.5) / 0.35) ** 2 <= 1)
    return float(np.median(d[central if central.sum() >= 0.1 * region.sum() else region]))


def _point_focus(d: np.ndarray, x: int, y: int) -> float:
    height, width = d.shape
    centre = float(np.median(d[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]))
    half = max(2, round(POINT_WINDOW_FRACTION * min(height, width)))
    window = d[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
    surface = window[np.abs(window - centre) <= POINT_SURFACE_BAND]
    return float(np.median(surface)) if surface.size else centre


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask (``h×w``, any numeric type) resized by nearest neighbour to ``height×width``.

    Masks with values above 1 are taken as 8/16-bit and scaled to [0, 1]. The aspect ratio
    must match within 1 %.
    """
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    if m.size and m.max() > 1.0:
        m = m / (65535.0 if m.max() > 255.0 else 255.0)
    h, w = m.shape
    if (h, w) == (height, width):
        return m
    if abs((w / h) / (width / height) - 1.0) > 0.01:
        raise MagicBokehError(
            f"the focus mask is {w}×{h} but the image is {width}×{height}: "
            "give a mask with the image's aspect ratio"
        )
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return m[rows][:, cols]


def auto_focus_region(disparity: np.ndarray) -> np.ndarray:
    """Boolean ``H×W`` region that ``--focus auto`` focuses on, without any weights.

    The heuristic looks for the nearest sizeable, central object: the disparity map is lightly
    median-filtered, then thresholded at its 50th, 65th, 80th and 90th percentiles; each
    connected component covering at least 1 % of the image is a candidate, scored by
    ``mean disparity × centre weight × area^0.25``, where the centre weight is a Gaussian of the
    component centroid's distance from the image centre (σ = 0.3 of the half-diagonal) and
    components whose pixels lie mostly on the bottom 10 % rows (a floor running towards the
    camera) are down-weighted by half. The best candidate wins; if none qualifies, the central
    third of the image is used.
    """
    from scipy import ndimage  # only here: keeps `import magicbokeh.api` light

    d = ndimage.median_filter(np.asarray(disparity, dtype=np.float32), size=5)
    height, width = d.shape
    yy, xx = np.mgrid[0:height, 0:width]
    best, best_score = None, -np.inf
    for q in (50, 65, 80, 90):
        labels, count = ndimage.label(d >= np.percentile(d, q))
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        areas = ndimage.sum_labels(np.ones_like(d), labels, index)
        means = ndimage.mean(d, labels, index)
        cy = ndimage.mean(yy, labels, index)
        cx = ndimage.mean(xx, labels, index)
        bottom = ndimage.mean(yy >= 0.9 * height, labels, index)
        distance = np.hypot((cx - width / 2) / (width / 2), (cy - height / 2) / (height / 2))
        scores = (
            means
            * np.exp(-0.5 * (distance / (0.3 * np.sqrt(2))) ** 2)
            * (areas / d.size) ** 0.25
            * np.where(bottom > 0.5, 0.5, 1.0)
        )
        scores[areas < 0.01 * d.size] = -np.inf
        k = int(np.argmax(scores))
        if scores[k] > best_score:
            best, best_score = labels == k + 1, scores[k]
    if best is None:
        best = np.zeros_like(d, dtype=bool)
        best[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = True
    return best


def defocus_radius(
    disparity: torch.Tensor, focus_disparity: float, aperture: float
) -> torch.Tensor:
    """Circle-of-confusion radius ``K·|d − d_f|`` in output pixels, same shape as ``disparity``."""
    return (disparity - focus_disparity).abs() * aperture


def signed_defocus(
    disparity: torch.Tensor, focus_disparity: float, aperture: float
) -> torch.Tensor:
    """``K·(d − d_f)`` in pixels: positive in front of the focal plane, negative behind it."""
    return (disparity - focus_disparity) * aperture


def learned_defocus(
    disparity: torch.Tensor, focus_disparity: float, aperture: float
) -> torch.Tensor:
    """The learned engine's defocus input ``|d − d_f|·K/32`` (float32; [0, 1] for K ≤ 32)."""
    d = disparity.to(torch.float32)
    return (d - focus_disparity).abs() * (aperture / LEARNED_K_MAX)


def focus_mask(disparity: torch.Tensor, focus_disparity: float, aperture: float) -> torch.Tensor:
    """The learned engine's binary focus mask (float32, 1 = in focus, 0 = out of focus)."""
    defocus = learned_defocus(disparity, focus_disparity, aperture)
    return 1.0 - (defocus > LEARNED_FOCUS_THRESHOLD).to(torch.float32)
