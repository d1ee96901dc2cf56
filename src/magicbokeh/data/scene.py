"""Layered scenes for training data: two cut-out foregrounds in front of one background.

A scene is described by a :class:`ScenePlan`, a plain JSON-serialisable record of every random
choice (which sources, where they are cropped and placed, how large, at which disparity, the
aperture K and the focus). :func:`sample_plan` draws a plan from a numpy Generator using only
the sources' metadata (sizes, alpha boxes), so plans are cheap and a pure function of the
generator's seed. :func:`build_layers` turns a plan and the decoded sources into
:class:`~magicbokeh.optics.raytrace.SceneLayer` s in linear light, ready for ray tracing.

Geometry (``size×size`` output pixels; x = column, y = row):

- background: a square crop of the source (side a random fraction of its shorter side),
  resized to ``size×size``, optionally mirrored; its disparity surface is ``flat``, a
  ``tilted`` plane, or a ``smooth`` random surface (a coarse grid of random heights,
  bicubically upsampled), spanning ``[0, span]`` before normalisation;
- foregrounds: each cut-out is cropped to its alpha box, scaled so the box is a random
  fraction of the frame height (and at most :data:`MAX_WIDTH_FRACTION` of its width),
  optionally mirrored and placed at an integer top-left position; a cut-out whose matte
  touches its source's bottom edge (a person cut at the waist) stands on the frame's bottom
  edge. Each is a fronto-parallel plane nearer than every background point;
- disparity is then mapped affinely so the visible (alpha-composited) disparity map spans
  exactly [0, 1], as a min-max normalised depth estimate does at inference.

Focus: one of the foregrounds (``d_f`` = its plane) or a visible point of the background
(``d_f`` = the surface there), each target equally likely; K ~ U[0, k_max].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.optics.color import srgb_to_linear
from magicbokeh.optics.raytrace import SceneLayer

#: Background crop side, as a fraction of the source's shorter side.
CROP_FRACTION = (0.5, 1.0)
#: Background depth variations and their probabilities.
SURFACE_KINDS = ("flat", "tilted", "smooth")
SURFACE_PROBS = (0.2, 0.4, 0.4)
#: Disparity span of a tilted or smooth background (before normalisation).
SURFACE_SPAN = (0.05, 0.5)
#: Coarse grid side of the smooth random surface.
SMOOTH_GRID = 4
#: Foreground planes are at least this much nearer than the nearest background point.
FOREGROUND_GAP = 0.1
#: Height of a foreground's alpha box, as a fraction of the frame.
HEIGHT_FRACTION = (0.3, 0.85)
MAX_WIDTH_FRACTION = 0.9
#: A matte whose bottom row is opaque over at least this fraction of its box width is "cut at
#: the bottom" and stands on the frame's bottom edge.
BOTTOM_CUT_FRACTION = 0.2
#: Alpha above this counts as covered (alpha box, visibility of the background).
ALPHA_EPS = 1.0 / 255.0
#: Focus targets of a two-foreground scene ("foreground<i>" names the i-th planned cut-out).
FOCUS_TARGETS = ("foreground0", "foreground1", "background")


@dataclass(frozen=True)
class SourceInfo:
    """What sampling needs to know about a source image: its name (relative path), size in
    pixels, and for a cut-out the alpha box ``(x0, y0, x1, y1)`` (exclusive end) and whether the
    matte is cut at the bottom edge."""

    name: str
    width: int
    height: int
    box: tuple[int, int, int, int] | None = None
    bottom_cut: bool = False


@dataclass(frozen=True)
class Cutout:
    """A decoded foreground: ``rgb`` ``h×w×3`` sRGB-encoded in [0, 1], straight ``alpha``
    ``h×w`` in [0, 1]."""

    rgb: np.ndarray
    alpha: np.ndarray


def describe_cutout(name: str, alpha: np.ndarray) -> SourceInfo:
    """:class:`SourceInfo` of a cut-out from its ``h×w`` alpha matte.

    Raises:
        MagicBokehError: the matte is empty (nothing above :data:`ALPHA_EPS`).
    """
    covered = alpha > ALPHA_EPS
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if rows.size == 0:
        raise MagicBokehError(f"{name}: the alpha matte is empty (fully transparent)")
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    bottom = alpha[-1, box[0] : box[2]] > 0.5
    bottom_cut = box[3] == alpha.shape[0] and bottom.mean() >= BOTTOM_CUT_FRACTION
    return SourceInfo(name, alpha.shape[1], alpha.shape[0], box, bool(bottom_cut))


@dataclass(frozen=True)
class BackgroundPlan:
    """Background: source ``name``; square ``crop`` ``(x0, y0, side)`` in source pixels;
    ``flip`` (mirror left-right); disparity ``surface`` kind, its ``span`` before
    normalisation, the tilt ``angle`` (radians, direction of increasing disparity, for
    ``tilted``) and the coarse ``grid`` of heights in [0, 1] (for ``smooth``)."""

    name: str
    crop: tuple[int, int, int]
    flip: bool
    surface: str
    span: float
    angle: float
    grid: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class ForegroundPlan:
    """One cut-out: source ``name``, its alpha ``box`` in source pixels, ``scale`` (output px
    per source px), placed ``size`` ``(w, h)`` and top-left ``position`` ``(x, y)`` in output
    pixels, ``flip``, and its plane's ``disparity`` before normalisation."""

    name: str
    box: tuple[int, int, int, int]
    scale: float
    size: tuple[int, int]
    position: tuple[int, int]
    flip: bool
    disparity: float


@dataclass(frozen=True)
class ScenePlan:
    """Every random choice of one scene (see the module docstring).

    ``aperture`` is K (px per unit disparity); ``focus_target`` one of :data:`FOCUS_TARGETS`;
    ``focus_draw`` in [0, 1) picks the focused background point among the visible ones.
    """

    size: int
    background: BackgroundPlan
    foregrounds: tuple[ForegroundPlan, ...]
    aperture: float
    focus_target: str
    focus_draw: float

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)


@dataclass
class Scene:
    """A built scene: ``layers`` (background first) in linear light with normalised
    disparity; the visible ``disparity`` ``1×1×H×W`` in [0, 1]; the focus disparity
    ``focus_disparity`` and the focused ``focus_point`` ``(x, y)``; ``normalization``
    ``(offset, scale)`` with ``d = (raw − offset)·scale``."""

    layers: list[SceneLayer]
    disparity: torch.Tensor
    focus_disparity: float
    focus_point: tuple[int, int]
    normalization: tuple[float, float]


def sample_plan(
    rng: np.random.Generator,
    size: int,
    backgrounds: Sequence[SourceInfo],
    foregrounds: Sequence[SourceInfo],
    *,
    k_max: float = 32.0,
    count: int = 2,
) -> ScenePlan:
    """Draw a scene: one background, ``count`` cut-outs (distinct when there are enough),
    placements, disparities, K ~ U[0, ``k_max``] and the focus target."""
    if not backgrounds or not foregrounds:
        raise MagicBokehError("a scene needs at least one background and one foreground")
    source = backgrounds[int(rng.integers(len(backgrounds)))]
    short = min(source.width, source.height)
    side = max(1, round(short * rng.uniform(*CROP_FRACTION)))
    crop = (
        int(rng.integers(source.width - side + 1)),
        int(rng.integers(source.height - side + 1)),
        side,
    )
    flip = bool(rng.uniform() < 0.5)
    surface = SURFACE_KINDS[int(rng.choice(len(SURFACE_KINDS), p=SURFACE_PROBS))]
    span = 0.0 if surface == "flat" else float(rng.uniform(*SURFACE_SPAN))
    angle = float(rng.uniform(-np.pi, np.pi))
    grid = rng.uniform(size=(SMOOTH_GRID, SMOOTH_GRID))
    background = BackgroundPlan(
        name=source.name,
        crop=crop,
        flip=flip,
        surface=surface,
        span=span,
        angle=angle if surface == "tilted" else 0.0,
        grid=tuple(tuple(float(v) for v in row) for row in grid) if surface == "smooth" else (),
    )

    replace = len(foregrounds) < count
    chosen = rng.choice(len(foregrounds), size=count, replace=replace)
    planned = [_sample_foreground(rng, size, foregrounds[int(i)], span) for i in chosen]
    aperture = float(rng.uniform(0.0, k_max))
    targets = [f"foreground{i}" for i in range(count)] + ["background"]
    focus_target = targets[int(rng.integers(len(targets)))]
    return ScenePlan(
        size=size,
        background=background,
        foregrounds=tuple(planned),
        aperture=aperture,
        focus_target=focus_target,
        focus_draw=float(rng.uniform()),
    )


def _sample_foreground(
    rng: np.random.Generator, size: int, info: SourceInfo, span: float
) -> ForegroundPlan:
    if info.box is None:
        raise MagicBokehError(f"{info.name} has no alpha box; it is not a cut-out")
    box_w, box_h = info.box[2] - info.box[0], info.box[3] - info.box[1]
    scale = min(rng.uniform(*HEIGHT_FRACTION) * size / box_h, MAX_WIDTH_FRACTION * size / box_w)
    width, height = max(1, round(box_w * scale)), max(1, round(box_h * scale))
    x = int(np.floor(rng.uniform(-0.2 * width, size - 0.8 * width)))
    y = int(np.floor(rng.uniform(-0.1 * height, size - 0.6 * height)))
    if info.bottom_cut:
        y = size - height
    flip = bool(rng.uniform() < 0.5)
    disparity = float(rng.uniform(span + FOREGROUND_GAP, 1.0))
    return ForegroundPlan(
        name=info.name,
        box=info.box,
        scale=float(scale),
        size=(width, height),
        position=(x, y),
        flip=flip,
        disparity=disparity,
    )


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average when shrinking, bicubic when enlarging (float32, any channel count)."""
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(image.astype(np.float32), (width, height), interpolation=interpolation)
    return out.reshape(height, width, *image.shape[2:])


def _linear(rgb: np.ndarray) -> np.ndarray:
    return srgb_to_linear(torch.from_numpy(np.ascontiguousarray(rgb, np.float32))).numpy()


def background_surface(plan: BackgroundPlan, size: int) -> np.ndarray:
    """The background's raw disparity ``size×size`` in ``[0, plan.span]``."""
    if plan.surface == "flat" or plan.span == 0:
        return np.zeros((size, size), np.float32)
    if plan.surface == "tilted":
        coords = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
        ramp = np.cos(plan.angle) * coords[None, :] + np.sin(plan.angle) * coords[:, None]
    elif plan.surface == "smooth":
        grid = np.asarray(plan.grid, np.float32)
        ramp = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    else:
        raise MagicBokehError(f"unknown background surface {plan.surface!r}")
    low, high = ramp.min(), ramp.max()
    unit = (ramp - low) / (high - low) if high > low else np.zeros_like(ramp)
    return (unit * plan.span).astype(np.float32)


def place_cutout(plan: ForegroundPlan, cutout: Cutout, size: int) -> np.ndarray:
    """The cut-out as a ``size×size×4`` layer: linear-light colour, straight alpha (zero outside
    the cut-out). Colour is resampled premultiplied, so no dark or light fringe appears."""
    x0, y0, x1, y1 = plan.box
    alpha = cutout.alpha[y0:y1, x0:x1, None].astype(np.float32)
    premultiplied = np.concatenate([_linear(cutout.rgb[y0:y1, x0:x1]) * alpha, alpha], axis=2)
    if plan.flip:
        premultiplied = premultiplied[:, ::-1]
    width, height = plan.size
    resized = np.clip(_resize(premultiplied, width, height), 0.0, None)
    resized[..., 3] = np.clip(resized[..., 3], 0.0, 1.0)
    layer = np.zeros((size, size, 4), np.float32)
    x, y = plan.position
    sx0, sy0 = max(0, -x), max(0, -y)
    dx0, dy0 = max(0, x), max(0, y)
    w, h = min(width - sx0, size - dx0), min(height - sy0, size - dy0)
    if w > 0 and h > 0:
        layer[dy0 : dy0 + h, dx0 : dx0 + w] = resized[sy0 : sy0 + h, sx0 : sx0 + w]
    covered = layer[..., 3:] > 1e-6
    layer[..., :3] = np.where(covered, layer[..., :3] / np.maximum(layer[..., 3:], 1e-6), 0.0)
    layer[..., :3] = np.clip(layer[..., :3], 0.0, 1.0)
    return layer


def crop_background(plan: BackgroundPlan, rgb: np.ndarray, size: int) -> np.ndarray:
    """The background's ``size×size×3`` linear-light crop."""
    x, y, side = plan.crop
    if y + side > rgb.shape[0] or x + side > rgb.shape[1]:
        raise MagicBokehError(
            f"{plan.name} is {rgb.shape[1]}×{rgb.shape[0]} px, smaller than its planned crop"
        )
    crop = _resize(_linear(rgb[y : y + side, x : x + side]), size, size)
    if plan.flip:
        crop = crop[:, ::-1]
    return np.clip(crop, 0.0, 1.0)


def build_layers(plan: ScenePlan, background_rgb: np.ndarray, cutouts: Sequence[Cutout]) -> Scene:
    """Turn ``plan`` and its decoded sources into ray-traceable layers.

    ``background_rgb``: the background source, ``H×W×3`` sRGB-encoded in [0, 1];
    ``cutouts``: one :class:`Cutout` per planned foreground, in plan order.
    """
    if len(cutouts) != len(plan.foregrounds):
        raise MagicBokehError(f"{len(cutouts)} cut-outs for {len(plan.foregrounds)} foregrounds")
    size = plan.size
    surface = background_surface(plan.background, size)
    placed = [place_cutout(f, c, size) for f, c in zip(plan.foregrounds, cutouts, strict=True)]

    # Visible raw disparity: "over" of the planes on the surface, nearest first.
    visible = surface.astype(np.float64)
    coverage = np.zeros((size, size))
    for index in np.argsort([f.disparity for f in plan.foregrounds]):
        alpha = placed[index][..., 3].astype(np.float64)
        visible = alpha * plan.foregrounds[index].disparity + (1 - alpha) * visible
        coverage = alpha + (1 - alpha) * coverage
    offset = float(visible.min())
    spread = float(visible.max()) - offset
    scale = 1.0 / spread if spread > 1e-6 else 0.0

    def normalised(raw: np.ndarray | float) -> np.ndarray:
        return np.clip((np.asarray(raw, np.float64) - offset) * scale, 0.0, 1.0)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, np.float32))

    background = crop_background(plan.background, background_rgb, size)
    layers = [
        SceneLayer(
            rgba=tensor(np.concatenate([background, np.ones((size, size, 1))], axis=2))
            .permute(2, 0, 1)[None]
            .contiguous(),
            disparity=tensor(normalised(surface))[None, None],
        )
    ]
    for fg, layer in zip(plan.foregrounds, placed, strict=True):
        layers.append(
            SceneLayer(
                rgba=tensor(layer).permute(2, 0, 1)[None].contiguous(),
                disparity=torch.full((1, 1, size, size), float(normalised(fg.disparity))),
            )
        )

    if plan.focus_target == "background":
        candidates = np.flatnonzero(coverage.ravel() < 0.5)
        if candidates.size == 0:
            candidates = np.arange(size * size)
        flat = int(candidates[min(int(plan.focus_draw * candidates.size), candidates.size - 1)])
        point = (flat % size, flat // size)
        focus = float(normalised(surface[point[1], point[0]]))
    else:
        suffix = plan.focus_target.removeprefix("foreground")
        index = int(suffix) if suffix.isdigit() else len(plan.foregrounds)
        if index >= len(plan.foregrounds):
            raise MagicBokehError(f"focus target {plan.focus_target} is not in the scene")
        alpha = placed[index][..., 3]
        ys, xs = np.nonzero(alpha >= alpha.max() * 0.5) if alpha.max() > 0 else ([0], [0])
        pick = min(int(plan.focus_draw * len(xs)), len(xs) - 1)
        point = (int(xs[pick]), int(ys[pick]))
        focus = float(normalised(plan.foregrounds[index].disparity))
    return Scene(
        layers=layers,
        disparity=tensor(normalised(visible))[None, None],
        focus_disparity=focus,
        focus_point=point,
        normalization=(offset, scale),
    )
