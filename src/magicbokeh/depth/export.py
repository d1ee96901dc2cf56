"""Write a Depth Anything V2 model for others to load: transformers folder or original ``.pth``.

- ``transformers``: ``config.json`` + ``model.safetensors`` (``save_pretrained``), loaded by
  :class:`~magicbokeh.depth.depth_anything.DepthAnythingEstimator` and by
  ``DepthAnythingForDepthEstimation.from_pretrained``. Written into
  ``$MAGICBOKEH_HOME/magicbokeh/depth`` (:func:`install_depth_model`) it is the model
  ``--depth auto`` picks first.
- ``original``: the ``DAdepth.pth`` layout the released Depth Anything V2 and MagicBokeh code
  read, ``torch.save({"model": {"module." + k: v}})`` with the original key names
  (``pretrained.*``, ``depth_head.*``; :func:`to_original_state_dict`), float tensors only, so
  ``torch.load(..., weights_only=True)`` reads it.

Both writes are atomic, and refuse to replace an existing output unless ``overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magicbokeh.depth.convert_depth_anything import to_original_state_dict
from magicbokeh.errors import MagicBokehError
from magicbokeh.install import staged_folder
from magicbokeh.io.atomic import atomic_write
from magicbokeh.runtime import DEPTH_MODEL_DIRS, model_home

if TYPE_CHECKING:
    from transformers import DepthAnythingForDepthEstimation

EXPORT_FORMATS = ("transformers", "original")
ORIGINAL_SUFFIXES = (".pth", ".pt")


def save_transformers(
    model: DepthAnythingForDepthEstimation, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``model`` as a transformers folder (``config.json`` + ``model.safetensors``)."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise MagicBokehError(f"{out_dir} is a file; give a folder for the transformers export")
    with staged_folder(out_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
    return out_dir


def save_original(
    model: DepthAnythingForDepthEstimation, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write ``model`` as an original-layout ``DAdepth.pth`` (``{"model": {"module." + k: v}}``)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in ORIGINAL_SUFFIXES:
        raise MagicBokehError(
            f"{path} needs a .pth suffix for the original export (e.g. {path.with_suffix('.pth')})"
        )
    state_dict = to_original_state_dict(model.state_dict())
    checkpoint = {"model": {f"module.{key}": value for key, value in state_dict.items()}}
    with atomic_write(path, overwrite=overwrite) as temporary:
        torch.save(checkpoint, temporary)
    return path


def export_depth_model(
    model: DepthAnythingForDepthEstimation,
    out: str | Path,
    *,
    format: str = "transformers",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` in ``format`` (:data:`EXPORT_FORMATS`) to ``out``; returns ``out``."""
    if format == "transformers":
        return save_transformers(model, out, overwrite=overwrite)
    if format == "original":
        return save_original(model, out, overwrite=overwrite)
    raise MagicBokehError(f"unknown export format {format!r}; use one of {EXPORT_FORMATS}")


def install_depth_model(model: DepthAnythingForDepthEstimation, *, overwrite: bool = False) -> Path:
    """Install ``model`` as the degradation-aware depth model that ``--depth auto`` uses first.

    Writes a transformers folder to ``$MAGICBOKEH_HOME/magicbokeh/depth``; returns that folder.
    """
    return save_transformers(model, model_home() / DEPTH_MODEL_DIRS[0], overwrite=overwrite)
