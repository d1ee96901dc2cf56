"""JSON sidecars: the settings that produced an output image, stored beside it.

``out.png`` gets ``out.png.json``: the caller's settings (engine, model, depth source,
``d_f``, ``K``, seed, ...) plus a ``versions`` block (magicbokeh, Python, torch, numpy,
Pillow, and diffusers/transformers when installed) and a ``created`` timestamp (ISO 8601,
UTC), written with sorted keys and an indent of 2, atomically. numpy scalars and arrays,
torch tensors, paths, tuples and sets become plain JSON values.
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import atomic_write

__all__ = ["package_versions", "read_sidecar", "sidecar_path", "write_sidecar"]

_REPORTED_PACKAGES = {
    "torch": "torch",
    "numpy": "numpy",
    "pillow": "pillow",
    "diffusers": "diffusers",
    "transformers": "transformers",
}


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    """``<image path>.json``, e.g. ``out.png`` → ``out.png.json``."""
    image = Path(image_path).expanduser()
    return image.with_name(image.name + ".json")


def package_versions() -> dict[str, str]:
    """Versions of magicbokeh, Python and the installed numerical packages (read, not imported)."""
    from magicbokeh import __version__

    versions = {"magicbokeh": __version__, "python": platform.python_version()}
    for key, distribution in _REPORTED_PACKAGES.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    """Recursively turn ``value`` into JSON-ready builtins."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if type(value).__module__ == "torch" and hasattr(value, "tolist"):
        return _plain(value.tolist())
    raise TypeError(f"cannot store a {type(value).__name__} in a sidecar: {value!r}")


def write_sidecar(
    image_path: str | os.PathLike[str], settings: dict[str, Any], *, overwrite: bool
) -> Path:
    """Write ``settings`` (plus ``versions`` and ``created``) beside ``image_path``.

    Returns the sidecar path. Non-finite floats are stored as the strings ``"nan"``,
    ``"inf"``, ``"-inf"`` so the file stays valid JSON.

    Raises:
        MagicBokehError: the sidecar exists and ``overwrite`` is False, or it cannot be
            written. TypeError: a setting has a type JSON cannot represent.
    """
    record = _plain(dict(settings))
    record["versions"] = package_versions()
    record["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    target = sidecar_path(image_path)
    with atomic_write(target, overwrite=overwrite) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return target


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sidecar; ``path`` may be the ``.json`` file or the image it belongs to.

    Raises:
        MagicBokehError: the sidecar is missing or is not a JSON object.
    """
    file = Path(path).expanduser()
    if file.suffix.lower() != ".json":
        file = sidecar_path(file)
    if not file.is_file():
        raise MagicBokehError(f"sidecar {file} does not exist; check the path")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MagicBokehError(
            f"sidecar {file} is not valid JSON ({exc}); fix or delete it"
        ) from None
    if not isinstance(record, dict):
        raise MagicBokehError(f"sidecar {file} does not hold a JSON object; fix or delete it")
    return record
