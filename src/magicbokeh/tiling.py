"""Tile grids, blending weights and padding for tiled inference (pure functions, no network).

The fast grid covers an image of H×W pixels with tiles of ``tile_h``×``tile_w`` pixels. Along
each axis it uses the fewest tiles whose neighbours overlap by at least ``min_overlap`` pixels,
spreads their starts evenly between 0 and ``length − tile`` (so the spare length widens every
overlap instead of leaving a thin border tile), and puts every start on the ``align``-pixel grid
(8 = one latent pixel of the SD VAE). Tile counts for 512 tiles, 96 px minimum overlap (the
pipeline's default): 4032×3024 → 10×8 = 80 (overlaps 120–160 px), 1562×1024 → 4×3 = 12,
512×512 → 1, anything ≤ 512 → 1 (after padding); with 768 tiles 4032×3024 → 6×5 = 30.

Blending weights are separable: per axis, a tile's profile is 1 in its interior and follows a
raised-cosine (sin²) ramp across the whole overlap with each neighbour, so two neighbours' ramps
add up to exactly 1 and a tile's weight falls to almost 0 at its own edge, where the network sees
zero padding. Weights are normalised by their sum when tiles are accumulated, which also covers
places where three tiles overlap. Image borders get no ramp.

Images smaller than a tile, or not a multiple of ``align``, are padded at the bottom and right by
mirror reflection (:func:`reflect_pad`, any amount) and the result is cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = [
    "TILE_MULTIPLE",
    "TilePlan",
    "blend_profiles",
    "plan_tiles",
    "reflect_pad",
    "round_up",
    "tile_grid",
    "tile_starts",
]

TILE_MULTIPLE = 64
"""Tile sides are multiples of this (VAE /8 times UNet /8 for SD2.1-base)."""


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ ``value``."""
    return -(-value // multiple) * multiple


def tile_starts(length: int, tile: int, min_overlap: int, align: int = 8) -> list[int]:
    """Starts of the fewest ``tile``-long tiles covering ``length`` with overlaps ≥ ``min_overlap``.

    ``length``, ``tile`` and ``min_overlap`` are pixels; ``length`` and ``tile`` are multiples of
    ``align`` and ``length ≥ tile``; 0 ≤ ``min_overlap`` ≤ ``tile − align``. The first start is
    0, the last ``length − tile``, the others evenly spread and rounded to multiples of ``align``.
    """
    if length % align or tile % align:
        raise ValueError(f"length {length} and tile {tile} must be multiples of {align}")
    if length < tile:
        raise ValueError(f"length {length} is shorter than the tile {tile}; pad first")
    if not 0 <= min_overlap <= tile - align:
        raise ValueError(f"overlap {min_overlap} must be in [0, {tile - align}]")
    span = (length - tile) // align
    step = (tile - round_up(min_overlap, align)) // align
    if span == 0:
        return [0]
    gaps = math.ceil(span / step)
    # round(k·span/gaps), half up, in whole align units: every gap ≤ ⌈span/gaps⌉ ≤ step.
    return [(2 * k * span + gaps) // (2 * gaps) * align for k in range(gaps + 1)]


def tile_grid(
    height: int, width: int, tile_h: int, tile_w: int, min_overlap: int, align: int = 8
) -> list[tuple[int, int]]:
    """(top, left) of every tile, row-major, for a (padded) ``height``×``width`` image."""
    rows = tile_starts(height, tile_h, min(min_overlap, tile_h - align), align)
    cols = tile_starts(width, tile_w, min(min_overlap, tile_w - align), align)
    return [(top, left) for top in rows for left in cols]


def blend_profiles(starts: list[int], tile: int) -> list[torch.Tensor]:
    """One 1-D weight profile (``tile`` values in (0, 1], float32) per tile start.

    Across the overlap [s_next, s + tile) of two neighbours the earlier tile has
    cos²(π/2·(x − s_next + ½)/o) and the later sin²(same), o = overlap width, so they sum to 1.
    """
    profiles = []
    x = torch.arange(tile, dtype=torch.float64)
    for k, start in enumerate(starts):
        weights = torch.ones(tile, dtype=torch.float64)
        if k > 0 and (overlap := starts[k - 1] + tile - start) > 0:
            rising = torch.sin(0.5 * math.pi * (x + 0.5) / overlap) ** 2
            weights = torch.where(x < overlap, weights * rising, weights)
        if k + 1 < len(starts) and (overlap := start + tile - starts[k + 1]) > 0:
            local = x - (starts[k + 1] - start)
            falling = torch.cos(0.5 * math.pi * (local + 0.5) / overlap) ** 2
            weights = torch.where(local >= 0, weights * falling, weights)
        profiles.append(weights.float())
    return profiles


@dataclass(frozen=True)
class TilePlan:
    """How one image is cut: sizes in pixels, tile positions in the padded image.

    ``height``×``width``: the input; ``padded_height``×``padded_width``: after :func:`reflect_pad`;
    ``tile_height``×``tile_width``: every tile; ``rows``/``cols``: tile starts per axis.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile_height: int
    tile_width: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def positions(self) -> list[tuple[int, int]]:
        """(top, left) of each tile, row-major."""
        return [(top, left) for top in self.rows for left in self.cols]

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.rows) * len(self.cols)

    @cached_property
    def _profiles(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        rows = dict(zip(self.rows, blend_profiles(list(self.rows), self.tile_height), strict=True))
        cols = dict(zip(self.cols, blend_profiles(list(self.cols), self.tile_width), strict=True))
        return rows, cols

    def weight(self, top: int, left: int) -> torch.Tensor:
        """tile_height×tile_width blending weight (float32, in (0, 1]) of the tile at (top, left)"""
        rows, cols = self._profiles
        return rows[top][:, None] * cols[left][None, :]


def plan_tiles(
    height: int,
    width: int,
    tile_size: int,
    min_overlap: int,
    align: int = 8,
    multiple: int = TILE_MULTIPLE,
) -> TilePlan:
    """The fast tile plan for a ``height``×``width`` image.

    Per axis the tile is ``min(tile_size, length rounded up to multiple)``, so an image smaller
    than ``tile_size`` is one tile padded by less than ``multiple`` pixels; the image is padded
    to a multiple of ``align`` and to at least the tile.
    """
    if tile_size < multiple or tile_size % multiple:
        raise ValueError(f"tile size {tile_size} must be a positive multiple of {multiple}")
    if height < 1 or width < 1:
        raise ValueError(f"image size {width}×{height} is empty")
    tile_h = min(tile_size, round_up(height, multiple))
    tile_w = min(tile_size, round_up(width, multiple))
    padded_h = max(round_up(height, align), tile_h)
    padded_w = max(round_up(width, align), tile_w)
    rows = tile_starts(padded_h, tile_h, min(min_overlap, tile_h - align), align)
    cols = tile_starts(padded_w, tile_w, min(min_overlap, tile_w - align), align)
    return TilePlan(height, width, padded_h, padded_w, tile_h, tile_w, tuple(rows), tuple(cols))


def _mirror_indices(size: int, target: int, device: torch.device) -> torch.Tensor:
    """Indices 0..target−1 mirrored into 0..size−1 without repeating the edge (period 2·size−2)."""
    index = torch.arange(target, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = index % period
    return torch.where(index < size, index, period - index)


def reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad B×C×h×w ``x`` at the bottom and right to ``height``×``width`` by mirror reflection.

    Works for any amount (the mirror repeats); ``height`` ≥ h and ``width`` ≥ w.
    """
    h, w = x.shape[-2:]
    if height < h or width < w:
        raise ValueError(f"cannot pad {h}×{w} down to {height}×{width}")
    if (height, width) == (h, w):
        return x
    rows = _mirror_indices(h, height, x.device)
    cols = _mirror_indices(w, width, x.device)
    return x[..., rows[:, None], cols[None, :]]
