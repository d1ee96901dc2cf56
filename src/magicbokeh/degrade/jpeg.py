"""JPEG compression through a real encoder (libjpeg via Pillow), one quality per sample.

The round trip runs on the CPU, one image at a time, and is not differentiable: images are
rounded to 8 bits, encoded as baseline JPEG with 4:2:0 chroma subsampling and the standard
(IJG) quantisation tables scaled by the quality, then decoded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode one ``H×W×3`` uint8 sRGB image at ``quality`` (1..95); returns uint8."""
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        buffer, format="JPEG", quality=int(quality), subsampling=2
    )
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg_compress(images: torch.Tensor, quality: int | Sequence[int]) -> torch.Tensor:
    """JPEG-compress each sample of ``images`` (``B×3×H×W`` sRGB, clamped to [0, 1] first).

    ``quality`` is one value or one per sample. Returns a tensor of the same shape, dtype and
    device whose values are multiples of 1/255. No gradient flows through it.
    """
    b = images.shape[0]
    qualities = [quality] * b if isinstance(quality, int) else list(quality)
    if len(qualities) != b:
        raise ValueError(f"{len(qualities)} JPEG qualities for a batch of {b}")
    with torch.no_grad():
        codes = (images.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        codes = codes.permute(0, 2, 3, 1).cpu().numpy()
        decoded = np.stack([jpeg_round_trip(codes[i], q) for i, q in enumerate(qualities)])
        out = torch.from_numpy(decoded).permute(0, 3, 1, 2)
        return out.to(device=images.device, dtype=images.dtype) / 255.0
