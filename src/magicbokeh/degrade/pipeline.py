"""Real-ESRGAN second-order degradation: HR photo → realistic low-quality input.

Per sample, with every number from :class:`DegradationConfig` (the released OSEDiff/Real-ESRGAN
``params_realesrgan.yml`` settings used to train MagicBokeh's SR branch):

1. stage 1: blur (random kernel family) → random resize (up/down/keep, area/bilinear/bicubic)
   → Gaussian or Poisson noise (colour or gray) → clamp → JPEG;
2. stage 2: blur with probability ``second_blur_prob`` → random resize relative to
   ``HR / scale`` → noise → then, in random order, either [resize to ``HR / scale`` + final sinc]
   then JPEG, or JPEG then [resize + final sinc]; the final sinc is applied with probability
   ``final_sinc_prob`` (identity otherwise);
3. optionally resize back to the HR size; clamp and round to 8-bit levels.

Images are sRGB-encoded ``B×3×H×W`` floats in [0, 1]; all operations act on encoded values.
Random parameters are drawn by :func:`sample_params` from a numpy Generator (no image work, so
parameter statistics are cheap to check); noise is drawn from the caller's ``torch.Generator``.
Each sample draws its own parameters, including its own intermediate sizes, so the image work
runs sample by sample.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from magicbokeh.degrade.jpeg import jpeg_compress
from magicbokeh.degrade.kernels import (
    KERNEL_FAMILIES,
    filter2d,
    make_kernel,
    sample_blur_kernel,
    sample_sinc_kernel,
)
from magicbokeh.degrade.noise import apply_noise, sample_noise
from magicbokeh.errors import MagicBokehError

RESIZE_DIRECTIONS: tuple[str, ...] = ("up", "down", "keep")
FINAL_ORDERS: tuple[str, ...] = ("resize_sinc_then_jpeg", "jpeg_then_resize_sinc")


@dataclass(frozen=True)
class DegradationConfig:
    """Every number of the degradation, defaulting to the released training settings.

    Names follow ``params_realesrgan.yml``; a ``2`` suffix marks the second stage. Kernel
    sizes and σ are in HR pixels for stage 1 and in stage-1 output pixels for stage 2; noise σ
    is in 8-bit code values; sinc cutoffs ω_c in rad/px; resize ranges are scale factors.
    """

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    sinc_prob2: float = 0.1
    sinc_omega_range: tuple[float, float] = (math.pi / 3, math.pi)
    sinc_omega_range_large: tuple[float, float] = (math.pi / 5, math.pi)
    sinc_large_from_size: int = 13
    second_blur_prob: float = 0.8
    final_sinc_prob: float = 0.8
    final_sinc_omega_range: tuple[float, float] = (math.pi / 3, math.pi)

    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    resize_modes: tuple[str, ...] = ("area", "bilinear", "bicubic")

    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4

    jpeg_range: tuple[int, int] = (30, 95)
    jpeg_range2: tuple[int, int] = (30, 95)

    resize_sinc_first_prob: float = 0.5
    resize_back_modes: tuple[str, ...] = ("area", "bilinear", "bicubic")

    def __post_init__(self) -> None:
        for name in ("kernel_prob", "kernel_prob2"):
            probs = getattr(self, name)
            if len(probs) != len(KERNEL_FAMILIES) or not math.isclose(sum(probs), 1.0):
                raise MagicBokehError(f"{name} needs 6 probabilities summing to 1, got {probs}")
        for name in ("resize_prob", "resize_prob2"):
            probs = getattr(self, name)
            if len(probs) != 3 or not math.isclose(sum(probs), 1.0):
                raise MagicBokehError(f"{name} needs 3 probabilities (up, down, keep) summing to 1")
        for name in ("resize_range", "resize_range2"):
            low, high = getattr(self, name)
            if not 0 < low <= 1 <= high:
                raise MagicBokehError(f"{name} must satisfy 0 < low <= 1 <= high, got {low, high}")
        for name in ("jpeg_range", "jpeg_range2"):
            low, high = getattr(self, name)
            if not 1 <= low <= high <= 95:
                raise MagicBokehError(f"{name} must lie within 1..95, got {low, high}")
        modes = set(self.resize_modes) | set(self.resize_back_modes)
        if (
            not self.resize_modes
            or not self.resize_back_modes
            or modes
            - {
                "area",
                "bilinear",
                "bicubic",
            }
        ):
            raise MagicBokehError("resize modes must be non-empty and among area/bilinear/bicubic")
        if any(size < 1 or size % 2 == 0 for size in self.kernel_sizes):
            raise MagicBokehError(f"kernel sizes must be odd and positive, got {self.kernel_sizes}")

    def to_dict(self) -> dict:
        """All settings as a JSON-serialisable dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> DegradationConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise MagicBokehError(f"unknown degradation settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _sample_resize(rng: np.random.Generator, probs, scale_range, modes) -> dict:
    direction = RESIZE_DIRECTIONS[int(rng.choice(3, p=np.asarray(probs)))]
    if direction == "up":
        factor = float(rng.uniform(1.0, scale_range[1]))
    elif direction == "down":
        factor = float(rng.uniform(scale_range[0], 1.0))
    else:
        factor = 1.0
    return {"direction": direction, "scale": factor, "mode": str(rng.choice(list(modes)))}


def _sample_kernel(rng: np.random.Generator, config: DegradationConfig, second: bool) -> dict:
    suffix = "2" if second else ""
    return sample_blur_kernel(
        rng,
        sizes=config.kernel_sizes,
        family_probs=getattr(config, "kernel_prob" + suffix),
        sigma_range=getattr(config, "blur_sigma" + suffix),
        betag_range=getattr(config, "betag_range" + suffix),
        betap_range=getattr(config, "betap_range" + suffix),
        sinc_prob=getattr(config, "sinc_prob" + suffix),
        sinc_omega_range=config.sinc_omega_range,
        sinc_omega_range_large=config.sinc_omega_range_large,
        sinc_large_from_size=config.sinc_large_from_size,
    )


def _sample_noise(rng: np.random.Generator, config: DegradationConfig, second: bool) -> dict:
    suffix = "2" if second else ""
    return sample_noise(
        rng,
        gaussian_prob=getattr(config, "gaussian_noise_prob" + suffix),
        sigma_range=getattr(config, "noise_range" + suffix),
        poisson_scale_range=getattr(config, "poisson_scale_range" + suffix),
        gray_prob=getattr(config, "gray_noise_prob" + suffix),
    )


def _sample_quality(rng: np.random.Generator, quality_range) -> int:
    return int(rng.integers(quality_range[0], quality_range[1], endpoint=True))


def sample_params(rng: np.random.Generator, config: DegradationConfig | None = None) -> dict:
    """Draw one sample's degradation parameters (no image work).

    Returns a JSON-serialisable dict: ``kernel1``, ``resize1``, ``noise1``, ``jpeg1``,
    ``kernel2`` (``None`` when the second blur is skipped), ``resize2``, ``noise2``,
    ``final_order`` (one of :data:`FINAL_ORDERS`), ``final_resize_mode``, ``final_sinc``
    (``None`` = identity), ``jpeg2`` and ``resize_back_mode`` (used only with resize-back).
    Kernels are dicts for :func:`magicbokeh.degrade.kernels.make_kernel`; resizes are
    ``{"direction", "scale", "mode"}``; noises as in :func:`magicbokeh.degrade.noise.sample_noise`;
    JPEG qualities are integers drawn uniformly over the inclusive range.
    """
    config = config or DegradationConfig()
    params: dict = {
        "kernel1": _sample_kernel(rng, config, second=False),
        "resize1": _sample_resize(
            rng, config.resize_prob, config.resize_range, config.resize_modes
        ),
        "noise1": _sample_noise(rng, config, second=False),
        "jpeg1": _sample_quality(rng, config.jpeg_range),
    }
    blur2 = rng.uniform() < config.second_blur_prob
    params["kernel2"] = _sample_kernel(rng, config, second=True) if blur2 else None
    params["resize2"] = _sample_resize(
        rng, config.resize_prob2, config.resize_range2, config.resize_modes
    )
    params["noise2"] = _sample_noise(rng, config, second=True)
    resize_sinc_first = rng.uniform() < config.resize_sinc_first_prob
    params["final_order"] = FINAL_ORDERS[0] if resize_sinc_first else FINAL_ORDERS[1]
    params["final_resize_mode"] = str(rng.choice(list(config.resize_modes)))
    if rng.uniform() < config.final_sinc_prob:
        params["final_sinc"] = sample_sinc_kernel(
            rng, config.kernel_sizes, config.final_sinc_omega_range
        )
    else:
        params["final_sinc"] = None
    params["jpeg2"] = _sample_quality(rng, config.jpeg_range2)
    params["resize_back_mode"] = str(rng.choice(list(config.resize_back_modes)))
    return params


def minimum_hr_size(scale: int, config: DegradationConfig | None = None) -> int:
    """Smallest HR side (px) for which every intermediate image keeps at least one pixel."""
    config = config or DegradationConfig()
    return max(
        2 * scale,
        math.ceil(1.0 / config.resize_range[0]) + 1,
        math.ceil(scale / config.resize_range2[0]) + 1,
    )


def _blur(x: torch.Tensor, kernel_params: dict | None) -> torch.Tensor:
    if kernel_params is None:
        return x
    kernel = torch.from_numpy(make_kernel(kernel_params)).to(device=x.device, dtype=x.dtype)
    return filter2d(x, kernel)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _degrade_one(
    hr: torch.Tensor, p: dict, generator: torch.Generator, scale: int, resize_back: bool
) -> torch.Tensor:
    """Degrade one ``1×3×H×W`` sample with the parameters ``p`` from :func:`sample_params`."""
    h, w = hr.shape[-2:]
    lq_size = (h // scale, w // scale)

    out = _blur(hr, p["kernel1"])
    factor, mode = p["resize1"]["scale"], p["resize1"]["mode"]
    if mode == "area":
        out = F.interpolate(out, scale_factor=factor, mode="area")
    else:
        out = F.interpolate(out, scale_factor=factor, mode=mode, align_corners=False)
    out = apply_noise(out, [p["noise1"]], generator=generator)
    out = jpeg_compress(out, [p["jpeg1"]])

    out = _blur(out, p["kernel2"])
    factor = p["resize2"]["scale"]
    out = _resize(out, (int(h / scale * factor), int(w / scale * factor)), p["resize2"]["mode"])
    out = apply_noise(out, [p["noise2"]], generator=generator)

    if p["final_order"] == "resize_sinc_then_jpeg":
        out = _blur(_resize(out, lq_size, p["final_resize_mode"]), p["final_sinc"])
        out = jpeg_compress(out, [p["jpeg2"]])
    else:
        out = jpeg_compress(out, [p["jpeg2"]])
        out = _blur(_resize(out, lq_size, p["final_resize_mode"]), p["final_sinc"])

    if resize_back:
        out = _resize(out, (h, w), p["resize_back_mode"])
    return (out * 255.0).round().clamp(0.0, 255.0) / 255.0


def _check_input(hr: torch.Tensor, scale: int, config: DegradationConfig) -> None:
    if not isinstance(hr, torch.Tensor) or hr.dim() != 4 or hr.shape[1] != 3:
        shape = tuple(hr.shape) if isinstance(hr, torch.Tensor) else type(hr).__name__
        raise MagicBokehError(f"degrade expects a B×3×H×W tensor, got {shape}")
    if not hr.is_floating_point():
        raise MagicBokehError(f"degrade expects float values in [0, 1], got dtype {hr.dtype}")
    if not isinstance(scale, int) or scale < 1:
        raise MagicBokehError(f"scale must be a positive integer, got {scale!r}")
    smallest = minimum_hr_size(scale, config)
    if min(hr.shape[-2:]) < smallest:
        raise MagicBokehError(
            f"image is {hr.shape[-1]}×{hr.shape[-2]} px; degradation at scale {scale} needs "
            f"at least {smallest} px on each side"
        )


def params_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator seeded by one draw from ``generator`` (advances it by one draw)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed.item()))


def apply_degradation(
    hr: torch.Tensor,
    params: list[dict],
    *,
    generator: torch.Generator,
    scale: int = 4,
    resize_back: bool = False,
    config: DegradationConfig | None = None,
) -> torch.Tensor:
    """Degrade ``hr`` with given per-sample parameters (from :func:`sample_params`).

    hr: ``B×3×H×W`` sRGB-encoded float in [0, 1], ``len(params) == B``. Noise is drawn from
    ``generator``; ``config`` (the one the parameters were drawn with) only sets the smallest
    accepted size (:func:`minimum_hr_size`). Returns the LQ batch, same dtype and device,
    values on the 8-bit grid in [0, 1], of size ``H//scale × W//scale`` (``H×W`` with
    ``resize_back``).
    """
    _check_input(hr, scale, config or DegradationConfig())
    if len(params) != hr.shape[0]:
        raise MagicBokehError(f"{len(params)} parameter sets for a batch of {hr.shape[0]}")
    work_dtype = torch.float64 if hr.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        work = hr.detach().to(work_dtype)
        out = [
            _degrade_one(work[i : i + 1], p, generator, scale, resize_back)
            for i, p in enumerate(params)
        ]
        return torch.cat(out).to(hr.dtype)


def degrade(
    hr: torch.Tensor,
    *,
    generator: torch.Generator,
    scale: int = 4,
    resize_back: bool = False,
    return_params: bool = False,
    config: DegradationConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[dict]]:
    """Make realistic low-quality inputs from HR images (Real-ESRGAN second-order degradation).

    hr: ``B×3×H×W`` sRGB-encoded float in [0, 1], on any device. ``generator`` (a seeded
    ``torch.Generator``) drives every random choice: one draw seeds the numpy parameter sampler,
    the noise comes from it directly; the same seed gives the same output on the same device.
    Each sample draws its own parameters. Returns the LQ batch (same dtype and device, 8-bit
    levels in [0, 1], ``H//scale × W//scale`` or ``H×W`` with ``resize_back``), and with
    ``return_params`` also the per-sample parameter dicts (see :func:`sample_params`).
    """
    config = config or DegradationConfig()
    _check_input(hr, scale, config)
    rng = params_rng(generator)
    params = [sample_params(rng, config) for _ in range(hr.shape[0])]
    lq = apply_degradation(
        hr, params, generator=generator, scale=scale, resize_back=resize_back, config=config
    )
    return (lq, copy.deepcopy(params)) if return_params else lq
