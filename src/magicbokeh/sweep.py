"""Focus pulls and aperture ramps: one photo rendered at a sequence of focus and K values.

A sweep is ``frames`` renders of one photo. Between the first and the last frame either the
focus moves (a focus pull from the surface under one point to the surface under another),
or the aperture K changes, or both:

- focus: each end point resolves to a focus disparity ``d_f`` exactly as a single render's
  ``--focus X,Y`` does (:func:`magicbokeh.focus.resolve_focus`); the frames in between step
  ``d_f`` from one to the other. Disparity is inverse depth, the quantity a focus ring moves
  evenly in (dioptres), so the focus glides through the scene instead of jumping between the
  objects that lie between the two points on screen.
- aperture: K steps from ``aperture_from`` to ``aperture_to``.

Steps are even (``ease="linear"``) or slow at both ends (``"smooth"``: smoothstep
``3t² − 2t³``, as a focus puller's hand moves). Frame ``i`` is exactly
``magicbokeh.render(photo, depth, focus=d_f[i], aperture=K[i], ...)``, so the first and the
last frames equal single renders focused at the end points.

What does not change between frames is done once: decoding the photo, estimating its depth,
resolving the end points, loading the learned pipeline (when that engine is used).

Writers: MP4 (H.264, yuv420p, CRF 18) through imageio with imageio-ffmpeg, which ships its
own ffmpeg binary (the ``video`` extra); animated GIF (adaptive palette per frame; GIF stores
frame times in hundredths of a second) and animated WebP (quality 90) through Pillow. MP4
needs even frame sides: an odd last row or column is cropped. All loop forever where the
format can say so (GIF, WebP).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import FocusSpec, as_focus_spec, resolve_focus
from magicbokeh.io import LoadedImage, atomic_write

#: Animation formats by extension.
ANIMATION_SUFFIXES = (".mp4", ".gif", ".webp")
EASES = ("linear", "smooth")
MAX_FRAMES = 10_000
MP4_CRF = 18
WEBP_QUALITY = 90


@dataclass(frozen=True)
class SweepPlan:
    """Per-frame focus disparities ``d_f`` (in [0, 1]) and apertures K (px per unit d)."""

    focus_disparities: tuple[float, ...]
    apertures: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.apertures)


def ramp(start: float, end: float, frames: int, ease: str = "linear") -> tuple[float, ...]:
    """``frames`` values from ``start`` to ``end`` inclusive (both ends exact)."""
    if ease not in EASES:
        raise MagicBokehError(f"unknown ease {ease!r}: use linear or smooth")
    if frames == 1:
        return (float(start),)
    t = np.linspace(0.0, 1.0, frames)
    if ease == "smooth":
        t = t * t * (3.0 - 2.0 * t)
    values = [float(start + (end - start) * s) for s in t]
    values[0], values[-1] = float(start), float(end)
    return tuple(values)


def plan_sweep(
    disparity: np.ndarray,
    *,
    frames: int,
    focus: object = "auto",
    focus_to: object = None,
    aperture: float = 16.0,
    aperture_to: float | None = None,
    ease: str = "linear",
) -> SweepPlan:
    """The per-frame ``d_f`` and K on ``disparity`` (``H×W`` in [0, 1], larger = nearer).

    ``focus`` (any form :func:`magicbokeh.render` takes) is the first frame's focus and
    ``focus_to`` the last one's (None: focus stays); ``aperture`` is the first frame's K and
    ``aperture_to`` the last one's (None: K stays).
    """
    if not 1 <= frames <= MAX_FRAMES:
        raise MagicBokehError(f"frames must be 1..{MAX_FRAMES} (got {frames})")
    for name, k in (("aperture", aperture), ("aperture_to", aperture_to)):
        if k is not None and not (np.isfinite(k) and k >= 0):
            raise MagicBokehError(f"{name} K must be ≥ 0 (got {k:g}): 0 means no blur")
    d_start = resolve_focus(disparity, as_focus_spec(focus))
    d_end = d_start if focus_to is None else resolve_focus(disparity, as_focus_spec(focus_to))
    k_end = aperture if aperture_to is None else aperture_to
    return SweepPlan(ramp(d_start, d_end, frames, ease), ramp(aperture, k_end, frames, ease))


def render_frames(
    image: LoadedImage, disparity: np.ndarray, plan: SweepPlan, **render_options: object
) -> Iterator[np.ndarray]:
    """Yield each frame, ``H×W×3`` float32 sRGB in [0, 1], rendered by :func:`magicbokeh.render`.

    ``render_options`` go to every call (``engine``, ``aperture_shape``, ``highlight``,
    ``device``, ``model``, ``pipeline``, ...); ``image`` and ``disparity`` are reused as given.
    """
    from magicbokeh.api import render

    for d_f, k in zip(plan.focus_disparities, plan.apertures, strict=True):
        focus = FocusSpec("disparity", value=min(max(d_f, 0.0), 1.0))
        yield render(image, depth=disparity, focus=focus, aperture=k, **render_options).image


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """``H×W×3`` float in [0, 1] → uint8, rounded to the nearest code value."""
    return np.clip(np.rint(np.asarray(frame, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_animation(
    path: str | Path, frames: Iterable[np.ndarray], fps: float, *, overwrite: bool = False
) -> int:
    """Write ``frames`` (``H×W×3`` float in [0, 1]) to ``path`` (.mp4/.gif/.webp) atomically.

    Frames are encoded as they arrive (MP4, WebP), so a long animation needs no more memory
    than a frame (GIF keeps them all to optimise the palette). Returns the number of frames.

    Raises:
        MagicBokehError: unknown extension, bad ``fps``, no frames, or ``path`` exists and
            ``overwrite`` is False.
    """
    target = Path(path).expanduser()
    suffix = target.suffix.lower()
    check_animation_path(target)
    if not (np.isfinite(fps) and 0 < fps <= 240):
        raise MagicBokehError(f"fps must be in (0, 240] (got {fps:g})")
    count = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal count
        for frame in frames:
            count += 1
            yield to_uint8(frame)

    with atomic_write(target, overwrite=overwrite) as temporary:
        if suffix == ".mp4":
            _write_mp4(temporary, counted(), fps)
        else:
            _write_pillow(temporary, counted(), fps, suffix)
        if count == 0:
            raise MagicBokehError("an animation needs at least one frame")
    return count


def check_animation_path(path: Path) -> None:
    """Refuse an extension no writer handles; check the MP4 writer is installed."""
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise MagicBokehError(
            f"cannot write the animation {path.name}: use one of {', '.join(ANIMATION_SUFFIXES)}"
        )
    if suffix == ".mp4":
        from magicbokeh.extras import require

        require("video", "writing MP4")


def frame_duration_ms(fps: float, suffix: str) -> int:
    """A frame's display time as the format stores it: ms, and for GIF whole 1/100 s."""
    if suffix == ".gif":
        return max(1, round(100.0 / fps)) * 10
    return max(1, round(1000.0 / fps))


def _write_mp4(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=None,
        macro_block_size=1,
        output_params=["-crf", str(MP4_CRF)],
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            height, width = frame.shape[:2]
            writer.append_data(
                np.ascontiguousarray(frame[: height - height % 2, : width - width % 2])
            )
    finally:
        writer.close()


def _write_pillow(path: Path, frames: Iterator[np.ndarray], fps: float, suffix: str) -> None:
    from PIL import Image

    first = next(frames, None)
    if first is None:
        return
    options = {"save_all": True, "loop": 0, "duration": frame_duration_ms(fps, suffix)}
    if suffix == ".webp":
        options.update(quality=WEBP_QUALITY, method=4)
    else:
        options.update(optimize=False, disposal=1)
    Image.fromarray(first).save(
        path,
        format="GIF" if suffix == ".gif" else "WEBP",
        append_images=(Image.fromarray(frame) for frame in frames),
        **options,
    )
