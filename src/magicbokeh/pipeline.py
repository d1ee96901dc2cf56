"""One-step MagicBokeh inference on whole images: defocus map, tiling, blending, colour fix.

``MagicBokehPipeline(image, disparity, focus_disparity, aperture)`` restores an sRGB photo and
renders lens bokeh around the focus plane. Mode ``"released"`` reproduces every convention of the
released inference script:

- disparity quantised to 8 bits by truncation: d₈ = ⌊255·d⌋/255 (float32);
- defocus m = |d₈ − d_f|·K/32 in float32 (K = ``aperture``, trained for 0..32), fed as 2m − 1;
- focus mask: in focus where not (m > 0.1), the threshold rounded to float32;
- 512×512 pixel tiles with stride 256, plus a bottom row, right column and corner at the borders
  (images must be at least 512×512);
- tiles blended in pixel space with tent weights (256-long ``linspace`` ramps, end points
  included) after clamping each decoded tile to [−1, 1];
- the output ×0.5+0.5 truncated to 8 bits, then the AdaIN colour fix against the input (per
  channel mean and unbiased std + 1e-5), clamped and truncated to 8 bits again.

:func:`released_focus_from_mask` is the released focus rule for a salient mask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from magicbokeh.errors import MagicBokehError
from magicbokeh.model.network import NETWORK_SUBFOLDER, MagicBokehNetwork

__all__ = [
    "MagicBokehOutput",
    "MagicBokehPipeline",
    "adain_color_fix",
    "blend_weights",
    "quantize_disparity",
    "released_defocus",
    "released_focus_from_mask",
    "tile_positions",
]

TILE = 512
STRIDE = 256
RELEASED_K_SCALE = 32.0
RELEASED_FOCUS_THRESHOLD = 0.1


@dataclass
class MagicBokehOutput:
    """``images``: B×3×H×W sRGB in [0, 1] (multiples of 1/255 in released mode);
    ``blended``: B×3×H×W in [−1, 1], the blended tiles before the colour fix."""

    images: torch.Tensor
    blended: torch.Tensor


def quantize_disparity(disparity: torch.Tensor) -> torch.Tensor:
    """⌊255·d⌋/255 in float32, the released 8-bit truncation of a [0, 1] disparity map."""
    return (disparity.float() * 255).to(torch.uint8).float() / 255


def released_focus_from_mask(disparity: torch.Tensor, mask: torch.Tensor) -> float:
    """The released focus value: lower median of ⌊255·d⌋ under mask pixels ≥ 1/255, over 255.

    ``disparity``: H×W (or 1×1×H×W) in [0, 1]; ``mask``: same size, [0, 1] floats or 8-bit
    values (any pixel > 0 is selected). Returns 0.0 when the mask is empty (the farthest plane).
    """
    levels = (disparity.float() * 255).to(torch.uint8).flatten()
    selected = mask.flatten()
    if selected.shape != levels.shape:
        raise MagicBokehError("focus mask and disparity map must have the same size")
    values = levels[selected > 0]
    if values.numel() == 0:
        return 0.0
    return int(values.median()) / 255.0


def released_defocus(
    disparity_8bit: torch.Tensor, focus_disparity: float, aperture: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(network defocus input 2m − 1, in-focus mask) for m = |d₈ − d_f|·K/32, all float32.

    ``disparity_8bit``: B×1×H×W, already quantised. In focus where not (m > 0.1).
    """
    m = torch.abs(disparity_8bit - focus_disparity) * (aperture / RELEASED_K_SCALE)
    in_focus = ~(m > RELEASED_FOCUS_THRESHOLD)
    return m * 2 - 1, in_focus


def tile_positions(
    height: int, width: int, tile: int = TILE, stride: int = STRIDE
) -> list[tuple[int, int]]:
    """(top, left) of the tiles in processing order: grid, bottom row, right column, corner."""
    if height < tile or width < tile:
        raise MagicBokehError(
            f"image is {width}×{height}; the released tiling needs at least {tile}×{tile} pixels"
        )
    rows = list(range(0, height - tile + 1, stride))
    cols = list(range(0, width - tile + 1, stride))
    positions = [(i, j) for i in rows for j in cols]
    if height % stride:
        positions += [(height - tile, j) for j in cols]
    if width % stride:
        positions += [(i, width - tile) for i in rows]
    if height % stride and width % stride:
        positions.append((height - tile, width - tile))
    return positions


def _profile(start: int, size: int, tile: int, ramp: int) -> torch.Tensor:
    weights = torch.ones(tile)
    if start > 0:
        weights[:ramp] = torch.linspace(0, 1, ramp)
    if start < size - tile:
        weights[-ramp:] = torch.linspace(1, 0, ramp)
    return weights


def blend_weights(
    top: int, left: int, height: int, width: int, tile: int = TILE, ramp: int = STRIDE
) -> torch.Tensor:
    """tile×tile tent weight of the tile at (top, left): outer product of row and column ramps."""
    return _profile(top, height, tile, ramp)[:, None] * _profile(left, width, tile, ramp)[None, :]


def adain_color_fix(target: torch.Tensor, source: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``target`` the per-channel mean and std of ``source`` (both B×C×H×W), clamp to [0, 1].

    std = √(unbiased variance + eps), over all pixels of each channel.
    """

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]

    t_mean, t_std = stats(target)
    s_mean, s_std = stats(source)
    return ((target - t_mean) / t_std * s_std + s_mean).clamp(0, 1)


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """x ∈ [0, 1] → ⌊255·x⌋/255 (``ToPILImage`` then ``ToTensor``)."""
    return (x * 255).to(torch.uint8).float() / 255


class MagicBokehPipeline:
    """Tiled one-step inference with a :class:`~magicbokeh.model.network.MagicBokehNetwork`."""

    def __init__(self, network: MagicBokehNetwork) -> None:
        self.network = network.eval()

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> MagicBokehPipeline:
        """Load a folder written by :meth:`save_pretrained` or ``convert_official``."""
        return cls(
            MagicBokehNetwork.from_pretrained(folder, torch_dtype=torch_dtype, device=device)
        )

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder/network/`` and ``folder/magicbokeh.json``."""
        folder = Path(folder)
        self.network.save_pretrained(folder / NETWORK_SUBFOLDER)
        manifest = {"format": "magicbokeh", "version": 1, "network": NETWORK_SUBFOLDER}
        (folder / "magicbokeh.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        disparity: torch.Tensor,
        focus_disparity: float | Sequence[float] | torch.Tensor,
        aperture: float = 32.0,
        mode: Literal["released"] = "released",
        tile_batch_size: int = 1,
        progress: bool = True,
    ) -> MagicBokehOutput:
        """Restore and render bokeh.

        ``image``: B×3×H×W sRGB in [0, 1]; ``disparity``: B×1×H×W in [0, 1], larger = nearer;
        ``focus_disparity``: d_f in [0, 1], one value or one per image; ``aperture``: K, the blur
        radius in pixels per unit disparity difference (0 = super-resolution only).
        """
        if mode != "released":
            raise MagicBokehError(f"unknown mode {mode!r}; the available mode is 'released'")
        if image.ndim != 4 or image.shape[1] != 3:
            raise MagicBokehError(f"image must be B×3×H×W, got {tuple(image.shape)}")
        batch, _, height, width = image.shape
        if disparity.shape != (batch, 1, height, width):
            raise MagicBokehError(
                f"disparity must be {batch}×1×{height}×{width}, got {tuple(disparity.shape)}"
            )
        if aperture < 0:
            raise MagicBokehError(f"aperture K must be ≥ 0, got {aperture}")
        focus = torch.as_tensor(focus_disparity, dtype=torch.float64).flatten()
        if focus.numel() == 1:
            focus = focus.expand(batch)
        if focus.numel() != batch:
            raise MagicBokehError(f"give one focus disparity or {batch}, got {focus.numel()}")
        if tile_batch_size < 1:
            raise MagicBokehError("tile_batch_size must be ≥ 1")

        image = image.float().cpu()
        positions = tile_positions(height, width)
        disparity_8bit = quantize_disparity(disparity.cpu())
        blended = torch.empty(batch, 3, height, width)
        for b in range(batch):
            defocus, in_focus = released_defocus(
                disparity_8bit[b : b + 1], float(focus[b]), aperture
            )
            blended[b] = self._render_tiles(
                image[b : b + 1] * 2 - 1, defocus, in_focus, positions, tile_batch_size, progress
            )[0]
        out = _to_8bit(blended * 0.5 + 0.5)
        images = _to_8bit(adain_color_fix(out, image))
        return MagicBokehOutput(images=images, blended=blended)

    def _render_tiles(
        self,
        image: torch.Tensor,
        defocus: torch.Tensor,
        in_focus: torch.Tensor,
        positions: list[tuple[int, int]],
        tile_batch_size: int,
        progress: bool,
    ) -> torch.Tensor:
        """Blend the network's tiles of one image: 1×3×H×W in [−1, 1] (float32 accumulation)."""
        _, _, height, width = image.shape
        acc = torch.zeros(1, 3, height, width)
        weight_sum = torch.zeros(1, 1, height, width)
        chunks = [
            positions[i : i + tile_batch_size] for i in range(0, len(positions), tile_batch_size)
        ]
        for chunk in tqdm(chunks, desc="tiles", disable=not progress, leave=False):
            crops = [
                (slice(None), slice(None), slice(i, i + TILE), slice(j, j + TILE)) for i, j in chunk
            ]
            tiles = self.network(
                torch.cat([image[c] for c in crops]),
                torch.cat([defocus[c] for c in crops]),
                torch.cat([in_focus[c] for c in crops]),
            )
            for k, ((i, j), c) in enumerate(zip(chunk, crops, strict=True)):
                w = blend_weights(i, j, height, width)
                acc[c] += tiles[k : k + 1].float().cpu() * w
                weight_sum[c] += w
        safe = weight_sum > 0
        return torch.where(safe, acc / torch.where(safe, weight_sum, 1.0), 0.0)
