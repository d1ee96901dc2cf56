"""Reading and writing files: photos, depth maps, embedded depth, sidecars, atomic writes.

Images are ``H×W×3`` float32 sRGB-encoded arrays in [0, 1]; depth maps are ``H×W`` float32
disparity in [0, 1], larger = nearer. Every write is atomic and refuses to replace an
existing file unless ``overwrite=True``.
"""

from __future__ import annotations

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
