"""Reading and writing files: photos, depth maps, embedded depth, sidecars, atomic writes.

Images are ``H×W×3`` float32 sRGB-encoded arrays in [0, 1]; depth maps are ``H×W`` float32
disparity in [0, 1], larger = nearer. Every write is atomic and refuses to replace an
existing file unless ``overwrite=True``.

Submodules load on first use, so ``from magicbokeh.io import load_image`` imports only what
reading a photo needs; every name below works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from magicbokeh.io.atomic import atomic_write, ensure_writable
    from magicbokeh.io.depth_files import (
        DEPTH_READ_EXTENSIONS,
        DEPTH_WRITE_EXTENSIONS,
        depth_to_disparity,
        load_depth,
        match_depth_to_image,
        normalize_disparity,
        read_pfm,
        save_depth,
        write_pfm,
    )
    from magicbokeh.io.embedded_depth import range_to_disparity, read_embedded_depth
    from magicbokeh.io.images import (
        MAX_PIXELS,
        SUPPORTED_READ,
        SUPPORTED_WRITE,
        LoadedImage,
        apply_exif_orientation,
        from_tensor,
        load_image,
        save_image,
        to_tensor,
    )
    from magicbokeh.io.sidecar import package_versions, read_sidecar, sidecar_path, write_sidecar

_SOURCES = {
    "DEPTH_READ_EXTENSIONS": "magicbokeh.io.depth_files",
    "DEPTH_WRITE_EXTENSIONS": "magicbokeh.io.depth_files",
    "LoadedImage": "magicbokeh.io.images",
    "MAX_PIXELS": "magicbokeh.io.images",
    "SUPPORTED_READ": "magicbokeh.io.images",
    "SUPPORTED_WRITE": "magicbokeh.io.images",
    "apply_exif_orientation": "magicbokeh.io.images",
    "atomic_write": "magicbokeh.io.atomic",
    "depth_to_disparity": "magicbokeh.io.depth_files",
    "ensure_writable": "magicbokeh.io.atomic",
    "from_tensor": "magicbokeh.io.images",
    "load_depth": "magicbokeh.io.depth_files",
    "load_image": "magicbokeh.io.images",
    "match_depth_to_image": "magicbokeh.io.depth_files",
    "normalize_disparity": "magicbokeh.io.depth_files",
    "package_versions": "magicbokeh.io.sidecar",
    "range_to_disparity": "magicbokeh.io.embedded_depth",
    "read_embedded_depth": "magicbokeh.io.embedded_depth",
    "read_pfm": "magicbokeh.io.depth_files",
    "read_sidecar": "magicbokeh.io.sidecar",
    "save_depth": "magicbokeh.io.depth_files",
    "save_image": "magicbokeh.io.images",
    "sidecar_path": "magicbokeh.io.sidecar",
    "to_tensor": "magicbokeh.io.images",
    "write_pfm": "magicbokeh.io.depth_files",
    "write_sidecar": "magicbokeh.io.sidecar",
}

__all__ = [
    "DEPTH_READ_EXTENSIONS",
    "DEPTH_WRITE_EXTENSIONS",
    "MAX_PIXELS",
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
    "LoadedImage",
    "apply_exif_orientation",
    "atomic_write",
    "depth_to_disparity",
    "ensure_writable",
    "from_tensor",
    "load_depth",
    "load_image",
    "match_depth_to_image",
    "normalize_disparity",
    "package_versions",
    "range_to_disparity",
    "read_embedded_depth",
    "read_pfm",
    "read_sidecar",
    "save_depth",
    "save_image",
    "sidecar_path",
    "to_tensor",
    "write_pfm",
    "write_sidecar",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
