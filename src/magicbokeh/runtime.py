"""Where models live and which torch device runs them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from magicbokeh.errors import MagicBokehError

#: Sub-folders of the model home: the MagicBokeh network (with its degradation-aware depth
#: model in `depth/`), and a plain Depth Anything V2 model.
DIFFUSION_MODEL_DIR = "magicbokeh"
DEPTH_MODEL_DIRS = ("magicbokeh/depth", "depth-anything-v2")


def model_home() -> Path:
    """Folder of installed models: ``$MAGICBOKEH_HOME`` or ``~/.cache/magicbokeh``."""
    return Path(os.environ.get("MAGICBOKEH_HOME", Path.home() / ".cache" / "magicbokeh"))


def installed_model(name: str) -> Path | None:
    """The folder of an installed model, or None when it is absent.

    A model is there when ``config.json`` is, in the folder or in its ``network/`` subfolder
    (the MagicBokeh model folder layout); another subfolder's config (say ``depth/``, a depth
    model installed on its own) does not count.
    """
    folder = model_home() / name
    configs = (folder / "config.json", folder / "network" / "config.json")
    return folder if any(config.is_file() for config in configs) else None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda, else mps, else cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MagicBokehError(
            "CUDA was requested but no CUDA device or CUDA build of torch is available: "
            "use --device cpu (or auto), or install a CUDA build of torch"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise MagicBokehError(
            "Apple MPS was requested but is not available here: use --device cpu (or auto)"
        )
    if name not in ("cpu", "cuda", "mps"):
        raise MagicBokehError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)
