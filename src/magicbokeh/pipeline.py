"""One-step MagicBokeh inference on whole images: defocus map, tiling, blending, colour fix.

``MagicBokehPipeline(image, disparity, focus_disparity, aperture)`` restores an sRGB photo and
renders lens bokeh around the focus plane. Two modes:

``mode="fast"`` (default):

- defocus m = |d − d_f|·K/32 in float32 from the unquantised disparity, fed as 2m − 1; in focus
  where not (m > 0.1);
- the fewest ``tile_size`` tiles (512 by default, any multiple of 64) whose neighbours overlap by
  at least ``tile_overlap`` pixels (96 by default), starts spread evenly (see
  :mod:`magicbokeh.tiling`): 80 tiles for a 4032×3024 photo (overlaps 120–160 px) instead of the
  released 165, 30 with 768 tiles;
- ``tile_batch_size`` tiles per network call (4 by default), each with attention masks from its
  own focus mask;
- decoded tiles clamped to [−1, 1] and blended in pixel space with raised-cosine weights across
  each whole overlap;
- images smaller than a tile are padded by mirror reflection and cropped back;
- the wavelet colour fix in float (no 8-bit truncation);
- on out-of-memory: half the tile batch, again down to 1, then smaller tiles (512, then 256),
  then :class:`~magicbokeh.errors.MagicBokehError`.

``mode="released"`` reproduces every convention of the released inference script:

- disparity quantised to 8 bits by truncation: d₈ = ⌊255·d⌋/255 (float32);
- defocus m = |d₈ − d_f|·K/32 in float32 (K = ``aperture``, trained for 0..32), fed as 2m − 1;
- focus mask: in focus where not (m > 0.1), the threshold rounded to float32;
- 512×512 pixel tiles with stride 256, plus a bottom row, right column and corner at the borders;
- tiles blended in pixel space with tent weights (256-long ``linspace`` ramps, end points
  included) after clamping each decoded tile to [−1, 1];
- the output ×0.5+0.5 truncated to 8 bits, then the AdaIN colour fix against the input (per
  channel mean and unbiased std + 1e-5), clamped and truncated to 8 bits again.

The released script needs images of at least 512×512 (smaller ones leave its tile list empty and
``torch.stack([])`` raises); here they are padded by reflection to 512 and cropped back. The
released script samples the VAE posterior without a seed; ``vae_sample=True`` with a
``generator`` does that reproducibly, the default uses the posterior mode.

:func:`released_focus_from_mask` is the released focus rule for a salient mask.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from magicbokeh.color_fix import COLOR_FIXES, adain_color_fix, apply_color_fix
from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import LEARNED_FOCUS_THRESHOLD, learned_defocus
from magicbokeh.io.atomic import staged_folder
from magicbokeh.model.network import NETWORK_SUBFOLDER, MagicBokehNetwork
from magicbokeh.tiling import TILE_MULTIPLE, plan_tiles, reflect_pad

__all__ = [
    "FAST_TILE_SIZE",
    "MagicBokehOutput",
    "MagicBokehPipeline",
    "adain_color_fix",
    "blend_weights",
    "is_out_of_memory",
    "quantize_disparity",
    "released_defocus",
    "released_focus_from_mask",
    "tile_positions",
]

TILE = 512
STRIDE = 256
FAST_TILE_SIZE = 512
FAST_TILE_OVERLAP = 96
FAST_TILE_BATCH = 4
FALLBACK_TILE_SIZES = (512, 256)
"""Tile sizes fast mode falls back to, in order, when one tile per call runs out of memory."""

Mode = Literal["fast", "released"]


@dataclass
class MagicBokehOutput:
    """Result of :class:`MagicBokehPipeline`.

    ``images``: B×3×H×W sRGB in [0, 1] (multiples of 1/255 in released mode);
    ``blended``: B×3×H×W in [−1, 1], the blended tiles before the colour fix;
    ``tile_count``: tiles per image; ``tile_size``: (height, width) of every tile;
    ``tile_positions``: (top, left) of each tile in the padded image (padding is at the bottom and
    right, so these are input coordinates too); ``defocus``: B×1×H×W, the K-scaled defocus map
    m = |d − d_f|·K/32 the network saw (its input is 2m − 1); ``focus_mask``: B×1×H×W bool, true
    where in focus (the attention masks of each tile come from its crop of this map).
    """

    images: torch.Tensor
    blended: torch.Tensor
    tile_count: int = 0
    tile_size: tuple[int, int] = (0, 0)
    tile_positions: list[tuple[int, int]] = field(default_factory=list)
    defocus: torch.Tensor | None = None
    focus_mask: torch.Tensor | None = None


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

    ``disparity_8bit``: B×1×H×W, already quantised (fast mode passes the float disparity).
    In focus where not (m > 0.1).
    """
    m = learned_defocus(disparity_8bit, focus_disparity, aperture)
    in_focus = ~(m > LEARNED_FOCUS_THRESHOLD)
    return m * 2 - 1, in_focus


def tile_positions(
    height: int, width: int, tile: int = TILE, stride: int = STRIDE
) -> list[tuple[int, int]]:
    """Released (top, left) of the tiles in processing order: grid, bottom row, right column,
    corner. Needs an image of at least tile×tile (the pipeline pads smaller ones)."""
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


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """x ∈ [0, 1] → ⌊255·x⌋/255 (``ToPILImage`` then ``ToTensor``)."""
    return (x * 255).to(torch.uint8).float() / 255


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, or a RuntimeError saying "out of memory")."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _OutOfMemory(Exception):
    """One tile per network call did not fit on the device."""


@dataclass
class _Grid:
    """Tiles of one padded image: size, positions and the weight of the tile at (top, left)."""

    padded: tuple[int, int]
    tile: tuple[int, int]
    positions: list[tuple[int, int]]
    weight: Callable[[int, int], torch.Tensor]


class MagicBokehPipeline:
    """Tiled one-step inference with a :class:`~magicbokeh.model.network.MagicBokehNetwork`."""

    def __init__(self, network: MagicBokehNetwork) -> None:
        self.network = network.eval()

    @property
    def device(self) -> torch.device:
        """Device of the network."""
        return self.network.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the network."""
        return self.network.dtype

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> MagicBokehPipeline:
        """Move the network to ``device`` and/or cast it to ``dtype`` (fp32, bf16, fp16)."""
        if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise MagicBokehError(
                f"dtype {dtype} is not supported; use float32, bfloat16 or float16"
            )
        # torch's own ``to``: diffusers' override warns about fp32-only modules even when, as
        # here, there are none.
        nn.Module.to(self.network, device=device, dtype=dtype)
        return self

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        merge_lora: bool = False,
    ) -> MagicBokehPipeline:
        """Load a folder written by :meth:`save_pretrained` or ``convert_official``.

        ``merge_lora`` folds the SR LoRA into the base weights in float32 before the cast to
        ``torch_dtype`` (faster; equal within float rounding, see
        :meth:`MagicBokehNetwork.merge_sr_lora`).
        """
        if not merge_lora:
            return cls(
                MagicBokehNetwork.from_pretrained(folder, torch_dtype=torch_dtype, device=device)
            )
        network = MagicBokehNetwork.from_pretrained(folder, torch_dtype=torch.float32)
        network.merge_sr_lora()
        return cls(network).to(device=device, dtype=torch_dtype)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder/network/`` and ``folder/magicbokeh.json``.

        Both are staged in a temporary folder beside ``folder`` and moved in when complete
        (other entries of ``folder``, such as ``depth/``, are kept), so an interrupted save
        leaves no half-written model.
        """
        folder = Path(folder)
        with staged_folder(folder, merge=True) as staging:
            self.network.save_pretrained(staging / NETWORK_SUBFOLDER)
            manifest = {"format": "magicbokeh", "version": 1, "network": NETWORK_SUBFOLDER}
            (staging / "magicbokeh.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return folder

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        disparity: torch.Tensor,
        focus_disparity: float | Sequence[float] | torch.Tensor,
        aperture: float = 32.0,
        mode: Mode = "fast",
        tile_batch_size: int | None = None,
        progress: bool = True,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        color_fix: str | None = None,
        vae_sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> MagicBokehOutput:
        """Restore and render bokeh.

        ``image``: B×3×H×W sRGB in [0, 1]; ``disparity``: B×1×H×W in [0, 1], larger = nearer;
        ``focus_disparity``: d_f in [0, 1], one value or one per image; ``aperture``: K, the blur
        radius in pixels per unit disparity difference (0 = super-resolution only).
        ``mode``: "fast" or "released" (see the module docstring). ``tile_batch_size``: tiles
        per network call (fast 4, released 1). ``tile_size``: fast-mode tile side in pixels, a
        multiple of 64 (512; 768 suits large GPUs). ``tile_overlap``: fast-mode minimum overlap
        in pixels, a multiple of 8 (min(96, tile_size/4)). ``color_fix``: "adain", "wavelet" or
        "none" (released "adain", fast "wavelet"). ``vae_sample``: sample the VAE posterior
        (noise from ``generator``) instead of taking its mode.
        """
        settings = _settings(mode, tile_batch_size, tile_size, tile_overlap, color_fix)
        focus = _check_inputs(image, disparity, focus_disparity, aperture)
        batch, _, height, width = image.shape
        device = self.device
        image = image.to(device=device, dtype=torch.float32)
        disparity = disparity.to(device=device, dtype=torch.float32)
        if mode == "released":
            disparity = quantize_disparity(disparity)
        seed = None
        if vae_sample:
            device_of_generator = "cpu" if generator is None else generator.device
            seed = int(
                torch.randint(0, 2**62, (1,), generator=generator, device=device_of_generator)
            )

        sizes = [settings["tile_size"]]
        if mode == "fast":
            sizes += [s for s in FALLBACK_TILE_SIZES if s < settings["tile_size"]]
        tried: list[tuple[int, int]] = []
        for size in sizes:
            grid = self._grid(mode, height, width, size, min(settings["tile_overlap"], size // 2))
            if grid.tile in tried:
                continue
            tried.append(grid.tile)
            try:
                blended, defocus, in_focus = self._render(
                    image,
                    disparity,
                    focus,
                    aperture,
                    grid,
                    settings["tile_batch_size"],
                    progress,
                    seed,
                )
                break
            except _OutOfMemory:
                continue
        else:
            tile_h, tile_w = tried[-1]
            raise MagicBokehError(
                f"out of memory on {device} even with one {tile_h}×{tile_w} tile per network "
                "call; free device memory, load the model in float16 or bfloat16, or run on a "
                "device with more memory"
            )

        if mode == "released":
            out = _to_8bit(blended * 0.5 + 0.5)
            images = _to_8bit(apply_color_fix(out, image, settings["color_fix"]))
        else:
            images = apply_color_fix(
                (blended * 0.5 + 0.5).clamp(0, 1), image, settings["color_fix"]
            )
        return MagicBokehOutput(
            images=images.cpu(),
            blended=blended.cpu(),
            tile_count=len(grid.positions),
            tile_size=grid.tile,
            tile_positions=list(grid.positions),
            defocus=((defocus + 1) / 2).cpu(),
            focus_mask=in_focus.cpu(),
        )

    def _grid(self, mode: str, height: int, width: int, tile_size: int, overlap: int) -> _Grid:
        if mode == "released":
            padded = (max(height, TILE), max(width, TILE))
            return _Grid(
                padded,
                (TILE, TILE),
                tile_positions(*padded),
                lambda top, left: blend_weights(top, left, *padded),
            )
        plan = plan_tiles(height, width, tile_size, overlap)
        return _Grid(
            (plan.padded_height, plan.padded_width),
            (plan.tile_height, plan.tile_width),
            plan.positions,
            plan.weight,
        )

    def _render(
        self,
        image: torch.Tensor,
        disparity: torch.Tensor,
        focus: torch.Tensor,
        aperture: float,
        grid: _Grid,
        tile_batch_size: int,
        progress: bool,
        seed: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(blended B×3×H×W in [−1, 1], defocus input B×1×H×W, in-focus B×1×H×W) on the device."""
        batch, _, height, width = image.shape
        image = reflect_pad(image, *grid.padded)
        disparity = reflect_pad(disparity, *grid.padded)
        blended, defocus_maps, focus_masks = [], [], []
        bar = tqdm(
            total=batch * len(grid.positions), desc="tiles", disable=not progress, leave=False
        )
        state = {"batch": tile_batch_size}
        try:
            for b in range(batch):
                defocus, in_focus = released_defocus(
                    disparity[b : b + 1], float(focus[b]), aperture
                )
                noise = None if seed is None else self._tile_noise(grid, seed + b)
                out = self._render_tiles(
                    image[b : b + 1] * 2 - 1, defocus, in_focus, grid, state, bar, noise
                )
                blended.append(out[..., :height, :width])
                defocus_maps.append(defocus[..., :height, :width])
                focus_masks.append(in_focus[..., :height, :width])
        finally:
            bar.close()
        return torch.cat(blended), torch.cat(defocus_maps), torch.cat(focus_masks)

    def _tile_noise(self, grid: _Grid, seed: int) -> list[torch.Tensor]:
        """One standard-normal latent per tile, in grid order, from a generator seeded ``seed``."""
        scale = self.network.latent_scale
        channels = self.network.vae.config.latent_channels
        shape = (1, channels, grid.tile[0] // scale, grid.tile[1] // scale)
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(shape, generator=gen) for _ in grid.positions]

    def _render_tiles(
        self,
        image: torch.Tensor,
        defocus: torch.Tensor,
        in_focus: torch.Tensor,
        grid: _Grid,
        state: dict[str, int],
        bar: tqdm,
        noise: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """Blend the network's tiles of one image: 1×3×H×W in [−1, 1] (float32 accumulation).

        An out-of-memory error halves ``state["batch"]`` and retries the same tiles; at one tile
        per call it raises :class:`_OutOfMemory`.
        """
        _, _, height, width = image.shape
        tile_h, tile_w = grid.tile
        acc = torch.zeros(1, 3, height, width, device=image.device)
        weight_sum = torch.zeros(1, 1, height, width, device=image.device)
        index = 0
        while index < len(grid.positions):
            chunk = grid.positions[index : index + state["batch"]]
            crops = [
                (slice(None), slice(None), slice(i, i + tile_h), slice(j, j + tile_w))
                for i, j in chunk
            ]
            kwargs = {}
            if noise is not None:
                kwargs["latent_noise"] = torch.cat(noise[index : index + len(chunk)])
            tiles = None
            try:
                tiles = self.network(
                    torch.cat([image[c] for c in crops]),
                    torch.cat([defocus[c] for c in crops]),
                    torch.cat([in_focus[c] for c in crops]),
                    **kwargs,
                )
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            if tiles is None:
                _release_cached_memory(image.device)
                if state["batch"] == 1:
                    raise _OutOfMemory
                state["batch"] //= 2
                continue
            for k, ((i, j), c) in enumerate(zip(chunk, crops, strict=True)):
                w = grid.weight(i, j).to(image.device)
                acc[c] += tiles[k : k + 1].float() * w
                weight_sum[c] += w
            index += len(chunk)
            bar.update(len(chunk))
        safe = weight_sum > 0
        return torch.where(safe, acc / torch.where(safe, weight_sum, 1.0), 0.0)


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _settings(
    mode: str,
    tile_batch_size: int | None,
    tile_size: int | None,
    tile_overlap: int | None,
    color_fix: str | None,
) -> dict:
    """Validated settings with the mode's defaults filled in."""
    if mode not in ("fast", "released"):
        raise MagicBokehError(f"unknown mode {mode!r}; use 'fast' or 'released'")
    if mode == "released":
        if tile_size not in (None, TILE) or tile_overlap not in (None, STRIDE):
            raise MagicBokehError(
                f"released mode uses {TILE} tiles with {STRIDE} overlap; use mode='fast' to "
                "choose tile_size or tile_overlap"
            )
        tile_size, tile_overlap = TILE, STRIDE
        tile_batch_size = 1 if tile_batch_size is None else tile_batch_size
        color_fix = color_fix or "adain"
    else:
        tile_size = FAST_TILE_SIZE if tile_size is None else tile_size
        if tile_size < TILE_MULTIPLE or tile_size % TILE_MULTIPLE:
            raise MagicBokehError(
                f"tile_size must be a positive multiple of {TILE_MULTIPLE}, got {tile_size}"
            )
        if tile_overlap is None:
            tile_overlap = min(FAST_TILE_OVERLAP, tile_size // 4)
        if tile_overlap < 0 or tile_overlap % 8 or tile_overlap > tile_size // 2:
            raise MagicBokehError(
                f"tile_overlap must be a multiple of 8 in [0, {tile_size // 2}], got {tile_overlap}"
            )
        tile_batch_size = FAST_TILE_BATCH if tile_batch_size is None else tile_batch_size
        color_fix = color_fix or "wavelet"
    if tile_batch_size < 1:
        raise MagicBokehError("tile_batch_size must be ≥ 1")
    if color_fix not in COLOR_FIXES:
        raise MagicBokehError(
            f"unknown colour fix {color_fix!r}; use one of {', '.join(COLOR_FIXES)}"
        )
    return {
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
        "tile_batch_size": tile_batch_size,
        "color_fix": color_fix,
    }


def _check_inputs(
    image: torch.Tensor,
    disparity: torch.Tensor,
    focus_disparity: float | Sequence[float] | torch.Tensor,
    aperture: float,
) -> torch.Tensor:
    """Validate shapes and values; returns the focus disparity per image (float64 B-vector)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise MagicBokehError(f"image must be B×3×H×W, got {tuple(image.shape)}")
    batch, _, height, width = image.shape
    if batch < 1 or height < 1 or width < 1:
        raise MagicBokehError(f"image is empty: {tuple(image.shape)}")
    if disparity.shape != (batch, 1, height, width):
        raise MagicBokehError(
            f"disparity must be {batch}×1×{height}×{width}, got {tuple(disparity.shape)}"
        )
    if not math.isfinite(aperture) or aperture < 0:
        raise MagicBokehError(f"aperture K must be a finite number ≥ 0, got {aperture}")
    if not bool(torch.isfinite(disparity).all()):
        bad = int((~torch.isfinite(disparity)).sum())
        raise MagicBokehError(f"disparity has {bad} NaN/inf values: fill them first")
    focus = torch.as_tensor(focus_disparity, dtype=torch.float64).flatten()
    if not bool(torch.isfinite(focus).all()):
        raise MagicBokehError(f"focus disparity must be finite, got {focus.tolist()}")
    if focus.numel() == 1:
        focus = focus.expand(batch)
    if focus.numel() != batch:
        raise MagicBokehError(f"give one focus disparity or {batch}, got {focus.numel()}")
    return focus
