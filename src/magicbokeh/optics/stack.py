"""The layer stack of one tile: blur each depth layer at its level of detail and composite.

Layers behind the focal plane (signed index ``<= 0``) are composited from far to near with
"over"; layers in front (index ``> 0``) from near to far with "under"; the front stack then goes
over the back stack. "Over" is associative, so this equals one far-to-near pass, but it lets
both stacks run from coarse to fine: the farther a layer is from the focal plane, the larger
its blur radius ``r`` and the coarser the level (factor ``s``, a power of two with ``r/s`` in
``[LEVEL_RADIUS, 2*LEVEL_RADIUS)``) it is blurred and composited at. Each stack keeps its
premultiplied colour and alpha at the level of its latest layer and is upsampled (bilinear)
when a finer layer arrives, so a strongly blurred layer never touches full resolution after
its matte is taken.

Beyond the image border the scene is taken to continue as its mirror image (whole-sample
symmetric reflection), so a blurred layer that touches the border stays opaque there instead
of letting the layers behind it show through.

All boxes are in absolute image pixels and aligned to the level grids, so tiles agree with the
untiled render.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from magicbokeh.optics.aperture import Aperture
from magicbokeh.optics.blur import convolve, downsample, push_pull_fill, reflect_index, upsample
from magicbokeh.optics.layers import layer_matte

LEVEL_RADIUS = 8.0
BLOCK = 16
CAT_EYE_ZONES = (-1.0, -0.5, 0.0, 0.5, 1.0)
_TINY = 1e-12

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), end exclusive


def level_factor(radius: float) -> int:
    """Power-of-two downscale factor at which a layer of ``radius`` px is blurred."""
    if radius < 2.0 * LEVEL_RADIUS:
        return 1
    return 2 ** math.floor(math.log2(radius / LEVEL_RADIUS))


def layer_margin(radius: float, reach: float) -> int:
    """Pixels around a layer's content that its blur and background fill can reach."""
    return math.ceil(radius) + math.ceil(reach) + 2 * level_factor(radius)


def fill_octaves(radius: float, reach: float) -> int:
    """Push-pull octaves (at the layer's level) that cover the fill ``reach`` in pixels."""
    if reach < 0.5:
        return 0
    return max(0, math.ceil(math.log2(max(reach / level_factor(radius), 1.0))))


def block_ranges(u: Tensor) -> tuple[Tensor, Tensor]:
    """Per ``BLOCK``x``BLOCK`` block minimum and maximum of ``u`` (partial blocks included)."""
    height, width = u.shape
    pad_h, pad_w = _round_up(height, BLOCK) - height, _round_up(width, BLOCK) - width
    padded = F.pad(u[None, None], (0, pad_w, 0, pad_h), value=math.nan)
    blocks = padded.reshape(
        padded.shape[-2] // BLOCK, BLOCK, padded.shape[-1] // BLOCK, BLOCK
    ).transpose(1, 2)
    blocks = blocks.reshape(blocks.shape[0], blocks.shape[1], -1)
    hi = torch.nan_to_num(blocks, nan=-math.inf).amax(dim=-1)
    lo = torch.nan_to_num(blocks, nan=math.inf).amin(dim=-1)
    return lo, hi


def layer_extent(lo: Tensor, hi: Tensor, layer: int, core: Box, margin: int) -> Box | None:
    """Tile-local box to render ``layer`` in for the tile-local ``core``; None if absent there.

    ``lo``/``hi`` are the per-block ranges of ``u`` (:func:`block_ranges`).
    """
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


class LayerStack:
    """Blurred layers of one tile and channel group, composited at their levels of detail.

    ``linear`` is ``Cxhxw`` (boosted linear light) and ``u`` ``hxw`` the layer coordinate of the
    tile whose top-left pixel is ``origin`` in an image of ``image_size`` (height, width).
    Call :meth:`add_layer` for the layers behind the focal plane from far to near and for
    those in front from near to far (either group first), then :meth:`resolve`.
    """

    def __init__(
        self,
        linear: Tensor,
        u: Tensor,
        origin: tuple[int, int],
        image_size: tuple[int, int],
        shape: Aperture,
    ) -> None:
        self.linear, self.u, self.shape = linear, u, shape
        self.origin, self.image_size = origin, image_size
        self.size = tuple(u.shape)
        self.channels = linear.shape[0]
        self.track_grad = torch.is_grad_enabled() and (linear.requires_grad or u.requires_grad)
        self.behind = _Accumulator(self, front=False)
        self.front = _Accumulator(self, front=True)

    def add_layer(self, layer: int, radius: float, reach: float, extent: Box) -> None:
        """Blur ``layer`` (radius px, fill reach px) inside the tile-local ``extent`` box and
        composite it into its stack."""
        factor = level_factor(radius)
        octaves = fill_octaves(radius, reach)
        grid = factor * 2**octaves
        oy, ox = self.origin
        box = (
            _round_down(oy + extent[0], grid),
            _round_up(oy + extent[1], grid),
            _round_down(ox + extent[2], grid),
            _round_up(ox + extent[3], grid),
        )
        planes = self._layer_planes(layer, box)  # 1x(C+2)xHxW: colour*matte, matte, hidden
        planes = downsample(planes, factor)
        channels = self.channels
        hidden = planes[:, -1:]
        if octaves > 0 and bool(hidden.any()):
            planes = push_pull_fill(planes[:, :-1], octaves, hidden)
        else:
            planes = planes[:, : channels + 1]
        blurred = self._blur(planes, radius / factor, factor, (box[0], box[2]), layer > 0)
        (self.front if layer > 0 else self.behind).composite(blurred, box, factor)

    def resolve(self) -> Tensor:
        """Front stack over back stack, normalised by alpha: ``Cxhxw`` linear light."""
        behind = self.behind.full_resolution()
        if self.front.planes is not None:
            front = self.front.full_resolution()
            if self.track_grad:
                behind = front + (1.0 - front[:, -1:]) * behind
            else:
                behind = behind.mul_(1.0 - front[:, -1:]).add_(front)
        colour, alpha = behind[0, :-1], behind[0, -1:].clamp_min(_TINY)
        return colour / alpha if self.track_grad else colour.div_(alpha)

    def _layer_planes(self, layer: int, box: Box) -> Tensor:
        """Premultiplied colour, matte and hidden area of ``layer`` in the absolute ``box``.

        Outside the image the tile is mirrored; inside the image but outside the tile the
        layer is absent (such pixels lie beyond the tile halo and cannot reach the core).
        """
        rows = self._sources(box[0], box[1], 0)
        cols = self._sources(box[2], box[3], 1)
        if isinstance(rows, slice) and isinstance(cols, slice):
            u, colour = self.u[rows, cols], self.linear[:, rows, cols]
        else:
            u, colour = self._gather(rows, cols)
        if self.track_grad:
            matte, hidden = layer_matte(u, layer)
            return torch.cat([colour * matte, matte[None], hidden[None]])[None]
        channels = self.channels
        planes = u.new_empty(1, channels + 2, *u.shape)
        matte, _ = layer_matte(u, layer, out=(planes[0, channels], planes[0, channels + 1]))
        torch.mul(colour, matte, out=planes[0, :channels])
        return planes

    def _sources(self, start: int, stop: int, axis: int) -> slice | tuple[Tensor, Tensor]:
        """Tile-local source rows (``axis`` 0) or columns (1) for absolute ``[start, stop)``:
        a slice when all lie inside the tile, else (index, valid) with mirrored positions."""
        origin, length, image = self.origin[axis], self.size[axis], self.image_size[axis]
        if origin <= start and stop <= origin + length:
            return slice(start - origin, stop - origin)
        index = torch.arange(start, stop, device=self.u.device)
        local = reflect_index(index, image) - origin
        valid = (local >= 0) & (local < length)
        return local.clamp(0, length - 1), valid

    def _gather(
        self, rows: slice | tuple[Tensor, Tensor], cols: slice | tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        u, colour = self.u, self.linear
        if isinstance(rows, slice):
            u, colour = u[rows], colour[:, rows]
            valid_rows = None
        else:
            u, colour = u.index_select(0, rows[0]), colour.index_select(1, rows[0])
            valid_rows = rows[1]
        if isinstance(cols, slice):
            u, colour = u[:, cols], colour[:, :, cols]
            valid_cols = None
        else:
            u, colour = u.index_select(1, cols[0]), colour.index_select(2, cols[0])
            valid_cols = cols[1]
        if valid_rows is not None and not bool(valid_rows.all()):
            u = u.masked_fill(~valid_rows[:, None], -math.inf)
        if valid_cols is not None and not bool(valid_cols.all()):
            u = u.masked_fill(~valid_cols[None, :], -math.inf)
        return u, colour

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


class _Accumulator:
    """Premultiplied colour and alpha (``1x(C+1)``) of one stack at its current level.

    At factor ``s`` it covers the tile rounded out to the level grid: absolute rows
    ``[floor(oy/s)*s, ceil((oy+h)/s)*s)`` and likewise columns.
    """

    def __init__(self, stack: LayerStack, *, front: bool) -> None:
        self.stack, self.front = stack, front
        self.factor = 0
        self.planes: Tensor | None = None

    def region(self, factor: int) -> Box:
        (oy, ox), (height, width) = self.stack.origin, self.stack.size
        return (
            _round_down(oy, factor),
            _round_up(oy + height, factor),
            _round_down(ox, factor),
            _round_up(ox + width, factor),
        )

    def at_level(self, factor: int) -> Tensor:
        """The planes at ``factor`` (zeros at first; upsampled when a finer level is asked)."""
        if self.planes is None:
            y0, y1, x0, x1 = self.region(factor)
            self.planes = self.stack.linear.new_zeros(
                1, self.stack.channels + 1, (y1 - y0) // factor, (x1 - x0) // factor
            )
            self.factor = factor
        elif factor < self.factor:
            old, new = self.region(self.factor), self.region(factor)
            up = upsample(self.planes, self.factor // factor)
            top, left = (new[0] - old[0]) // factor, (new[2] - old[2]) // factor
            height, width = (new[1] - new[0]) // factor, (new[3] - new[2]) // factor
            self.planes = up[:, :, top : top + height, left : left + width]
            self.factor = factor
        return self.planes

    def composite(self, blurred: Tensor, box: Box, factor: int) -> None:
        """Composite level planes ``blurred`` covering the absolute ``box`` into the stack."""
        planes = self.at_level(factor)
        if self.factor < factor:  # a coarser layer after a finer one: bring it to this level
            blurred, factor = upsample(blurred, factor // self.factor), self.factor
        region = self.region(factor)
        y0, y1 = max(box[0], region[0]), min(box[1], region[1])
        x0, x1 = max(box[2], region[2]), min(box[3], region[3])
        if y1 <= y0 or x1 <= x0:
            return
        layer = blurred[
            :,
            :,
            (y0 - box[0]) // factor : (y1 - box[0]) // factor,
            (x0 - box[2]) // factor : (x1 - box[2]) // factor,
        ]
        index = (
            slice(None),
            slice(None),
            slice((y0 - region[0]) // factor, (y1 - region[0]) // factor),
            slice((x0 - region[2]) // factor, (x1 - region[2]) // factor),
        )
        below = planes[index]
        if self.stack.track_grad:
            # Autograd keeps the old accumulator: compute out of place, write into a copy.
            if self.front:
                update = below + (1.0 - below[:, -1:]) * layer
            else:
                update = layer + (1.0 - layer[:, -1:]) * below
            self.planes = planes.clone()
            self.planes[index] = update
        elif self.front:  # "under": what is already there stays in front
            below.addcmul_(1.0 - below[:, -1:], layer)
        else:  # "over": the new layer goes in front
            below.mul_(1.0 - layer[:, -1:]).add_(layer)

    def full_resolution(self) -> Tensor:
        """The planes at full resolution over the tile (zeros when no layer was added)."""
        planes = self.at_level(1)
        height, width = self.stack.size
        return planes[:, :, :height, :width]


def _zone_weights(
    start: int, length: int, factor: int, image_length: int, like: Tensor
) -> list[Tensor]:
    """Tent weights of the cat-eye zones at level pixel centres along one axis."""
    centres = start + (torch.arange(length, dtype=like.dtype, device=like.device) + 0.5) * factor
    position = (2.0 * centres / image_length - 1.0).clamp(-1.0, 1.0)
    spacing = CAT_EYE_ZONES[1] - CAT_EYE_ZONES[0]
    return [(1.0 - (position - z).abs() / spacing).clamp_min(0.0) for z in CAT_EYE_ZONES]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _round_down(value: int, step: int) -> int:
    return (value // step) * step
