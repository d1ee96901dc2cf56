"""What evaluation runs on each pair: one-pass engines, two-stage baselines, SR methods.

Bokeh engines (``eval bokeh --engine``):

- ``physical``: the weight-free physical engine on the input (Lanczos-upsampled to the
  target size first when ``--scale`` > 1), as ``magicbokeh render --engine physical``;
- ``diffusion``: the learned engine, one pass (bicubic upsampling first, as it was trained);
- ``lanczos+physical`` and ``diffusion+physical``: the two-stage baselines of the paper's
  Table 1 built from what this package has: super-resolution first (Lanczos, or the learned
  engine with K = 0, i.e. restoration only), then the physical engine on its result. With
  ``--depth auto`` the second stage estimates depth on the super-resolved image, as the paper
  does for its two-stage baselines;
- ``outputs:DIR``: another method's results, ``DIR/<stem>.<ext>``, scored as they are.

SR methods (``eval sr --method``): ``bicubic``, ``lanczos``, ``diffusion`` (the learned engine
with an all-zero defocus map), ``outputs:DIR``.

Images are ``H×W×3`` float32 sRGB in [0, 1]. Per-image times are wall-clock seconds per stage
(``depth`` when depth is estimated, ``sr``, ``bokeh``); a batch's time is split evenly over its
images. Engines run images of one size (and one K) in batches of ``batch_size``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import FocusSpec, resolve_focus

__all__ = [
    "BOKEH_ENGINES",
    "SR_METHODS",
    "Item",
    "Result",
    "fit_aperture",
    "make_bokeh_engine",
    "make_sr_method",
    "output_files",
    "resize_rgb",
]

BOKEH_ENGINES = ("physical", "diffusion", "lanczos+physical", "diffusion+physical")
SR_METHODS = ("bicubic", "lanczos", "diffusion")
FIT_SIDE = 256
FIT_K_MAX = 64.0
FIT_STEP = 8


@dataclass
class Item:
    """One pair, ready for an engine.

    ``image``: the engine input (``h×w×3``); ``size``: the output (= target) size ``(H, W)``;
    ``disparity``: ``h×w`` in [0, 1] or None to estimate it; ``focus``: where to focus;
    ``aperture``: K, or None to fit it to ``target`` (``H×W×3``).
    """

    stem: str
    image: np.ndarray
    size: tuple[int, int]
    target: np.ndarray
    disparity: np.ndarray | None = None
    focus: FocusSpec = field(default_factory=lambda: FocusSpec("auto"))
    aperture: float | None = 32.0


@dataclass
class Result:
    """An engine's output ``H×W×3``, its per-stage seconds, what it decided (K, d_f, depth
    source) and the disparity it used (``H×W``, None when there was none)."""

    output: np.ndarray
    times: dict[str, float]
    info: dict = field(default_factory=dict)
    disparity: np.ndarray | None = None


_INTERPOLATION = {
    "lanczos": cv2.INTER_LANCZOS4,
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
}


def resize_rgb(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """``image`` (``h×w×C`` or ``h×w``) resized to ``size = (H, W)``; area when shrinking both
    sides, else ``method``; clipped to [0, 1]."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = _INTERPOLATION["area" if shrinking else method]
    out = cv2.resize(
        np.ascontiguousarray(image, dtype=np.float32), (width, height), interpolation=interpolation
    )
    return np.clip(out, 0.0, 1.0)


def _chw(array: np.ndarray) -> torch.Tensor:
    values = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).permute(2, 0, 1)


def _hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(1, 2, 0).float().cpu().numpy()


class _Clock:
    """Wall-clock seconds of a block, waiting for the device to finish."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, work: Callable[[], object]) -> tuple[object, float]:
        self._sync()
        start = time.perf_counter()
        value = work()
        self._sync()
        return value, time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _batches(indices: Sequence[int], key: Callable[[int], object], size: int) -> list[list[int]]:
    """``indices`` grouped by ``key`` (in first-seen order), cut into runs of ``size``."""
    groups: dict[object, list[int]] = {}
    for i in indices:
        groups.setdefault(key(i), []).append(i)
    return [g[s : s + size] for g in groups.values() for s in range(0, len(g), size)]


def fit_aperture(
    image: np.ndarray,
    disparity: np.ndarray,
    focus_disparity: float,
    target: np.ndarray,
    *,
    device: torch.device | str = "cpu",
) -> float:
    """The K in [0, 64] whose physical render of ``image`` is closest (PSNR) to ``target``.

    An oracle that looks at the target, for data whose blur strength is unknown (EBB!'s
    lens settings vary per photo): renders at most 256 px on the longer side, K on a grid of
    8, then an integer search around the best grid point (about 15 renders in all).
    """
    from magicbokeh.metrics.psnr_ssim import psnr
    from magicbokeh.optics import render_physical

    height, width = image.shape[:2]
    factor = min(1.0, FIT_SIDE / max(height, width))
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    small = _chw(resize_rgb(image, size, "bilinear"))[None].to(device)
    small_d = _chw(resize_rgb(disparity, size, "bilinear"))[None].to(device)
    goal = _chw(resize_rgb(target, size, "bilinear"))[None].to(device)
    scores: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in scores:
            out = render_physical(small, small_d, focus_disparity, k * factor)
            scores[k] = float(psnr(out, goal)[0])
        return scores[k]

    best = max(range(0, int(FIT_K_MAX) + 1, FIT_STEP), key=score)
    low, high = max(0, best - FIT_STEP + 1), min(int(FIT_K_MAX), best + FIT_STEP - 1)
    while high - low > 2:  # ternary search over integers, assuming one peak near the best
        m1, m2 = low + (high - low) // 3, high - (high - low) // 3
        if score(m1) < score(m2):
            low = m1 + 1
        elif score(m1) > score(m2):
            high = m2 - 1
        else:
            low, high = m1, m2
    return float(max(range(low, high + 1), key=score))


class _Stages:
    """Shared machinery: device, batching, the learned pipeline, depth and focus."""

    stages: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        device: torch.device,
        batch_size: int = 4,
        model: str | Path | None = None,
        dtype: str = "fp32",
        tile_size: int | None = None,
    ) -> None:
        self.device, self.batch_size = device, max(1, int(batch_size))
        self.model, self.dtype, self.tile_size = model, dtype, tile_size
        self.clock = _Clock(device)
        self.warnings: set[str] = set()
        self._pipeline = None

    def _model_folder(self) -> Path:
        """The learned model's folder (``--model`` or the installed one), checked before any
        work; the model itself loads on first use."""
        from magicbokeh.runtime import DIFFUSION_MODEL_DIR, installed_model

        folder = self.model or installed_model(DIFFUSION_MODEL_DIR)
        if folder is None:
            raise MagicBokehError(
                "the diffusion engine needs the MagicBokeh weights, which are not installed: "
                "run `magicbokeh download` or pass --model DIR"
            )
        if not Path(folder).is_dir():
            raise MagicBokehError(f"--model {folder} is not a folder; give a model folder")
        return Path(folder)

    @property
    def pipeline(self):
        """The learned pipeline, loaded on first use."""
        if self._pipeline is None:
            from magicbokeh.api import load_pipeline

            self._pipeline = load_pipeline(self._model_folder(), self.device, self.dtype)
        return self._pipeline

    def _disparity(self, item: Item, image: np.ndarray, times: dict) -> tuple[np.ndarray, str]:
        """The item's disparity at ``image``'s size, estimated on ``image`` when not given."""
        from magicbokeh.depth.resolve import resolve_depth

        if item.disparity is not None:
            return resize_rgb(item.disparity, image.shape[:2], "bilinear"), "file"
        resolved, seconds = self.clock(
            lambda: resolve_depth("auto", image, device=self.device, normalize=True)
        )
        times["depth"] = times.get("depth", 0.0) + seconds
        if resolved.warning:
            self.warnings.add(resolved.warning)
        return resolved.disparity, resolved.source

    def _learned(self, images: list[np.ndarray], maps: list[np.ndarray], d_f, k: float):
        batch = torch.stack([_chw(i) for i in images]).to(self.device)
        disparity = torch.stack([_chw(m) for m in maps]).to(self.device)
        out = self.pipeline(batch, disparity, d_f, k, progress=False, tile_size=self.tile_size)
        return [_hwc(o) for o in out.images]

    def _physical(self, images: list[np.ndarray], maps: list[np.ndarray], d_f, k: float):
        from magicbokeh.optics import render_physical

        batch = torch.stack([_chw(i) for i in images]).to(self.device)
        disparity = torch.stack([_chw(m) for m in maps]).to(self.device)
        focus = torch.tensor(d_f, dtype=torch.float32, device=self.device)
        return [_hwc(o) for o in render_physical(batch, disparity, focus, k)]

    def _focus_and_k(self, item: Item, image: np.ndarray, disparity: np.ndarray) -> dict:
        d_f = resolve_focus(disparity, item.focus)
        k = item.aperture
        if k is None:
            k = fit_aperture(image, disparity, d_f, item.target, device=self.device)
        return {
            "focus_disparity": d_f,
            "aperture_K": float(k),
            "aperture_fitted": item.aperture is None,
        }

    def _super_resolve(self, items: Sequence[Item], method: str) -> list[dict]:
        """Each item's input at its output size, timed as stage ``sr``: interpolation
        (``bicubic``, ``lanczos``), or the learned engine at K = 0 (restoration only) on the
        bicubic-upsampled input (``diffusion``)."""
        interpolation = "bicubic" if method == "diffusion" else method
        prepared = []
        for item in items:
            up, seconds = self.clock(lambda i=item: resize_rgb(i.image, i.size, interpolation))
            prepared.append({"item": item, "image": up, "times": {"sr": seconds}, "info": {}})
        if method == "diffusion":
            for p in prepared:
                p["disparity"] = np.zeros(p["image"].shape[:2], np.float32)
                p["info"] = {"focus_disparity": 0.0, "aperture_K": 0.0}
            self._batched(prepared, "sr", self._learned, lambda p: p["image"].shape)
            for p in prepared:
                p["image"], p["info"], p["disparity"] = p.pop("output"), {}, None
        return prepared

    def _batched(
        self,
        prepared: list[dict],
        stage: str,
        render: Callable,
        key: Callable[[dict], object],
    ) -> None:
        """Run ``render(images, maps, d_f list, K)`` over same-size, same-K batches; store each
        output in ``p["output"]`` and the batch time share in ``p["times"][stage]``."""
        for batch in _batches(range(len(prepared)), lambda i: key(prepared[i]), self.batch_size):
            group = [prepared[i] for i in batch]
            outputs, seconds = self.clock(
                lambda g=group: render(
                    [p["image"] for p in g],
                    [p["disparity"] for p in g],
                    [p["info"]["focus_disparity"] for p in g],
                    g[0]["info"]["aperture_K"],
                )
            )
            for p, out in zip(group, outputs, strict=True):
                p["output"] = out
                p["times"][stage] = p["times"].get(stage, 0.0) + seconds / len(group)


class OnePassEngine(_Stages):
    """``physical`` or ``diffusion``: depth and focus on the input, then one render."""

    stages = ("bokeh",)

    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        if kind == "diffusion":
            self._model_folder()

    def run(self, items: Sequence[Item]) -> list[Result]:
        method = "lanczos" if self.kind == "physical" else "bicubic"
        prepared = []
        for item in items:
            times: dict[str, float] = {}
            disparity, source = self._disparity(item, item.image, times)
            up, seconds = self.clock(lambda i=item: resize_rgb(i.image, i.size, method))
            times["bokeh"] = seconds
            up_disparity = resize_rgb(disparity, item.size, "bilinear")
            info = self._focus_and_k(item, up, up_disparity) | {"depth_source": source}
            prepared.append({"image": up, "disparity": up_disparity, "info": info, "times": times})
        render = self._physical if self.kind == "physical" else self._learned
        self._batched(
            prepared, "bokeh", render, lambda p: (p["image"].shape, p["info"]["aperture_K"])
        )
        return [_result(p) for p in prepared]


class TwoStageEngine(_Stages):
    """``lanczos+physical`` / ``diffusion+physical``: super-resolution, then physical bokeh."""

    stages = ("sr", "bokeh")

    def __init__(self, sr: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sr = sr
        if sr == "diffusion":
            self._model_folder()

    def run(self, items: Sequence[Item]) -> list[Result]:
        prepared = self._super_resolve(items, self.sr)
        for p in prepared:
            item = p["item"]
            disparity, source = self._disparity(item, p["image"], p["times"])
            p["disparity"] = disparity
            p["info"] = self._focus_and_k(item, p["image"], disparity) | {"depth_source": source}
        self._batched(
            prepared, "bokeh", self._physical, lambda p: (p["image"].shape, p["info"]["aperture_K"])
        )
        return [_result(p) for p in prepared]


class SREngine(_Stages):
    """``bicubic`` / ``lanczos`` / ``diffusion`` super-resolution to the target size."""

    stages = ("sr",)

    def __init__(self, method: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.method = method
        if method == "diffusion":
            self._model_folder()

    def run(self, items: Sequence[Item]) -> list[Result]:
        prepared = self._super_resolve(items, self.method)
        for p in prepared:
            p["output"] = p["image"]
        return [_result(p) for p in prepared]


class OutputsEngine:
    """``outputs:DIR``: another method's result files, scored as they are (no times)."""

    stages: tuple[str, ...] = ()

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.warnings: set[str] = set()

    def run(self, items: Sequence[Item]) -> list[Result]:
        from magicbokeh.io import load_image

        return [
            Result(load_image(self.files[i.stem]).rgb, {}, {"file": str(self.files[i.stem])})
            for i in items
        ]


def _result(prepared: dict) -> Result:
    output = np.clip(prepared["output"], 0.0, 1.0)
    return Result(output, dict(prepared["times"]), prepared["info"], prepared.get("disparity"))


def output_files(folder: str | Path, stems: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """The result file of each stem in ``folder`` (any readable image extension), and the
    stems that have none.

    Raises:
        MagicBokehError: ``folder`` does not exist.
    """
    from magicbokeh.data.datasets import files_by_stem
    from magicbokeh.io.images import READ_SUFFIXES

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MagicBokehError(f"outputs folder {root} does not exist; check --engine outputs:DIR")
    found = files_by_stem(root, READ_SUFFIXES)
    return {s: found[s] for s in stems if s in found}, [s for s in stems if s not in found]


def make_bokeh_engine(name: str, **kwargs):
    """The bokeh engine called ``name`` (see :data:`BOKEH_ENGINES`; ``outputs:DIR`` is made by
    the caller with :class:`OutputsEngine`)."""
    if name in ("physical", "diffusion"):
        return OnePassEngine(name, **kwargs)
    if name in ("lanczos+physical", "diffusion+physical"):
        return TwoStageEngine(name.split("+")[0], **kwargs)
    raise MagicBokehError(f"unknown engine {name!r}: use {', '.join(BOKEH_ENGINES)} or outputs:DIR")


def make_sr_method(name: str, **kwargs):
    """The SR method called ``name`` (see :data:`SR_METHODS`)."""
    if name in SR_METHODS:
        return SREngine(name, **kwargs)
    raise MagicBokehError(f"unknown method {name!r}: use {', '.join(SR_METHODS)} or outputs:DIR")
