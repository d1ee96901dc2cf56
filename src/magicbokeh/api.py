"""The Python API: ``magicbokeh.render(image, depth=None, focus=..., aperture=..., engine=...)``.

It mirrors ``magicbokeh render`` on the command line and returns everything that went into the
result, so any image can be reproduced from its settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from magicbokeh.depth.resolve import resolve_depth
from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import LEARNED_ENGINE, install_hint, missing, require
from magicbokeh.focus import (
    LEARNED_K_MAX,
    FocusSpec,
    as_focus_spec,
    defocus_radius,
    resize_mask,
    resolve_focus,
)
from magicbokeh.io import LoadedImage, load_image, to_tensor
from magicbokeh.optics import Aperture, render_physical
from magicbokeh.optics.render import DEFAULT_HIGHLIGHT
from magicbokeh.runtime import DIFFUSION_MODEL_DIR, installed_model, resolve_device

if TYPE_CHECKING:
    from magicbokeh.pipeline import MagicBokehPipeline

ENGINES = ("auto", "physical", "diffusion")
MAX_SCALE = 8.0


@dataclass
class RenderResult:
    """A rendered photo and what produced it.

    ``image``: ``H×W×3`` float32 sRGB in [0, 1] at the output size; ``alpha``: the input's alpha
    (``H×W``, carried through unchanged, resized with the image) or None; ``disparity``: ``H×W``
    in [0, 1] at the output size; ``focus_disparity``: d_f; ``defocus``: circle-of-confusion
    radius ``K·|d − d_f|`` in output pixels, ``H×W``; ``bit_depth``: the input's bits per channel;
    ``raw``: learned engine only, the blended network output before the colour fix, ``H×W×3``
    in [−1, 1]; ``icc_profile``: the input's colour profile, to embed in the output.
    """

    image: np.ndarray
    alpha: np.ndarray | None
    disparity: np.ndarray
    focus_disparity: float
    defocus: np.ndarray
    engine: str
    depth_source: str
    bit_depth: int = 8
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    raw: np.ndarray | None = None
    icc_profile: bytes | None = None


def select_engine(engine: str, model: str | Path | None = None) -> tuple[str, str | None]:
    """The engine to run and, for ``auto``, a note saying which was picked and why.

    ``diffusion`` needs the ``diffusion`` extra and the weights (checked here, before any
    work); ``auto`` takes the learned engine only when both are there.
    """
    if engine not in ENGINES:
        raise MagicBokehError(f"unknown engine {engine!r}: use auto, physical or diffusion")
    if engine == "diffusion":
        require("diffusion", "the learned engine (--engine diffusion)", LEARNED_ENGINE)
    available = model is not None or installed_model(DIFFUSION_MODEL_DIR) is not None
    if engine == "diffusion" and not available:
        raise MagicBokehError(
            "the diffusion engine needs the MagicBokeh weights, which are not installed: "
            "run `magicbokeh download`, pass --model DIR, or use --engine physical"
        )
    if engine == "auto":
        if not available:
            return "physical", "engine: physical (no MagicBokeh weights installed)"
        absent = missing("diffusion", LEARNED_ENGINE)
        if absent is not None:
            return "physical", (
                f"engine: physical (the learned engine needs the optional package '{absent}': "
                f"{install_hint('diffusion')})"
            )
        return "diffusion", "engine: diffusion (MagicBokeh weights found)"
    return engine, None


def render(
    image: str | Path | np.ndarray | LoadedImage,
    depth: object = None,
    focus: object = "auto",
    aperture: float = 16.0,
    engine: str = "auto",
    *,
    depth_kind: str = "disparity",
    aperture_shape: Aperture | None = None,
    highlight: float = DEFAULT_HIGHLIGHT,
    chromatic: tuple[float, float, float] | None = None,
    scale: float = 1.0,
    device: str = "auto",
    model: str | Path | None = None,
    pipeline: MagicBokehPipeline | None = None,
    dtype: str = "fp32",
    released: bool = False,
    vae_sample: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> RenderResult:
    """Render ``image`` with lens bokeh focused at ``focus``.

    ``image``: a path, a :class:`LoadedImage`, or an ``H×W×3`` sRGB array (float in [0, 1] or
    uint8). ``depth``: see :mod:`magicbokeh.depth.resolve`. ``focus``: ``"auto"``, ``(x, y)`` or
    ``(x0, y0, x1, y1)`` in input-image pixels, a disparity value in [0, 1], a mask array, or a
    :class:`FocusSpec`. ``aperture``: K, the blur radius in output pixels per unit disparity
    difference (0 = no blur). ``scale``: upsample the input by this factor first.

    Learned engine only: ``model`` (folder; default the installed one), ``pipeline`` (that
    model already loaded with :func:`load_pipeline`, to reuse across many renders; it must
    match ``model``, ``device``, ``dtype`` and ``released``), ``dtype`` (fp32, bf16, fp16),
    ``released`` (every convention of the released script: its tiling, AdaIN colour fix,
    8-bit depth, and for a focus mask its lower-median focus rule; depth files are used without
    renormalisation), ``vae_sample`` with ``seed`` (sample the VAE posterior as released instead
    of taking its mode).
    """
    if not np.isfinite(aperture) or aperture < 0:
        raise MagicBokehError(
            f"aperture K must be ≥ 0 (got {aperture:g}): 0 means no blur, 32 is strong blur"
        )
    if not 0 < scale <= MAX_SCALE:
        raise MagicBokehError(f"scale must be in (0, {MAX_SCALE:g}] (got {scale:g})")
    engine_name, note = select_engine(engine, model)
    torch_device = resolve_device(device)
    loaded = _as_loaded_image(image)
    image_path = loaded.source
    spec = as_focus_spec(focus)
    notes = [note]
    if engine_name == "diffusion" and aperture > LEARNED_K_MAX:
        notes.append(
            f"K = {aperture:g} is outside the learned engine's trained range 0..32; "
            "results may be unreliable (the physical engine accepts any K)"
        )
    resolved = resolve_depth(
        depth,
        loaded.rgb,
        image_path=image_path,
        kind=depth_kind,
        device=torch_device,
        normalize=not released,
    )
    if released and engine_name == "diffusion" and spec.kind == "mask":
        from magicbokeh.pipeline import released_focus_from_mask

        mask = torch.from_numpy(resize_mask(spec.mask, *resolved.disparity.shape))
        d_f = released_focus_from_mask(torch.from_numpy(resolved.disparity), mask)
    else:
        d_f = resolve_focus(resolved.disparity, spec)
    rgb, alpha, disparity = _rescaled(loaded, resolved.disparity, scale, engine_name)
    _check_blur_size(aperture, float(np.abs(disparity - d_f).max()), rgb.shape[:2])
    settings = {
        "engine": engine_name,
        "aperture_K": float(aperture),
        "scale": float(scale),
        "focus": spec.describe(),
        "focus_disparity": d_f,
        "depth_source": resolved.source,
        "depth_kind": depth_kind,
        "device": str(torch_device),
        "input": str(Path(image_path).resolve()) if image_path else None,
        "input_size": [loaded.rgb.shape[1], loaded.rgb.shape[0]],
        "output_size": [rgb.shape[1], rgb.shape[0]],
    }
    raw = None
    if engine_name == "physical":
        shape = aperture_shape or Aperture()
        output = render_physical(
            to_tensor(rgb, view=True).to(torch_device),
            _plane(disparity).to(torch_device),
            d_f,
            aperture,
            aperture_shape=shape,
            highlight=highlight,
            chromatic=chromatic,
            progress=progress,
        )[0]
        settings.update(
            aperture_shape={
                "blades": shape.blades,
                "rotation_deg": shape.rotation,
                "roundness": shape.roundness,
                "cat_eye": shape.cat_eye,
            },
            chromatic=list(chromatic) if chromatic else None,
            highlight=float(highlight),
        )
    else:
        folder = Path(model) if model is not None else installed_model(DIFFUSION_MODEL_DIR)
        if pipeline is None:
            pipeline = load_pipeline(folder, torch_device, dtype, merge_lora=not released)
        generator = torch.Generator(torch_device).manual_seed(seed) if vae_sample else None
        result = pipeline(
            to_tensor(rgb).to(torch_device),
            _plane(disparity).to(torch_device),
            d_f,
            aperture,
            mode="released" if released else "fast",
            vae_sample=vae_sample,
            generator=generator,
            progress=progress,
        )
        output = result.images[0]
        raw = result.blended[0].permute(1, 2, 0).float().cpu().numpy()
        settings.update(
            model=str(folder),
            dtype=dtype,
            mode="released" if released else "fast",
            vae_sample=vae_sample,
            seed=seed if vae_sample else None,
        )
    defocus = defocus_radius(torch.from_numpy(disparity), d_f, aperture).numpy()
    return RenderResult(
        image=output.permute(1, 2, 0).float().cpu().numpy(),
        alpha=alpha,
        disparity=disparity,
        focus_disparity=d_f,
        defocus=defocus,
        engine=engine_name,
        depth_source=resolved.source,
        bit_depth=loaded.bit_depth,
        settings=settings,
        warnings=[w for w in (*notes, resolved.warning) if w],
        raw=raw,
        icc_profile=loaded.icc_profile,
    )


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_pipeline(
    folder: Path, device: torch.device, dtype: str, *, merge_lora: bool = True
) -> MagicBokehPipeline:
    """The learned pipeline from ``folder`` on ``device`` in ``dtype`` (fp32, bf16 or fp16).

    ``merge_lora`` folds the SR LoRA into the base weights (faster, equal within float
    rounding); released mode keeps them separate, as the released code computes them.
    """
    if dtype not in DTYPES:
        raise MagicBokehError(f"unknown dtype {dtype!r}: use fp32, bf16 or fp16")
    if dtype == "fp16" and device.type == "cpu":
        raise MagicBokehError("fp16 is slow or unsupported on the CPU: use --dtype bf16 or fp32")
    from magicbokeh.pipeline import MagicBokehPipeline

    return MagicBokehPipeline.from_pretrained(
        folder, torch_dtype=DTYPES[dtype], device=device, merge_lora=merge_lora
    )


def _check_blur_size(aperture: float, spread: float, size: tuple[int, int]) -> None:
    """Refuse a K whose largest blur radius ``K·max|d − d_f|`` exceeds the image diagonal."""
    diagonal = float(np.hypot(*size))
    if aperture * spread > diagonal:
        raise MagicBokehError(
            f"aperture K = {aperture:g} blurs up to {aperture * spread:.0f} px, more than the "
            f"image diagonal ({diagonal:.0f} px): use K ≤ {int(diagonal / spread)}"
        )


def _as_loaded_image(image: object) -> LoadedImage:
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, str | Path):
        return load_image(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] * array.shape[1] == 0:
        raise MagicBokehError(f"an image array must be H×W×3 (or ×4), got shape {array.shape}")
    bit_depth = 16 if array.dtype == np.uint16 else 8
    if array.dtype.kind in "ui":
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    elif array.size and float(np.nanmax(array)) > 1.0:
        raise MagicBokehError(
            "a float image array must hold values in [0, 1]: divide 8-bit values by 255"
        )
    array = np.clip(array.astype(np.float32), 0.0, 1.0)
    alpha = array[..., 3] if array.shape[2] == 4 else None
    return LoadedImage(
        rgb=array[..., :3], alpha=alpha, bit_depth=bit_depth, icc_profile=None, source=None
    )


def _rescaled(
    loaded: LoadedImage, disparity: np.ndarray, scale: float, engine: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Resize image, alpha and disparity (bilinear) by ``scale``.

    Upsampling the image uses Lanczos for the physical engine and bicubic for the learned one
    (the learned engine was trained on bicubic-upsampled inputs); downsampling uses area.
    """
    if scale == 1.0:
        return loaded.rgb, loaded.alpha, disparity
    import cv2  # here: a render at scale 1 needs no OpenCV

    height, width = loaded.rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    upsample = cv2.INTER_LANCZOS4 if engine == "physical" else cv2.INTER_CUBIC
    method = upsample if scale > 1 else cv2.INTER_AREA

    def resize(x: np.ndarray, interpolation: int) -> np.ndarray:
        out = cv2.resize(
            np.ascontiguousarray(x, dtype=np.float32), size, interpolation=interpolation
        )
        return np.clip(out, 0.0, 1.0)

    alpha = None if loaded.alpha is None else resize(loaded.alpha, cv2.INTER_LINEAR)
    return resize(loaded.rgb, method), alpha, resize(disparity, cv2.INTER_LINEAR)


def _plane(array: np.ndarray) -> torch.Tensor:
    """``H×W`` array → ``1×1×H×W`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


__all__ = ["RenderResult", "render", "select_engine", "FocusSpec"]
