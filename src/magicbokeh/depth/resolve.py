"""Pick the disparity for an image: a file, an array, the photo's own depth, a model, or a guess.

``depth`` may be:

- ``None`` or ``"auto"``: depth embedded in the photo if present, else an installed depth
  model (the degradation-aware one first), else :func:`heuristic_disparity` with a warning;
- ``"embedded"``: the depth stored by the phone in the file (iPhone portrait HEIC, Google
  GDepth / Dynamic Depth JPEG); an error when there is none;
- ``"heuristic"``: the weight-free guess;
- a path to a depth file, read with ``kind`` (``"disparity"``: larger = nearer; ``"depth"``:
  larger = farther, converted as 1/depth) and min-max normalised;
- an array ``H×W`` (or a tensor ``1×1×H×W``), taken as disparity in [0, 1].

Every answer is ``H×W`` float32 disparity in [0, 1] at the image's size, with a short
``depth_source`` string for sidecars and, for the guess, a warning for the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import require
from magicbokeh.io import load_depth, match_depth_to_image, read_embedded_depth
from magicbokeh.io.depth_files import check_disparity
from magicbokeh.runtime import DEPTH_MODEL_DIRS, installed_model

HEURISTIC_WARNING = (
    "no depth given and no depth model installed: using a weight-free depth guess "
    "(pass --depth FILE for real depth, or run `magicbokeh download` for the depth model)"
)


@dataclass(frozen=True)
class ResolvedDepth:
    """Disparity ``H×W`` float32 in [0, 1] (larger = nearer), where it came from, any warning."""

    disparity: np.ndarray
    source: str
    warning: str | None = None


def resolve_depth(
    depth: object,
    rgb: np.ndarray,
    *,
    image_path: str | Path | None = None,
    kind: str = "disparity",
    device: torch.device | None = None,
    normalize: bool = True,
) -> ResolvedDepth:
    """Disparity for ``rgb`` (``H×W×3`` sRGB in [0, 1]) from ``depth`` (see the module doc).

    ``normalize=False`` uses a depth file's values as they are (they must lie in [0, 1]).
    """
    height, width = rgb.shape[:2]
    if kind not in ("disparity", "depth"):
        raise MagicBokehError(f"unknown depth kind {kind!r}: use disparity or depth")
    if isinstance(depth, np.ndarray | torch.Tensor):
        array = depth.detach().cpu().numpy() if isinstance(depth, torch.Tensor) else depth
        array = np.squeeze(np.asarray(array, dtype=np.float32))
        check_disparity(array)
        if kind == "depth":
            raise MagicBokehError(
                "depth arrays must be disparity in [0, 1]: convert with 1/depth and normalise"
            )
        return ResolvedDepth(match_depth_to_image(array, height, width, source="depth"), "array")
    if depth is None or depth == "auto":
        embedded = _embedded(image_path)
        if embedded is not None:
            return ResolvedDepth(match_depth_to_image(embedded, height, width), "embedded")
        learned = _learned(rgb, device)
        if learned is not None:
            return learned
        return ResolvedDepth(_heuristic(rgb), "heuristic", HEURISTIC_WARNING)
    if depth == "embedded":
        embedded = _embedded(image_path)
        if embedded is None:
            raise MagicBokehError(
                f"{image_path or 'the image'} carries no embedded depth map: "
                "pass --depth FILE or --depth auto"
            )
        return ResolvedDepth(match_depth_to_image(embedded, height, width), "embedded")
    if depth == "heuristic":
        return ResolvedDepth(_heuristic(rgb), "heuristic", HEURISTIC_WARNING)
    path = Path(str(depth))
    disparity = load_depth(path, kind=kind, normalize=normalize)
    if not normalize:
        check_disparity(disparity, f"depth file {path}")
    return ResolvedDepth(
        match_depth_to_image(disparity, height, width, source=path.name),
        f"file:{path.expanduser().resolve()}",
    )


def _embedded(image_path: str | Path | None) -> np.ndarray | None:
    return None if image_path is None else read_embedded_depth(image_path)


def _learned(rgb: np.ndarray, device: torch.device | None) -> ResolvedDepth | None:
    for name in DEPTH_MODEL_DIRS:
        folder = installed_model(name)
        if folder is None:
            continue
        require("diffusion", f"the installed depth model ({folder})", ("transformers",))
        from magicbokeh.depth.depth_anything import DepthAnythingEstimator

        estimator = DepthAnythingEstimator.from_pretrained(folder, device=device)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        disparity = estimator(image.to(device or "cpu"))[0, 0].float().cpu().numpy()
        return ResolvedDepth(disparity, f"model:{name}")
    return None


def _heuristic(rgb: np.ndarray) -> np.ndarray:
    """:func:`magicbokeh.depth.heuristic.heuristic_disparity`, imported when first needed
    (it brings OpenCV, which a render with a depth file does not use)."""
    from magicbokeh.depth.heuristic import heuristic_disparity

    return heuristic_disparity(rgb)
