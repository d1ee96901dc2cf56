"""Degradation-aware Depth Anything V2 by self-distillation (MagicBokeh §3.4, supplementary §A).

A frozen teacher sees clean crops; a student, initialised as an exact copy of the teacher,
sees the same crops degraded by the Real-ESRGAN pipeline (on the training device, seeded, and
resized back to the crop size). Two losses pull the student's view of the degraded image
towards the teacher's view of the clean one:

- **feature loss**: mean squared error between student and teacher patch tokens at the encoder
  layers that feed the DPT head (by default the four the architecture taps), after the
  backbone's final LayerNorm, i.e. exactly what the head receives. The LayerNorm puts every
  token of every layer on one scale, so one weight fits all layers and MSE is well conditioned;
  the class token is left out because the head does not use it.
- **output loss**: scale-and-shift-invariant L1 between student(LQ) and teacher(HQ) disparity.
  Each map is normalised per image by its median ``t`` and mean absolute deviation
  ``s = mean|d − t|`` and the loss is ``mean|d̂_student − d̂_teacher|`` (the affine-invariant
  loss of MiDaS that Depth Anything itself was trained with). Depth Anything's disparity is
  only defined up to scale and shift, and everything downstream min-max normalises it, so only
  the shape of the map is supervised; the median/MAD form needs no per-image solve and is
  robust to the few wild pixels a heavily degraded input produces.

``total = feature_weight · feature + output_weight · output``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from magicbokeh.degrade.pipeline import DegradationConfig, degrade
from magicbokeh.depth.depth_anything import load_depth_anything_model, preprocess
from magicbokeh.errors import MagicBokehError

if TYPE_CHECKING:
    from transformers import DepthAnythingForDepthEstimation

SSI_EPS = 1e-6
"""Floor of the mean absolute deviation in the scale-and-shift-invariant normalisation."""


def tapped_layers(model: DepthAnythingForDepthEstimation) -> tuple[int, ...]:
    """0-based encoder blocks whose outputs feed the DPT head (``out_indices`` − 1)."""
    return tuple(int(i) - 1 for i in model.backbone.config.out_indices)


def parse_feature_layers(spec: str, model: DepthAnythingForDepthEstimation) -> tuple[int, ...]:
    """``"auto"`` (the head's taps) or comma-separated 0-based block indices, e.g. ``"4,11,17,23"``.

    Raises:
        MagicBokehError: not integers, repeated, or outside ``0 … num_layers − 1``.
    """
    if spec.strip() == "auto":
        return tapped_layers(model)
    try:
        layers = tuple(int(part) for part in spec.split(","))
    except ValueError:
        raise MagicBokehError(
            f"--feature-layers {spec!r}: give 'auto' or comma-separated block indices like 2,5,8,11"
        ) from None
    count = model.backbone.config.num_hidden_layers
    if len(set(layers)) != len(layers) or not all(0 <= i < count for i in layers):
        raise MagicBokehError(
            f"--feature-layers {spec!r}: indices must be distinct and within 0..{count - 1} "
            f"(this encoder has {count} blocks)"
        )
    return layers


def load_teacher(name_or_path: str | Path) -> DepthAnythingForDepthEstimation:
    """Any Depth Anything V2 the package loads (transformers folder, Hub id, original ``.pth``,
    a released ``DAdepth.pth``), frozen and in eval mode, on the CPU."""
    teacher = load_depth_anything_model(name_or_path)
    return teacher.requires_grad_(False).eval()


def make_student(
    teacher: DepthAnythingForDepthEstimation,
    *,
    freeze_encoder: bool = False,
    freeze_head: bool = False,
) -> DepthAnythingForDepthEstimation:
    """An identical copy of ``teacher`` in train mode; the encoder (DINOv2 backbone) and/or the
    DPT head (neck + output head) are frozen on request."""
    if freeze_encoder and freeze_head:
        raise MagicBokehError(
            "--freeze-encoder and --freeze-head together leave nothing to train; drop one"
        )
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    student.backbone.requires_grad_(not freeze_encoder)
    student.neck.requires_grad_(not freeze_head)
    student.head.requires_grad_(not freeze_head)
    return student


def network_input(images: torch.Tensor, model: DepthAnythingForDepthEstimation) -> torch.Tensor:
    """Normalised network input for square sRGB crops ``B×3×S×S`` in [0, 1] (S a multiple of
    the patch size): ImageNet normalisation, no resampling, in the model's dtype."""
    patch = model.config.patch_size
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    size = images.shape[-1]
    if images.shape[-2] != size or size % patch:
        raise MagicBokehError(
            f"training crops must be square with sides a multiple of {patch} px, got "
            f"{tuple(images.shape[-2:])}; use --resolution {max(patch, size // patch * patch)}"
        )
    dtype = next(model.parameters()).dtype
    return preprocess(images, input_size=size, multiple=patch).to(dtype)


def forward_with_features(
    model: DepthAnythingForDepthEstimation, pixel_values: torch.Tensor, layers: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Disparity ``B×h×w`` and the patch tokens ``B×N×C`` of ``layers`` as the head sees them
    (after the backbone's final LayerNorm when the architecture applies it), in one pass."""
    output = model(pixel_values=pixel_values, output_hidden_states=True)
    norm = model.backbone.layernorm if model.backbone.config.apply_layernorm else None
    features = []
    for index in layers:
        hidden = output.hidden_states[index + 1]  # 0 is the embedding output
        features.append((norm(hidden) if norm is not None else hidden)[:, 1:])
    return output.predicted_depth, features


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean squared error between token features."""
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher, strict=True)]).mean()


def ssi_normalise(disparity: torch.Tensor) -> torch.Tensor:
    """Per image ``(d − median) / max(mean|d − median|, SSI_EPS)`` of ``B×…`` maps."""
    flat = disparity.flatten(1)
    median = flat.median(dim=1, keepdim=True).values
    centred = flat - median
    spread = centred.abs().mean(dim=1, keepdim=True).clamp_min(SSI_EPS)
    return (centred / spread).view_as(disparity)


def scale_shift_invariant_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of median/MAD-normalised maps (``B×H×W`` each)."""
    return (ssi_normalise(prediction) - ssi_normalise(target)).abs().mean()


@dataclass(frozen=True)
class DistillSettings:
    """Numbers of one distillation run."""

    feature_layers: tuple[int, ...]
    """0-based encoder blocks whose features are distilled."""
    feature_weight: float = 1.0
    output_weight: float = 1.0
    degrade_scale: int = 4
    """Downscaling factor of the degradation (the result is resized back to the crop size)."""
    degradation: DegradationConfig = field(default_factory=DegradationConfig)


@dataclass
class DistillLosses:
    """One batch: ``total`` (with gradient), its detached parts, and the student's input."""

    total: torch.Tensor
    feature: torch.Tensor
    output: torch.Tensor
    lq: torch.Tensor
    """Degraded crops ``B×3×S×S`` sRGB in [0, 1]."""


def degrade_crops(
    clean: torch.Tensor, generator: torch.Generator, settings: DistillSettings
) -> torch.Tensor:
    """Real-ESRGAN degradation of ``B×3×S×S`` crops, resized back to ``S×S``, on their device."""
    return degrade(
        clean,
        generator=generator,
        scale=settings.degrade_scale,
        resize_back=True,
        config=settings.degradation,
    )


def distillation_loss(
    teacher: DepthAnythingForDepthEstimation,
    student: DepthAnythingForDepthEstimation,
    clean: torch.Tensor,
    *,
    generator: torch.Generator,
    settings: DistillSettings,
) -> DistillLosses:
    """The loss of one batch of clean sRGB crops ``B×3×S×S`` in [0, 1] (on the training device).

    ``generator`` (on the same device) seeds the degradation, so a run is reproducible.
    """
    lq = degrade_crops(clean, generator, settings)
    with torch.no_grad():
        target, target_features = forward_with_features(
            teacher, network_input(clean, teacher), settings.feature_layers
        )
    prediction, features = forward_with_features(
        student, network_input(lq, student), settings.feature_layers
    )
    feature = feature_loss(features, target_features)
    output = scale_shift_invariant_loss(prediction.float(), target.float())
    total = settings.feature_weight * feature + settings.output_weight * output
    return DistillLosses(total, feature.detach(), output.detach(), lq)


def _unit(disparity: torch.Tensor) -> torch.Tensor:
    low = disparity.amin(dim=(-2, -1), keepdim=True)
    high = disparity.amax(dim=(-2, -1), keepdim=True)
    return ((disparity - low) / (high - low + 1e-8))[:, None].float()


@torch.no_grad()
def sample_panels(
    teacher: DepthAnythingForDepthEstimation,
    student: DepthAnythingForDepthEstimation,
    clean: torch.Tensor,
    lq: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The four panels of a training sample: ``lq`` (``B×3×S×S``) and the min-max normalised
    disparities ``teacher_hq``, ``teacher_lq``, ``student_lq`` (``B×1×S×S``)."""
    return {
        "lq": lq,
        "teacher_hq": _unit(teacher(pixel_values=network_input(clean, teacher)).predicted_depth),
        "teacher_lq": _unit(teacher(pixel_values=network_input(lq, teacher)).predicted_depth),
        "student_lq": _unit(student(pixel_values=network_input(lq, student)).predicted_depth),
    }


@torch.no_grad()
def output_gap(
    model: DepthAnythingForDepthEstimation,
    teacher: DepthAnythingForDepthEstimation,
    inputs: torch.Tensor,
    clean: torch.Tensor,
) -> torch.Tensor:
    """Scale-and-shift-invariant L1 (0-d tensor) between ``model(inputs)`` and ``teacher(clean)``.

    With degraded ``inputs``, a degradation-aware student should score below the teacher.
    """
    prediction = model(pixel_values=network_input(inputs, model)).predicted_depth
    target = teacher(pixel_values=network_input(clean, teacher)).predicted_depth
    return scale_shift_invariant_loss(prediction.float(), target.float())


class DistillationModel(nn.Module):
    """The frozen ``teacher`` and the trainable ``student`` as one module (for a training loop
    that wraps its model, e.g. in DDP): ``forward(clean, generator)`` is
    :func:`distillation_loss`. The teacher stays in eval mode whatever :meth:`train` says."""

    def __init__(
        self,
        teacher: DepthAnythingForDepthEstimation,
        student: DepthAnythingForDepthEstimation,
        settings: DistillSettings,
    ) -> None:
        super().__init__()
        self.teacher = teacher.requires_grad_(False).eval()
        self.student = student
        self.settings = settings

    def train(self, mode: bool = True) -> DistillationModel:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, clean: torch.Tensor, generator: torch.Generator) -> DistillLosses:
        return distillation_loss(
            self.teacher, self.student, clean, generator=generator, settings=self.settings
        )
