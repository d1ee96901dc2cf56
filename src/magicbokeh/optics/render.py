"""Fast physically based bokeh: layered, occlusion-aware lens blur in linear light.

Pipeline for one image (see ``spec/physics.md``):

1. decode sRGB to linear light and lift clipped highlights (:mod:`.highlight`);
2. map disparity to a continuous signed layer coordinate ``u`` (:mod:`.layers`): layers are
   about one pixel of blur radius apart, behind (negative) and in front of (positive) the
   focal plane;
3. for each layer: take its soft matte, premultiply colour, extend the layer into the area
   hidden behind nearer layers (push-pull fill from its visible neighbourhood, so a
   semi-transparent blurred foreground edge reveals plausible background), blur colour and
   alpha with the layer's own aperture kernel (scatter semantics) and composite the layers in
   depth order with "over"; finally normalise by the accumulated alpha (:mod:`.stack`);
4. undo the highlight lift and encode to sRGB.

Beyond the image border the scene continues as its mirror image, so a blurred layer touching
the border stays opaque there.

Speed: a layer of radius ``r`` is blurred and composited at ``1/s`` resolution with ``s`` a
power of two such that ``r/s`` lies in ``[LEVEL_RADIUS, 2*LEVEL_RADIUS)`` (``s = 1`` below
``2*LEVEL_RADIUS``); each layer is cropped to the blocks where it is present; kernels up to
11 px wide are applied directly, larger ones by FFT. Images larger than ``max_tile_pixels`` are
rendered in tiles whose overlap covers the largest blur and fill reach, and stitched; all crops
are aligned to absolute image coordinates so tiles agree with the untiled render. On the CPU
the tiles run side by side in ``torch.get_num_threads()`` worker threads with single-threaded
torch ops (torch's intra-op thread count is 1 during the call and restored after): many small
ops scale far better that way than split across threads, above all on a busy machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor
from tqdm.auto import tqdm

from magicbokeh.errors import MagicBokehError
from magicbokeh.optics.aperture import Aperture
from magicbokeh.optics.color import linear_to_srgb, srgb_to_linear
from magicbokeh.optics.highlight import boost_highlights, unboost_highlights
from magicbokeh.optics.layers import (
    OCCLUDER_STEP,
    layer_coordinate,
    layer_coordinate_scalar,
    layer_radius,
)
from magicbokeh.optics.stack import (
    BLOCK,
    LayerStack,
    block_ranges,
    layer_extent,
    layer_margin,
    level_factor,
)

DEFAULT_HIGHLIGHT = 0.5
DEFAULT_MAX_TILE_PIXELS = 1 << 19  # tile size (halo included): fast and bounded memory
_BAND_ROWS = 128  # rows decoded to linear light at a time


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

    def render_job(job: tuple[int, _Scene, _Tile]) -> None:
        b, scene, (y0, y1, x0, x1, core) = job
        depth = disparity[b, 0, y0:y1, x0:x1].to(work_dtype)
        cy0, cy1, cx0, cx1 = core
        local_core = (cy0 - y0, cy1 - y0, cx0 - x0, cx1 - x0)
        tile = linear[b, :, y0:y1, x0:x1]
        rendered = scene.render_tile(tile, depth, (y0, x0), local_core, (height, width))
        kept = rendered[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        encoded = linear_to_srgb(unboost_highlights(kept, highlight).clamp(0.0, 1.0))
        output[b, :, cy0:cy1, cx0:cx1] = encoded

    parallel = image.device.type == "cpu" and not (torch.is_grad_enabled() and image.requires_grad)
    with _tile_workers(len(jobs) if parallel else 1) as run:
        linear = _to_linear(image, work_dtype, highlight, run if parallel else None)
        for _ in tqdm(run(render_job, jobs), total=len(jobs), disable=not progress, desc="bokeh"):
            pass
    return output


_Tile = tuple[int, int, int, int, tuple[int, int, int, int]]


def _to_linear(image: Tensor, dtype: torch.dtype, highlight: float, run: Callable | None) -> Tensor:
    """Boosted linear light of the batch; with ``run`` (a map) in row bands into one buffer,
    so no image-sized temporaries are made (they cost more in page faults than in maths)."""
    if run is None:
        return boost_highlights(srgb_to_linear(image.to(dtype).clamp(0.0, 1.0)), highlight)
    batch, _, height, _ = image.shape
    linear = torch.empty(image.shape, dtype=dtype, device=image.device)

    def decode(band: tuple[int, int, int]) -> None:
        b, y0, y1 = band
        srgb = image[b, :, y0:y1].to(dtype).clamp(0.0, 1.0)
        linear[b, :, y0:y1] = boost_highlights(srgb_to_linear(srgb), highlight)

    bands = [
        (b, y, min(y + _BAND_ROWS, height))
        for b in range(batch)
        for y in range(0, height, _BAND_ROWS)
    ]
    for _ in run(decode, bands):
        pass
    return linear


@contextmanager
def _tile_workers(jobs: int) -> Iterator[Callable]:
    """``map``-like runner over tiles: in ``torch.get_num_threads()`` threads on the CPU.

    Tiles are independent, so running them side by side with single-threaded torch ops uses
    the cores far better than splitting each small op across threads. The intra-op thread
    count is set to 1 meanwhile and restored afterwards.
    """
    threads = torch.get_num_threads()
    workers = min(threads, jobs)
    if workers <= 1:
        yield map
        return
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def in_callers_mode(function: Callable) -> Callable:
        # Grad and inference mode are per thread: workers take the caller's, so a render
        # called under torch.inference_mode() may write into its inference tensors.
        def call(item: object) -> object:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return function(item)

        return call

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="magicbokeh-tile") as pool:
            yield lambda function, items: pool.map(in_callers_mode(function), items)
    finally:
        torch.set_num_threads(threads)


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
        lo, hi = block_ranges(u)
        present = [
            layer
            for layer in range(math.floor(float(u.min())), math.ceil(float(u.max())) + 1)
            if bool(((lo < layer + 1) & (hi > layer - 1)).any())
        ]
        resolved = []
        for channels, scale in self.groups:
            group = linear if len(channels) == len(linear) else linear[channels]
            stack = LayerStack(group, u, origin, image_size, self.shape)
            radii = [layer_radius(layer) * scale for layer in present]
            jobs = []
            for layer, radius in zip(present, radii, strict=True):
                # Fill reach: the widest band an occluding blurred layer can make see-through.
                occluders = [
                    r for n, r in zip(present, radii, strict=True) if n >= layer + OCCLUDER_STEP
                ]
                reach = max(occluders, default=0.0)
                reach = reach + 1.0 if reach >= 0.5 else 0.0
                extent = layer_extent(lo, hi, layer, core, layer_margin(radius, reach))
                if extent is not None:
                    jobs.append((layer, radius, reach, extent))
            # Behind the focal plane far to near, in front near to far: both coarse to fine.
            behind = [job for job in jobs if job[0] <= 0]
            front = [job for job in jobs if job[0] > 0]
            for job in behind + front[::-1]:
                stack.add_layer(*job)
            resolved.append((channels, stack.resolve()))
        if len(resolved) == 1:  # one K for all channels: no copy into a result tensor
            return resolved[0][1]
        result = linear.new_empty(linear.shape)
        for channels, colour in resolved:
            result[channels] = colour
        return result


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
