"""magicbokeh: super-resolution and controllable lens bokeh in one pass.

>>> import magicbokeh
>>> result = magicbokeh.render("photo.jpg", focus=(820, 410), aperture=24)  # doctest: +SKIP
>>> result.image.shape, result.focus_disparity  # doctest: +SKIP

Public names are imported on first use, so ``import magicbokeh`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "render": "magicbokeh.api",
    "RenderResult": "magicbokeh.api",
    "FocusSpec": "magicbokeh.focus",
    "MagicBokehError": "magicbokeh.errors",
    "Aperture": "magicbokeh.optics",
    "render_physical": "magicbokeh.optics",
    "load_image": "magicbokeh.io",
    "save_image": "magicbokeh.io",
    "load_depth": "magicbokeh.io",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'magicbokeh' has no attribute {name!r}")
