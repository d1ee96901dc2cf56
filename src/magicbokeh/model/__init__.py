"""The MagicBokeh network: pruned UNet, defocus ControlNet, focus attention, LoRA, checkpoints.

Needs the ``diffusion`` extra (diffusers, peft, safetensors). Names are imported lazily so that
``magicbokeh.model.safe_unpickle`` works with torch alone.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MagicBokehNetwork": "magicbokeh.model.network",
    "MagicBokehUNet": "magicbokeh.model.unet",
    "MagicBokehControlNet": "magicbokeh.model.controlnet",
    "FocusMaskAttnProcessor": "magicbokeh.model.mask_attention",
    "install_focus_attention": "magicbokeh.model.mask_attention",
    "convert_official": "magicbokeh.model.official",
    "network_from_official": "magicbokeh.model.official",
    "read_official_checkpoint": "magicbokeh.model.official",
    "load_untrusted_torch_file": "magicbokeh.model.safe_unpickle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'magicbokeh.model' has no attribute {name!r}")
