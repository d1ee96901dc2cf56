"""Learned disparity with Depth Anything V2 on transformers' ``DepthAnythingForDepthEstimation``.

:class:`DepthAnythingEstimator` maps sRGB-encoded images ``B×3×H×W`` in [0, 1] to disparity
``B×1×H×W`` in [0, 1] (larger = nearer) at the input size, with the preprocessing and
post-processing of the released Depth Anything V2 ``infer_image`` that MagicBokeh's
``prepare_data.py`` calls:

1. keep-aspect resize with a lower bound: ``scale = max(518/H, 518/W)``, each side becomes
   ``round(scale·side / 14)·14`` (half to even), raised to the next multiple of 14 when it falls
   below 518 (:func:`network_size`);
2. bicubic resampling in float64 with OpenCV ``INTER_CUBIC`` arithmetic (Keys a = −0.75,
   half-pixel centres, edge replicate, no antialiasing, no clipping; :func:`resize_cubic`);
3. ImageNet normalisation, cast to the model dtype;
4. the network, ending in a ReLU, with the DINOv2 positional embedding resampled by the original
   rule (bicubic with ``scale_factor = ((gh + 0.1)/N, (gw + 0.1)/N)``, see
   :func:`use_original_pos_embed_interpolation`);
5. bilinear upsampling (``align_corners=True``) back to ``H×W``;
6. per-image min-max normalisation ``(d − min) / (max − min + 1e-8)``.

Weights load from a transformers folder or Hub id (``depth-anything/Depth-Anything-V2-Large-hf``
and friends) or directly from an original-format checkpoint such as MagicBokeh's ``DAdepth.pth``
(converted in memory by :mod:`magicbokeh.depth.convert_depth_anything`).
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import require

if TYPE_CHECKING:
    from transformers import DepthAnythingForDepthEstimation

INPUT_SIZE = 518
"""Lower bound, in pixels, on both sides of the network input."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

POS_EMBED_OFFSET = 0.1
"""Offset added to the patch grid before computing the positional-embedding scale factor."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ORIGINAL_SUFFIXES = (".pth", ".pt", ".ckpt")
FETCH_HINT = (
    "download a transformers folder, e.g. `hf download depth-anything/Depth-Anything-V2-Large-hf "
    "--local-dir DIR`, or convert an original checkpoint with "
    "`python -m magicbokeh.depth.convert_depth_anything DAdepth.pth DIR`"
)


def network_size(
    height: int, width: int, input_size: int = INPUT_SIZE, multiple: int = 14
) -> tuple[int, int]:
    """Network input size ``(h, w)`` for an image of ``height×width`` pixels.

    Keeps the aspect ratio with a lower bound: the scale is ``max(input_size/height,
    input_size/width)``; each scaled side is rounded to a multiple of ``multiple`` (half to even)
    and raised with ``ceil`` to the next multiple if it falls below ``input_size``.
    """
    if height < 1 or width < 1:
        raise MagicBokehError(f"image size {height}×{width} is empty; pass a non-empty image")
    scale = max(input_size / height, input_size / width)

    def constrain(side: float) -> int:
        rounded = round(side / multiple) * multiple
        if rounded < input_size:
            rounded = math.ceil(side / multiple) * multiple
        return int(rounded)

    return constrain(scale * height), constrain(scale * width)


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (CPU, CUDA), float32 elsewhere (e.g. MPS)."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _cubic_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights (both ``out_size×4``) of OpenCV's ``INTER_CUBIC`` along one axis.

    Follows OpenCV's arithmetic: the source coordinate ``(i + 0.5)·in/out − 0.5`` is rounded to
    float32, the Keys cubic (a = −0.75) weights are computed in float32, and taps outside the
    image are clamped to the edge.
    """
    scale = 1.0 / (out_size / in_size)
    position = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position)
    x = (position - start.astype(np.float32)).astype(np.float32)
    a = np.float32(-0.75)
    one = np.float32(1.0)
    w0 = ((a * (x + one) - np.float32(5) * a) * (x + one) + np.float32(8) * a) * (
        x + one
    ) - np.float32(4) * a
    w1 = ((a + np.float32(2)) * x - (a + np.float32(3))) * x * x + one
    w2 = ((a + np.float32(2)) * (one - x) - (a + np.float32(3))) * (one - x) * (one - x) + one
    w3 = one - w0 - w1 - w2
    weights = np.stack([w0, w1, w2, w3], axis=1).astype(np.float64)
    index = start.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    index = np.clip(index, 0, in_size - 1)
    return torch.from_numpy(index), torch.from_numpy(weights)


def _resize_cubic_axis(images: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    in_size = images.shape[dim]
    if in_size == out_size:
        return images
    index, weights = _cubic_taps(in_size, out_size)
    index = index.to(images.device)
    weights = weights.to(device=images.device, dtype=images.dtype)
    shape = [1] * images.ndim
    shape[dim] = out_size
    result = torch.zeros((), dtype=images.dtype, device=images.device)
    for tap in range(4):
        result = result + images.index_select(dim, index[:, tap]) * weights[:, tap].view(shape)
    return result


def resize_cubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``B×C×H×W`` to ``size = (h, w)``, equal to OpenCV ``INTER_CUBIC``.

    Keys cubic with a = −0.75, half-pixel centres, edge replicate, no antialiasing when
    shrinking, no clipping (values may overshoot the input range). Width is resampled first, then
    height, in ``images``' dtype; on float64 input the result matches ``cv2.resize`` to rounding.
    """
    return _resize_cubic_axis(_resize_cubic_axis(images, 3, size[1]), 2, size[0])


def preprocess(
    images: torch.Tensor, input_size: int = INPUT_SIZE, multiple: int = 14
) -> torch.Tensor:
    """Resize and normalise sRGB-encoded images ``B×3×H×W`` in [0, 1] for the network.

    Returns ``B×3×h×w`` with ``(h, w) = network_size(H, W)``, ImageNet-normalised (roughly
    [−2.1, 2.6]), in float64 on CPU/CUDA (float32 elsewhere); the caller casts to the model dtype.
    Resampling is OpenCV-equivalent bicubic on unclipped values (:func:`resize_cubic`).
    """
    height, width = images.shape[-2:]
    size = network_size(height, width, input_size, multiple)
    work = resize_cubic(images.to(_work_dtype(images.device)), size)
    mean = torch.tensor(IMAGENET_MEAN, dtype=work.dtype, device=work.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=work.dtype, device=work.device).view(1, 3, 1, 1)
    return (work - mean) / std


def _original_interpolate_pos_encoding(
    self: torch.nn.Module, embeddings: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """DINOv2 positional embedding for a ``height×width`` pixel input, original resampling rule.

    ``self`` is a transformers ``Dinov2Embeddings``. Returns ``1×(1 + gh·gw)×D`` where
    ``gh, gw`` is the patch grid; the ``N×N`` pretrained grid is resampled bicubically with
    ``scale_factor = ((gh + 0.1)/N, (gw + 0.1)/N)`` in float32 (no antialiasing), so even an axis
    of length ``N`` is resampled unless the input is exactly the pretrained square.
    """
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return self.position_embeddings
    patch_h, patch_w = self.patch_embeddings.patch_size
    grid_h, grid_w = height // patch_h, width // patch_w
    side = int(math.sqrt(num_positions))
    dim = embeddings.shape[-1]
    target_dtype = self.position_embeddings.dtype
    pos_embed = self.position_embeddings.float()
    patch_pos_embed = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos_embed = F.interpolate(
        patch_pos_embed,
        scale_factor=((grid_h + POS_EMBED_OFFSET) / side, (grid_w + POS_EMBED_OFFSET) / side),
        mode="bicubic",
        align_corners=False,
        antialias=False,
    )
    if patch_pos_embed.shape[-2:] != (grid_h, grid_w):
        raise MagicBokehError(
            f"positional embedding resampled to {tuple(patch_pos_embed.shape[-2:])} instead of the "
            f"patch grid {(grid_h, grid_w)}; use an input whose sides are multiples of {patch_h}"
        )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((pos_embed[:, :1], patch_pos_embed), dim=1).to(target_dtype)


def use_original_pos_embed_interpolation(model: DepthAnythingForDepthEstimation) -> None:
    """Make ``model``'s DINOv2 backbone resample its positional embedding like the original code.

    transformers resamples to an explicit grid size; the released Depth Anything V2 resamples with
    a scale factor and a 0.1 offset, which changes outputs by up to ~0.1 for non-square inputs.
    The override is bound to this model instance only.
    """
    embeddings = model.backbone.embeddings
    embeddings.interpolate_pos_encoding = types.MethodType(
        _original_interpolate_pos_encoding, embeddings
    )


def _looks_local(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return (
        isinstance(name_or_path, Path)
        or Path(text).exists()
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
    )


def _check_folder(folder: Path) -> None:
    """Raise :class:`MagicBokehError` naming what a transformers model folder lacks."""
    if not folder.is_dir():
        raise MagicBokehError(f"depth model folder {folder} does not exist; {FETCH_HINT}")
    if not (folder / "config.json").is_file():
        raise MagicBokehError(f"depth model folder {folder} has no config.json; {FETCH_HINT}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise MagicBokehError(
            f"depth model folder {folder} has no weights (model.safetensors); {FETCH_HINT}"
        )


def load_depth_anything_model(name_or_path: str | Path) -> DepthAnythingForDepthEstimation:
    """Load a ``DepthAnythingForDepthEstimation`` (float32, CPU, eval, original pos-embed rule).

    ``name_or_path`` is a Hugging Face Hub id, a local transformers folder, or an original-format
    Depth Anything V2 checkpoint file (``.pth``/``.pt``/``.ckpt``, e.g. ``DAdepth.pth``).
    """
    require("diffusion", "the Depth Anything depth model", ("transformers",))
    from transformers import AutoConfig, DepthAnythingForDepthEstimation

    path = Path(str(name_or_path)).expanduser()
    if path.suffix.lower() in ORIGINAL_SUFFIXES:
        if not path.is_file():
            raise MagicBokehError(f"Depth Anything checkpoint {path} not found; {FETCH_HINT}")
        from magicbokeh.depth.convert_depth_anything import load_original_model

        model = load_original_model(path)
    else:
        if _looks_local(name_or_path):
            _check_folder(path)
            source = str(path)
        else:
            source = str(name_or_path)
        try:
            config = AutoConfig.from_pretrained(source)
            if config.model_type != "depth_anything":
                raise MagicBokehError(
                    f"{name_or_path} is a {config.model_type!r} model, not Depth Anything V2; "
                    "pass a Depth Anything V2 folder, Hub id or original .pth"
                )
            model, info = DepthAnythingForDepthEstimation.from_pretrained(
                source, config=config, output_loading_info=True
            )
            missing = sorted(info.get("missing_keys", []))
            if missing:
                raise MagicBokehError(
                    f"{name_or_path} lacks {len(missing)} Depth Anything V2 weights "
                    f"({', '.join(missing[:3])}…); its weights belong to another model"
                )
        except (OSError, ValueError) as error:
            if isinstance(error, MagicBokehError):
                raise
            raise MagicBokehError(
                f"cannot load Depth Anything model {source!r} ({str(error).splitlines()[0]}); "
                f"{FETCH_HINT}"
            ) from error
    if model.config.depth_estimation_type != "relative":
        raise MagicBokehError(
            f"{name_or_path} is a metric-depth model; use a relative-depth Depth Anything V2 "
            "model, whose output is disparity (larger = nearer)"
        )
    use_original_pos_embed_interpolation(model)
    return model.eval()


class DepthAnythingEstimator:
    """Depth Anything V2: sRGB ``B×3×H×W`` in [0, 1] → disparity ``B×1×H×W`` in [0, 1].

    Larger disparity = nearer. Each image is min-max normalised on its own, so values are relative
    within one image. Images are processed ``batch_size`` at a time to bound memory; the network
    sees each image at about 518 pixels on its shorter side whatever the input size.
    """

    def __init__(
        self,
        model: DepthAnythingForDepthEstimation,
        *,
        input_size: int = INPUT_SIZE,
        batch_size: int = 4,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise MagicBokehError(f"batch_size must be at least 1, got {batch_size}")
        use_original_pos_embed_interpolation(model)
        self.model = model.eval()
        self.input_size = input_size
        self.batch_size = batch_size
        self.progress = progress
        patch = model.config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        input_size: int = INPUT_SIZE,
        batch_size: int = 4,
        progress: bool = False,
    ) -> DepthAnythingEstimator:
        """Load from a Hub id, a local transformers folder or an original ``.pth`` checkpoint.

        ``device`` defaults to CUDA when available, else CPU; ``dtype`` is the network's dtype
        (float32, or float16/bfloat16 on GPU); ``input_size`` the lower bound on the network
        input's sides (518 as released). Missing files raise :class:`MagicBokehError`.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_depth_anything_model(name_or_path).to(device=torch.device(device), dtype=dtype)
        return cls(model, input_size=input_size, batch_size=batch_size, progress=progress)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def predict_raw(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Network output for preprocessed input ``B×3×h×w`` (sides multiples of 14).

        Returns the relative disparity ``B×h×w`` after the final ReLU (≥ 0, unbounded), float32.
        """
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.model(pixel_values=pixel_values).predicted_depth.float()

    @torch.inference_mode()
    def disparity(self, images: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
        """Disparity for sRGB-encoded images ``B×3×H×W`` in [0, 1], returned ``B×1×H×W`` float32.

        With ``normalise`` (default) each image is min-max normalised to [0, 1]; without it the
        values are the network's relative disparity (≥ 0) upsampled to ``H×W``. The result is on
        ``images``' device.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise MagicBokehError(
                f"expected images of shape B×3×H×W, got {tuple(images.shape)}; pass RGB images"
            )
        if not images.is_floating_point():
            raise MagicBokehError(
                f"expected float images in [0, 1], got {images.dtype}; divide integer images by 255"
            )
        if images.shape[0] == 0:
            raise MagicBokehError("got an empty batch of images; pass at least one image")
        height, width = images.shape[-2:]
        chunks = torch.split(images, self.batch_size)
        outputs = []
        for chunk in tqdm(chunks, desc="depth", disable=not self.progress or len(chunks) < 2):
            pixel_values = preprocess(chunk.to(self.device), self.input_size, self.patch_size)
            raw = self.predict_raw(pixel_values)
            depth = F.interpolate(
                raw[:, None], size=(height, width), mode="bilinear", align_corners=True
            )
            if normalise:
                low = depth.amin(dim=(2, 3), keepdim=True)
                high = depth.amax(dim=(2, 3), keepdim=True)
                depth = (depth - low) / (high - low + 1e-8)
            outputs.append(depth.to(images.device))
        return torch.cat(outputs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised disparity ``B×1×H×W`` in [0, 1] (larger = nearer) for sRGB ``B×3×H×W``."""
        return self.disparity(images)
