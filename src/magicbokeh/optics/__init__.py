"""Physically based, weight-free bokeh: aperture kernels, colour transfer, layered renderer.

Public API: :func:`render_physical` (fast, tiled), :func:`render_scatter_reference` (exact,
slow, for tests), :class:`Aperture`, :func:`srgb_to_linear`, :func:`linear_to_srgb`.
"""

from __future__ import annotations

from magicbokeh.optics.aperture import Aperture
from magicbokeh.optics.color import linear_to_srgb, srgb_to_linear
from magicbokeh.optics.render import DEFAULT_HIGHLIGHT, render_physical
from magicbokeh.optics.scatter import render_scatter_reference

__all__ = [
    "DEFAULT_HIGHLIGHT",
    "Aperture",
    "linear_to_srgb",
    "render_physical",
    "render_scatter_reference",
    "srgb_to_linear",
]
