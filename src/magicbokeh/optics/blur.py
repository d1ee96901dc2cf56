"""Building blocks of the layered renderer: convolution, resampling, fill, border mirroring.

All functions take ``1xCxHxW`` float tensors (premultiplied colour channels followed by one
alpha/weight channel where stated) and work on any torch device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Widest kernels applied directly (wider ones by FFT): on the CPU FFT wins from 13 px on.
DIRECT_MAX_SIZE = 11
DIRECT_MAX_SIZE_ACCELERATOR = 26


def convolve(planes: Tensor, kernel: Tensor) -> Tensor:
    """Scatter ``planes`` (1xCxHxW) through ``kernel`` ((2R+1)x(2R+1)): zero outside, same size.

    Output pixel ``x`` receives ``sum_y planes[y] * kernel[x - y + R]``: each source spreads its
    value over the kernel centred on itself (a true convolution, not a correlation).
    """
    size = kernel.shape[-1]
    if size == 1:
        return planes * kernel.reshape(())
    channels = planes.shape[1]
    cpu = planes.device.type == "cpu"
    if size <= (DIRECT_MAX_SIZE if cpu else DIRECT_MAX_SIZE_ACCELERATOR):
        weight = kernel.flip(0, 1).expand(channels, 1, size, size).to(planes.dtype)
        if cpu:
            planes = planes.contiguous(memory_format=torch.channels_last)
        out = F.conv2d(planes, weight, padding=size // 2, groups=channels)
        return out.contiguous()
    return _fft_convolve(planes, kernel)


def _fft_convolve(planes: Tensor, kernel: Tensor) -> Tensor:
    height, width = planes.shape[-2:]
    half = kernel.shape[-1] // 2
    fft_h, fft_w = fast_fft_size(height + half), fast_fft_size(width + half)
    padded = planes.new_zeros(fft_h, fft_w)
    padded[: 2 * half + 1, : 2 * half + 1] = kernel
    padded = torch.roll(padded, shifts=(-half, -half), dims=(0, 1))
    spectrum = torch.fft.rfft2(planes, s=(fft_h, fft_w))
    spectrum *= torch.fft.rfft2(padded)
    out = torch.fft.irfft2(spectrum, s=(fft_h, fft_w))
    # Rows/cols past the end are wrap-around room: sources near the far edge spread into them.
    return out[..., :height, :width]


def fast_fft_size(n: int) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3 and 5."""
    best = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            value = power35
            while value < n:
                value *= 2
            best = min(best, value)
            power35 *= 3
        power5 *= 5
    return best


def downsample(planes: Tensor, factor: int) -> Tensor:
    """Box-average ``planes`` by an integer ``factor`` (sizes must be multiples of it)."""
    if factor == 1:
        return planes
    return F.avg_pool2d(planes, factor)


def upsample(planes: Tensor, factor: int) -> Tensor:
    """Bilinear upsampling by an integer ``factor``; preserves the sum (times factor**2)."""
    if factor == 1:
        return planes
    return F.interpolate(planes, scale_factor=factor, mode="bilinear", align_corners=False)


def push_pull_fill(planes: Tensor, levels: int, hidden: Tensor) -> Tensor:
    """Extend premultiplied colour into the ``hidden`` area by push-pull over ``levels`` octaves.

    ``planes`` is ``1x(C+1)xHxW``: premultiplied colour then a weight in [0, 1]; ``hidden``
    (``1x1xHxW``, in [0, 1]) is how much of each pixel lies behind nearer content; H and W are
    multiples of ``2**levels``. The pull fills every pixel with the premultiplied colour of the
    nearest content within about ``2**levels`` pixels, with a weight that falls off with
    distance (0 where no content is within reach); returns ``planes + hidden * filled``.

    Only the neighbourhood of the hidden area is computed: ``filled`` at a pixel depends on the
    planes within ``2**levels`` pixels of it (each bilinear step reads one coarse pixel around),
    so a crop grown by that much and aligned to the ``2**levels`` grid gives the same values
    there, and outside the hidden area the result is ``planes`` itself.
    """
    step = 1 << levels
    height, width = planes.shape[-2:]
    rows = hidden.amax(dim=(0, 1, 3)).nonzero()
    cols = hidden.amax(dim=(0, 1, 2)).nonzero()
    if rows.numel() == 0:
        return planes.clone()
    y0, y1 = _grown(int(rows[0]), int(rows[-1]) + 1, step, height)
    x0, x1 = _grown(int(cols[0]), int(cols[-1]) + 1, step, width)
    if (y0, y1, x0, x1) == (0, height, 0, width):
        return _push_pull_fill_whole(planes, levels, hidden)
    out = planes.clone()
    out[..., y0:y1, x0:x1] = _push_pull_fill_whole(
        planes[..., y0:y1, x0:x1], levels, hidden[..., y0:y1, x0:x1]
    )
    return out


def _grown(start: int, stop: int, step: int, length: int) -> tuple[int, int]:
    """``[start, stop)`` grown by ``step`` on both sides, aligned to ``step``, within length."""
    return max((start - step) // step * step, 0), min(-(-(stop + step) // step) * step, length)


def _push_pull_fill_whole(planes: Tensor, levels: int, hidden: Tensor) -> Tensor:
    """:func:`push_pull_fill` computed over the whole of ``planes``."""
    pyramid = [planes]
    for _ in range(levels):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    filled = pyramid[-1]
    for finer in reversed(pyramid[1:-1]):
        coarse = F.interpolate(filled, scale_factor=2, mode="bilinear", align_corners=False)
        filled = finer + (1.0 - finer[:, -1:]) * coarse
    coarse = F.interpolate(filled, scale_factor=2, mode="bilinear", align_corners=False)
    # planes + hidden * (planes + (1 - weight) * coarse), with fewer full-size temporaries.
    out = planes * (1.0 + hidden)
    return out.addcmul_(coarse, hidden * (1.0 - planes[:, -1:]))


def reflect_index(index: Tensor, length: int) -> Tensor:
    """Mirror integer positions into ``[0, length)``: whole-sample symmetric reflection.

    Position ``-1`` maps to ``0``, ``length`` to ``length - 1``, and so on periodically
    (period ``2*length``), as if the image continued as its mirror image beyond each edge.
    """
    period = 2 * length
    folded = index.remainder(period)
    return torch.where(folded >= length, period - 1 - folded, folded)
