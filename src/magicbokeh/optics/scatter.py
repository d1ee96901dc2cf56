"""Exact, slow scatter renderer: the reference the fast layered renderer is tested against.

Every source pixel ``y`` spreads its linear-light colour over its own kernel of radius
``K * |d(y) - d_f|`` (the aperture evaluated at ``y``'s image position for cat-eye), exactly,
with no layer quantisation, resampling or background extension. Pixels of equal disparity form
one surface: their splats are summed into premultiplied colour and alpha (the summed kernel
weights) and the surfaces are composited from far to near with "over", then normalised by the
accumulated alpha. Beyond the image border the scene continues as its mirror image
(whole-sample symmetric reflection, as in the fast renderer): those sources are scattered too.
Cost is O(N * r**2) per image, so use it on small images only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from magicbokeh.optics.aperture import Aperture
from magicbokeh.optics.blur import reflect_index
from magicbokeh.optics.color import linear_to_srgb, srgb_to_linear
from magicbokeh.optics.highlight import boost_highlights, unboost_highlights
from magicbokeh.optics.render import (
    DEFAULT_HIGHLIGHT,
    _check_inputs,
    _chromatic_multipliers,
    _focus_values,
)

_CONV_MIN_PIXELS = 64  # surfaces with at least this many pixels are splatted by convolution


def render_scatter_reference(
    image: Tensor,
    disparity: Tensor,
    focus_disparity: float | Tensor,
    aperture: float,
    *,
    aperture_shape: Aperture = Aperture(),  # noqa: B008 - frozen dataclass, safe default
    highlight: float = DEFAULT_HIGHLIGHT,
    chromatic: tuple[float, float, float] | None = None,
    progress: bool = False,
) -> Tensor:
    """Exact scatter render; same arguments and conventions as ``render_physical``.

    ``image`` ``Bx3xHxW`` sRGB in [0, 1], ``disparity`` ``Bx1xHxW``; returns ``Bx3xHxW`` sRGB
    in [0, 1] on the input's device and dtype. Computed in float64.
    """
    _check_inputs(image, disparity, aperture, highlight, None)
    batch, _, height, width = image.shape
    focus = _focus_values(focus_disparity, batch)
    multipliers = _chromatic_multipliers(chromatic)
    groups: dict[float, list[int]] = {}
    for channel, multiplier in enumerate(multipliers):
        groups.setdefault(multiplier, []).append(channel)
    output = torch.empty_like(image)
    for b in range(batch):
        linear = boost_highlights(
            srgb_to_linear(image[b].to(torch.float64).clamp(0.0, 1.0)), highlight
        )
        depth = disparity[b, 0].to(torch.float64)
        result = torch.empty_like(linear)
        for multiplier, channels in groups.items():
            result[channels] = _scatter(
                linear[channels],
                depth,
                focus[b],
                float(aperture) * multiplier,
                aperture_shape,
                progress,
            )
        encoded = linear_to_srgb(unboost_highlights(result, highlight).clamp(0.0, 1.0))
        output[b] = encoded.to(image.dtype)
    return output


def _scatter(
    linear: Tensor, depth: Tensor, focus: float, aperture: float, shape: Aperture, progress: bool
) -> Tensor:
    """Scatter ``linear`` (Cxhxw) with per-pixel radii; returns normalised Cxhxw linear light.

    The scene is first extended by its mirror image as far as the largest radius reaches.
    """
    channels, height, width = linear.shape
    pad = math.ceil(aperture * float((depth - focus).abs().max())) + 1
    rows = reflect_index(torch.arange(-pad, height + pad, device=linear.device), height)
    cols = reflect_index(torch.arange(-pad, width + pad, device=linear.device), width)
    linear = linear[:, rows][:, :, cols]
    depth = depth[rows][:, cols]
    position = (
        (torch.arange(-pad, height + pad, dtype=torch.float64) * 2.0 + 1.0) / height - 1.0,
        (torch.arange(-pad, width + pad, dtype=torch.float64) * 2.0 + 1.0) / width - 1.0,
    )
    size = (height + 2 * pad, width + 2 * pad)
    colour = linear.new_zeros(channels, size[0] + 2 * pad, size[1] + 2 * pad)
    alpha = linear.new_zeros(1, size[0] + 2 * pad, size[1] + 2 * pad)
    values = torch.unique(depth)  # ascending: far to near
    for value in tqdm(values.tolist(), disable=not progress, desc="scatter"):
        mask = depth == value
        radius = aperture * abs(value - focus)
        splat = _splat_surface(linear, mask, radius, shape, pad, value > focus, position)
        weight = splat[-1:]
        colour = splat[:-1] + (1.0 - weight) * colour
        alpha = weight + (1.0 - weight) * alpha
    inner = (slice(None), slice(2 * pad, 2 * pad + height), slice(2 * pad, 2 * pad + width))
    return colour[inner] / alpha[inner].clamp_min(1e-12)


def _splat_surface(
    linear: Tensor,
    mask: Tensor,
    radius: float,
    shape: Aperture,
    pad: int,
    front: bool,
    position: tuple[Tensor, Tensor],
) -> Tensor:
    """Sum of the kernels of all pixels in ``mask``: premultiplied colour plus alpha, padded.

    In front of the focal plane (``front``) each kernel is point-reflected: the rays cross
    before reaching the sensor. ``position`` holds the normalised image position of each row
    and column (for cat-eye; clamped to [-1, 1] beyond the border).
    """
    channels, height, width = linear.shape
    planes = torch.cat([linear * mask, mask[None].to(linear.dtype)])
    out = linear.new_zeros(channels + 1, height + 2 * pad, width + 2 * pad)
    count = int(mask.sum())
    if shape.cat_eye <= 0 and count >= _CONV_MIN_PIXELS:
        kernel = shape.kernel(radius, dtype=linear.dtype, device=linear.device)
        kernel = kernel.flip(0, 1) if front else kernel
        half = kernel.shape[-1] // 2
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        source = F.pad(planes[:, r0:r1, c0:c1], (2 * half,) * 4)[:, None]
        weight = kernel.flip(0, 1)[None, None]
        spread = F.conv2d(source, weight)[:, 0]  # (C+1) x (r1-r0+2h) x (c1-c0+2h)
        out[:, pad + r0 - half : pad + r1 + half, pad + c0 - half : pad + c1 + half] += spread
        return out
    for y, x in mask.nonzero().tolist():
        offset = (
            min(max(float(position[1][x]), -1.0), 1.0),
            min(max(float(position[0][y]), -1.0), 1.0),
        )
        kernel = shape.kernel(radius, offset=offset, dtype=linear.dtype, device=linear.device)
        kernel = kernel.flip(0, 1) if front else kernel
        half = kernel.shape[-1] // 2
        patch = out[:, pad + y - half : pad + y + half + 1, pad + x - half : pad + x + half + 1]
        patch += planes[:, y, x, None, None] * kernel
    return out
