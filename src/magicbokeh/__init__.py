"""magicbokeh: super-resolution and controllable lens bokeh in one pass."""

from __future__ import annotations

__version__ = "0.1.0"
