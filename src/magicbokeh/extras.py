"""Optional dependencies: which extra brings which package, and a check that names it.

Commands and API paths that need an optional package call :func:`require` before any work, so
a missing package is one line (``pip install "magicbokeh[EXTRA]"``) instead of a traceback.
"""

from __future__ import annotations

import importlib

from magicbokeh.errors import MagicBokehError

__all__ = ["EXTRAS", "LEARNED_ENGINE", "MissingExtra", "install_hint", "missing", "require"]

#: extra → the import names it provides (what ``pip install "magicbokeh[extra]"`` brings),
#: dependencies before their dependents, so a check names the package that is really missing.
EXTRAS: dict[str, tuple[str, ...]] = {
    "diffusion": (
        "safetensors",
        "huggingface_hub",
        "accelerate",
        "diffusers",
        "transformers",
        "peft",
    ),
    "train": (
        "safetensors",
        "accelerate",
        "diffusers",
        "transformers",
        "peft",
        "tensorboard",
        "yaml",
    ),
    "eval": ("pyiqa",),
    "app": ("gradio",),
    "video": ("imageio", "imageio_ffmpeg"),
    "exr": ("OpenEXR",),
}

#: What the learned engine imports to run (a subset of the ``diffusion`` extra).
LEARNED_ENGINE = ("safetensors", "diffusers", "peft")


class MissingExtra(MagicBokehError):
    """An optional package is not installed; the message names the extra to install."""


def install_hint(extra: str) -> str:
    """``pip install "magicbokeh[extra]"``."""
    return f'pip install "magicbokeh[{extra}]"'


def missing(extra: str, modules: tuple[str, ...] | None = None) -> str | None:
    """The first module of ``extra`` (or of ``modules``) that does not import, else None.

    When a module fails because a package it needs is missing, that package is named.
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}")
    for name in modules if modules is not None else EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ImportError as error:
            return (error.name or name).split(".")[0]
    return None


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` (or ``modules``) imports.

    ``what`` names the feature for the message, e.g. ``"the learned engine"``.
    """
    name = missing(extra, modules)
    if name is not None:
        raise MissingExtra(f"{what} needs the optional package '{name}': {install_hint(extra)}")
