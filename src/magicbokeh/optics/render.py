"""Fast physically based bokeh: layered, occlusion-aware lens blur in linear light.

Pipeline for one image (see ``spec/physics.md``):

1. decode sRGB to linear light and lift clipped highlights (:mod:`.highlight`);
2. map disparity to a continuous signed layer coordinate ``u`` (:mod:`.layers`): layers are
   about one pixel of blur radius apart, behind (negative) and in front of (positive) the
   focal plane;
3. for each layer from far to near: take its soft matte, premultiply colour, extend the layer
   into the area hidden behind nearer layers (push-pull fill from its visible neighbourhood,
   so a semi-transparent blurred foreground edge reveals plausible background), blur colour
   and alpha with the layer's own aperture kernel (scatter semantics) and composite it "over"
   the layers behind it; finally normalise by the accumulated alpha;
4. undo the highlight lift and encode to sRGB.

Speed: a layer of radius ``r`` is blurred at ``1/s`` resolution with ``s`` a power of two such
that ``r/s`` lies in ``[LEVEL_RADIUS, 2*LEVEL_RADIUS)`` (``s = 1`` below ``2*LEVEL_RADIUS``), then
upsampled bilinearly; each layer is cropped to the blocks where it is present; kernels up to
13 px wide are applied directly, larger ones by FFT. Images larger than ``max_tile_pixels`` are
rendered in tiles whose overlap covers the largest blur and fill reach, and stitched; all crops
are aligned to absolute image coordinates so tiles agree with the untiled render.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from magicbokeh.errors import MagicBokehError
from magicbokeh.optics.aperture import Aperture
from magicbokeh.optics.blur import convolve, downsample, push_pull_fill, upsample
from magicbokeh.optics.color import linear_to_srgb, srgb_to_linear
from magicbokeh.optics.highlight import boost_highlights, unboost_highlights
from magicbokeh.optics.layers import (
    layer_coordinate,
    layer_coordinate_scalar,
    layer_matte,
    layer_radius,
)

DEFAULT_HIGHLIGHT = 0.5
DEFAULT_MAX_TILE_PIXELS = 1 << 19  # tile size (halo included): fast and bounded memory
LEVEL_RADIUS = 8.0
BLOCK = 16
CAT_EYE_ZONES = (-1.0, -0.5, 0.0, 0.5, 1.0)
_TINY = 1e-12


def render_physical(
    image: Tensor,
    disparity: Tensor,
    focus_disparity: float | Tensor,
    aperture: float,
    *,
    aperture_shape: Aperture = Aperture(),  # noqa: B008 - frozen dataclass, safe default
    highlight: float = DEFAULT_HIGHLIGHT,
    chromatic: tuple[float, float, float] | None = None,
    max_tile_pixels: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Render lens bokeh for ``image`` focused at disparity ``focus_disparity``.

    Args:
        image: ``Bx3xHxW`` sRGB-encoded, values in [0, 1].
        disparity: ``Bx1xHxW`` normalised disparity, larger = nearer (usually in [0, 1]).
        focus_disparity: ``d_f``, a float or a length-B tensor.
        aperture: ``K`` >= 0, blur radius in pixels per unit of disparity difference; the
            circle of confusion of a pixel is ``r = K * |d - d_f|``.
        aperture_shape: aperture outline (disk, polygon, cat-eye).
        highlight: amount of the clipped-highlight lift, >= 0 (0 = off).
        chromatic: per-channel multipliers of ``K`` (longitudinal chromatic aberration),
            ``None`` for the same ``K`` in all channels.
        max_tile_pixels: render in overlapping tiles of at most about this many pixels
            (``None``: ``DEFAULT_MAX_TILE_PIXELS``).
        progress: show a tqdm progress bar over tiles.

    Returns:
        ``Bx3xHxW`` sRGB-encoded in [0, 1], on the input's device and dtype.
    """
    _check_inputs(image, disparity, aperture, highlight, max_tile_pixels)
    batch, _, height, width = image.shape
    focus = _focus_values(focus_disparity, batch)
    multipliers = _chromatic_multipliers(chromatic)
    work_dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    if aperture == 0 or max(multipliers) == 0:
        return image.clamp(0.0, 1.0).clone()
    tile_limit = DEFAULT_MAX_TILE_PIXELS if max_tile_pixels is None else int(max_tile_pixels)

    output = torch.empty_like(image)
    jobs = []
    for b in range(batch):
        scene = _Scene(
            disparity[b, 0], focus[b], float(aperture), multipliers, aperture_shape, highlight
        )
        for tile in _tile_plan(height, width, scene.halo, tile_limit):
            jobs.append((b, scene, tile))
    for b, scene, (y0, y1, x0, x1, core) in tqdm(jobs, disable=not progress, desc="bokeh"):
        srgb = image[b, :, y0:y1, x0:x1].to(work_dtype).clamp(0.0, 1.0)
        linear = boost_highlights(srgb_to_linear(srgb), highlight)
        depth = disparity[b, 0, y0:y1, x0:x1].to(work_dtype)
        cy0, cy1, cx0, cx1 = core
        local_core = (cy0 - y0, cy1 - y0, cx0 - x0, cx1 - x0)
        rendered = scene.render_tile(linear, depth, (y0, x0), local_core, (height, width))
        kept = rendered[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        encoded = linear_to_srgb(unboost_highlights(kept, highlight).clamp(0.0, 1.0))
        output[b, :, cy0:cy1, cx0:cx1] = encoded.to(image.dtype)
    return output


class _Scene:
    """Settings and derived constants for rendering one batch element."""

    def __init__(
        self,
        disparity: Tensor,
        focus: float,
        aperture: float,
        multipliers: tuple[float, float, float],
        shape: Aperture,
        highlight: float,
    ) -> None:
        self.focus = focus
        self.shape = shape
        self.k_max = aperture * max(multipliers)
        groups: dict[float, list[int]] = {}
        for channel, multiplier in enumerate(multipliers):
            groups.setdefault(multiplier, []).append(channel)
        self.groups = [(channels, aperture * m / self.k_max) for m, channels in groups.items()]
        d_min, d_max = float(disparity.min()), float(disparity.max())
        u_far = layer_coordinate_scalar(self.k_max * (d_min - focus))
        u_near = layer_coordinate_scalar(self.k_max * (d_max - focus))
        r_max = max(layer_radius(math.floor(u_far) - 1), layer_radius(math.ceil(u_near) + 1))
        self.halo = _round_up(math.ceil(3.0 * r_max + 4.0 * level_factor(r_max)) + 2, BLOCK)

    def render_tile(
        self,
        linear: Tensor,
        disparity: Tensor,
        origin: tuple[int, int],
        core: tuple[int, int, int, int],
        image_size: tuple[int, int],
    ) -> Tensor:
        """Render one tile: ``linear`` 3xhxw (boosted linear light), ``disparity`` hxw.

        Only the tile-local ``core`` box (y0, y1, x0, x1) of the result is exact; each layer
        reads the tile only within its own blur and fill reach of the core.
        """
        u = layer_coordinate(self.k_max * (disparity - self.focus))
        lo, hi = _block_ranges(u)
        present = [
            layer
            for layer in range(math.floor(float(u.min())), math.ceil(float(u.max())) + 1)
            if bool(((lo < layer + 1) & (hi > layer - 1)).any())
        ]
        result = torch.empty_like(linear)
        for channels, scale in self.groups:
            colour = _LayerStack(linear[channels], u, origin, image_size, self.shape)
            radii = [layer_radius(layer) * scale for layer in present]
            for i, (layer, radius) in enumerate(zip(present, radii, strict=True)):
                # Fill reach: the widest band a nearer blurred layer can make see-through.
                reach = max(radii[i + 1 :], default=0.0)
                reach = reach + 1.0 if reach >= 0.5 else 0.0
                extent = _layer_extent(lo, hi, layer, core, _margin(radius, reach))
                if extent is not None:
                    colour.add_layer(layer, radius, reach, extent)
            result[channels] = colour.resolve()
        return result


class _LayerStack:
    """Back-to-front "over" accumulation of blurred layers for one tile and channel group."""

    def __init__(
        self,
        linear: Tensor,
        u: Tensor,
        origin: tuple[int, int],
        image_size: tuple[int, int],
        shape: Aperture,
    ) -> None:
        self.linear, self.u, self.origin, self.image_size, self.shape = (
            linear,
            u,
            origin,
            image_size,
            shape,
        )
        channels, height, width = linear.shape
        self.colour = linear.new_zeros(1, channels, height, width)
        self.alpha = linear.new_zeros(1, 1, height, width)

    def add_layer(
        self, layer: int, radius: float, reach: float, extent: tuple[int, int, int, int]
    ) -> None:
        """Blur ``layer`` (radius px, fill reach px) inside the tile-local ``extent`` box and
        composite it over the layers behind."""
        channels, height, width = self.linear.shape
        factor = level_factor(radius)
        octaves = 0 if reach < 0.5 else max(0, math.ceil(math.log2(max(reach / factor, 1.0))))
        grid = factor * 2**octaves
        oy, ox = self.origin
        top = _round_down(oy + extent[0], grid) - oy
        bottom = _round_up(oy + extent[1], grid) - oy
        left = _round_down(ox + extent[2], grid) - ox
        right = _round_up(ox + extent[3], grid) - ox
        v_top, v_bottom = max(top, 0), min(bottom, height)
        v_left, v_right = max(left, 0), min(right, width)
        window = (slice(v_top - top, v_bottom - top), slice(v_left - left, v_right - left))

        u = self.u.new_full((bottom - top, right - left), -math.inf)
        u[window] = self.u[v_top:v_bottom, v_left:v_right]
        colour = self.linear.new_zeros(channels, bottom - top, right - left)
        colour[(slice(None), *window)] = self.linear[:, v_top:v_bottom, v_left:v_right]
        matte, coverage = layer_matte(u, layer)
        planes = torch.cat([colour * matte, matte[None], coverage[None]])[None]
        planes = downsample(planes, factor)
        if octaves > 0:
            hidden = (planes[:, -1:] - planes[:, -2:-1]).clamp_min(0.0)
            fill, confidence = push_pull_fill(planes[:, :-1], octaves)
            extension = hidden * confidence
            planes = torch.cat(
                [planes[:, :channels] + extension * fill, planes[:, channels:-1] + extension],
                dim=1,
            )
        else:
            planes = planes[:, :-1]
        blurred = self._blur(planes, radius / factor, factor, (top + oy, left + ox), layer > 0)
        blurred = upsample(blurred, factor)[(slice(None), slice(None), *window)]
        self._composite(blurred, (slice(v_top, v_bottom), slice(v_left, v_right)))

    def _blur(
        self, planes: Tensor, radius: float, factor: int, corner: tuple[int, int], front: bool
    ) -> Tensor:
        """Blur level-resolution planes; cat-eye blends kernels by source position.

        In front of the focal plane (``front``) the rays cross before the sensor, so the
        aperture's image is point-reflected (matters for odd blade counts and cat-eye).
        """

        def kernel(offset: tuple[float, float] = (0.0, 0.0)) -> Tensor:
            shape = self.shape.kernel(
                radius, offset=offset, dtype=planes.dtype, device=planes.device
            )
            return shape.flip(0, 1) if front else shape

        if self.shape.cat_eye <= 0 or radius < 0.5:
            return convolve(planes, kernel())
        _, _, height, width = planes.shape
        image_h, image_w = self.image_size
        half = math.ceil(radius)
        ys = _zone_weights(corner[0], height, factor, image_h, planes)
        xs = _zone_weights(corner[1], width, factor, image_w, planes)
        out = torch.zeros_like(planes)
        for zy, wy in zip(CAT_EYE_ZONES, ys, strict=True):
            rows = wy.nonzero()
            if rows.numel() == 0:
                continue
            r0, r1 = max(int(rows[0]) - half, 0), min(int(rows[-1]) + 1 + half, height)
            for zx, wx in zip(CAT_EYE_ZONES, xs, strict=True):
                cols = wx.nonzero()
                if cols.numel() == 0:
                    continue
                c0, c1 = max(int(cols[0]) - half, 0), min(int(cols[-1]) + 1 + half, width)
                weight = wy[r0:r1, None] * wx[None, c0:c1]
                piece = planes[:, :, r0:r1, c0:c1] * weight
                out[:, :, r0:r1, c0:c1] += convolve(piece, kernel((zx, zy)))
        return out

    def _composite(self, blurred: Tensor, box: tuple[slice, slice]) -> None:
        index = (slice(None), slice(None), *box)
        alpha = blurred[:, -1:]
        colour = blurred[:, :-1] + (1.0 - alpha) * self.colour[index]
        coverage = alpha + (1.0 - alpha) * self.alpha[index]
        if torch.is_grad_enabled() and (blurred.requires_grad or self.colour.requires_grad):
            # Autograd keeps the old accumulators: write into copies.
            self.colour, self.alpha = self.colour.clone(), self.alpha.clone()
        self.colour[index] = colour
        self.alpha[index] = coverage

    def resolve(self) -> Tensor:
        """Accumulated colour normalised by accumulated alpha: ``Cxhxw`` linear light."""
        return (self.colour / self.alpha.clamp_min(_TINY))[0]


def _margin(radius: float, reach: float) -> int:
    """Pixels around a layer's content that its blur and background fill can reach."""
    return math.ceil(radius) + math.ceil(reach) + 2 * level_factor(radius)


def _layer_extent(
    lo: Tensor, hi: Tensor, layer: int, core: tuple[int, int, int, int], margin: int
) -> tuple[int, int, int, int] | None:
    """Tile-local box (y0, y1, x0, x1) to render ``layer`` in for ``core``; None if absent."""
    present = (lo < layer + 1) & (hi > layer - 1)
    r0, r1 = max((core[0] - margin) // BLOCK, 0), -(-(core[1] + margin) // BLOCK)
    c0, c1 = max((core[2] - margin) // BLOCK, 0), -(-(core[3] + margin) // BLOCK)
    present = present[r0:r1, c0:c1]
    rows, cols = present.any(dim=1).nonzero(), present.any(dim=0).nonzero()
    if rows.numel() == 0:
        return None
    # The content's blocks grown by the margin, but only as far as the core can feel them.
    return (
        max((r0 + int(rows[0])) * BLOCK, core[0]) - margin,
        min((r0 + int(rows[-1]) + 1) * BLOCK, core[1]) + margin,
        max((c0 + int(cols[0])) * BLOCK, core[2]) - margin,
        min((c0 + int(cols[-1]) + 1) * BLOCK, core[3]) + margin,
    )


def level_factor(radius: float) -> int:
    """Power-of-two downscale factor at which a layer of ``radius`` px is blurred."""
    if radius < 2.0 * LEVEL_RADIUS:
        return 1
    return 2 ** math.floor(math.log2(radius / LEVEL_RADIUS))


def _zone_weights(
    start: int, length: int, factor: int, image_length: int, like: Tensor
) -> list[Tensor]:
    """Tent weights of the cat-eye zones at level pixel centres along one axis."""
    centres = start + (torch.arange(length, dtype=like.dtype, device=like.device) + 0.5) * factor
    position = (2.0 * centres / image_length - 1.0).clamp(-1.0, 1.0)
    spacing = CAT_EYE_ZONES[1] - CAT_EYE_ZONES[0]
    return [(1.0 - (position - z).abs() / spacing).clamp_min(0.0) for z in CAT_EYE_ZONES]


def _block_ranges(u: Tensor) -> tuple[Tensor, Tensor]:
    """Per 16x16 block minimum and maximum of ``u`` (partial blocks included)."""
    height, width = u.shape
    pad_h, pad_w = _round_up(height, BLOCK) - height, _round_up(width, BLOCK) - width
    padded = torch.nn.functional.pad(u[None, None], (0, pad_w, 0, pad_h), value=math.nan)
    blocks = padded.reshape(
        padded.shape[-2] // BLOCK, BLOCK, padded.shape[-1] // BLOCK, BLOCK
    ).transpose(1, 2)
    blocks = blocks.reshape(blocks.shape[0], blocks.shape[1], -1)
    hi = torch.nan_to_num(blocks, nan=-math.inf).amax(dim=-1)
    lo = torch.nan_to_num(blocks, nan=math.inf).amin(dim=-1)
    return lo, hi


def _tile_plan(
    height: int, width: int, halo: int, max_pixels: int
) -> list[tuple[int, int, int, int, tuple[int, int, int, int]]]:
    """Tiles ``(y0, y1, x0, x1, core)``; cores partition the image, tiles add the halo."""
    if height * width <= max_pixels:
        return [(0, height, 0, width, (0, height, 0, width))]
    side = math.isqrt(max_pixels)
    core = max(_round_down(side - 2 * halo, BLOCK), 4 * BLOCK)

    def cuts(length: int) -> list[int]:
        count = math.ceil(length / core)
        step = _round_up(math.ceil(length / count), BLOCK)
        return [min(i * step, length) for i in range(count)] + [length]

    tiles = []
    row_cuts, col_cuts = cuts(height), cuts(width)
    for cy0, cy1 in zip(row_cuts[:-1], row_cuts[1:], strict=True):
        for cx0, cx1 in zip(col_cuts[:-1], col_cuts[1:], strict=True):
            if cy1 <= cy0 or cx1 <= cx0:
                continue
            y0, y1 = max(cy0 - halo, 0), min(cy1 + halo, height)
            x0, x1 = max(cx0 - halo, 0), min(cx1 + halo, width)
            tiles.append((y0, y1, x0, x1, (cy0, cy1, cx0, cx1)))
    return tiles


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _round_down(value: int, step: int) -> int:
    return (value // step) * step


def _check_inputs(
    image: Tensor,
    disparity: Tensor,
    aperture: float,
    highlight: float,
    max_tile_pixels: int | None,
) -> None:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise MagicBokehError("image must be a Bx3xHxW tensor of sRGB values in [0, 1]")
    if not image.is_floating_point():
        raise MagicBokehError("image must be a float tensor in [0, 1]; divide 8-bit data by 255")
    expected = (image.shape[0], 1, *image.shape[2:])
    if not isinstance(disparity, Tensor) or tuple(disparity.shape) != expected:
        raise MagicBokehError(
            f"disparity must have shape {expected} to match the image, "
            f"got {tuple(getattr(disparity, 'shape', ()))}"
        )
    if not bool(torch.isfinite(disparity).all()):
        raise MagicBokehError("disparity contains NaN or infinite values: fill invalid pixels")
    if not (isinstance(aperture, (int, float)) and math.isfinite(aperture)):
        raise MagicBokehError(f"aperture K={aperture} is not a finite number of pixels")
    if aperture < 0:
        raise MagicBokehError(f"aperture K={aperture} is negative: use K >= 0 (0 = no blur)")
    if not (math.isfinite(highlight) and highlight >= 0):
        raise MagicBokehError(f"highlight={highlight} is invalid: use a value >= 0 (0 = off)")
    if max_tile_pixels is not None and max_tile_pixels < 1:
        raise MagicBokehError("max_tile_pixels must be a positive number of pixels or None")


def _focus_values(focus: float | Tensor, batch: int) -> list[float]:
    values = focus.detach().flatten().tolist() if isinstance(focus, Tensor) else [focus]
    if len(values) == 1:
        values = values * batch
    if len(values) != batch or not all(math.isfinite(float(v)) for v in values):
        raise MagicBokehError(
            f"focus_disparity must be a finite float or a length-{batch} tensor of them"
        )
    return [float(v) for v in values]


def _chromatic_multipliers(chromatic: Sequence[float] | None) -> tuple[float, float, float]:
    if chromatic is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(v) for v in chromatic)
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise MagicBokehError("chromatic must be three finite multipliers of K, each >= 0")
    return values  # type: ignore[return-value]
