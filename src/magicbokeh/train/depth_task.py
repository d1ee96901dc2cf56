"""``train depth``: a degradation-aware Depth Anything V2 by self-distillation.

The losses and the batch are :mod:`magicbokeh.depth.distill`'s; this module fits them to the
run machinery (:class:`~magicbokeh.train.trainer.Trainer`):

- ``RUN/init/teacher/``: the teacher as a transformers folder (any Depth Anything V2 the
  package loads, converted once), ``RUN/init/source.json``: where it came from, the distilled
  layers, the training images and the unreadable ones skipped. The student starts as an exact
  copy of the teacher; checkpoints hold its trainable tensors (``student.*``).
- One phase, ``distill``: parameter groups ``encoder`` (the student's DINOv2 backbone, ``--lr``)
  and ``head`` (its DPT neck and output head, ``--lr-head``), without what ``--freeze-encoder``
  / ``--freeze-head`` freeze; one stream, ``images``: random crops (``--resolution``) and flips
  of the clean photos. Each step degrades the batch on the training device with the step's
  generator (:func:`~magicbokeh.depth.distill.distillation_loss`).
- Logged terms: ``feature`` and ``output`` (the student's scale-and-shift-invariant gap to
  teacher(clean)); validation also logs ``teacher_output``, the teacher's own gap on the same
  degraded items, so ``output / teacher_output`` below 1 means the student sees through the
  degradation better than the teacher. Samples: LQ | teacher(HQ) | teacher(LQ) | student(LQ).
- ``magicbokeh export RUN --format transformers|original``: :func:`export_transformers`,
  :func:`export_original`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from magicbokeh.errors import MagicBokehError
from magicbokeh.train.run_folder import INIT_DIR, RunFolder
from magicbokeh.train.task import (
    ParamGroup,
    Phase,
    StepOutput,
    StreamSpec,
    TrainingTask,
    ValidationSet,
)

__all__ = ["DepthDistillTask", "export_original", "export_transformers", "student_from_run"]

logger = logging.getLogger(__name__)

TEACHER_DIR = "teacher"
SOURCE_FILE = "source.json"
PATCH = 14


def readable_images(files: list[Path]) -> tuple[list[Path], list[dict]]:
    """The files whose image header reads, and ``{"file", "reason"}`` for the others."""
    from PIL import Image, UnidentifiedImageError

    good, skipped = [], []
    for path in files:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (OSError, UnidentifiedImageError, ValueError) as error:
            skipped.append({"file": str(path), "reason": type(error).__name__})
        else:
            good.append(path)
    return good, skipped


class DepthDistillTask(TrainingTask):
    """``train depth``: see the module docstring."""

    name = "depth"
    #: the teacher is read from RUN/init once the run exists, so its source may move.
    changeable_settings = frozenset({"teacher"})

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self._teacher = None
        self._layers: tuple[int, ...] = ()
        self._datasets: dict[str, Any] = {}
        self.skipped: list[dict] = []

    # -------------------------------------------------------------------------- checks
    def _check_numbers(self) -> None:
        from magicbokeh.degrade.pipeline import minimum_hr_size

        s = self.settings
        resolution, scale = int(s["resolution"]), int(s["degradation_scale"])
        if scale < 1:
            raise MagicBokehError(f"--degradation-scale must be at least 1, not {scale}")
        smallest = max(PATCH, minimum_hr_size(scale))
        if resolution % PATCH or resolution < smallest:
            raise MagicBokehError(
                f"--resolution must be a multiple of {PATCH} of at least {smallest} px "
                f"(the degradation's minimum at scale {scale}), not {resolution}"
            )
        if float(s["lr"]) <= 0 or float(s["lr_head"]) <= 0:
            raise MagicBokehError("--lr and --lr-head must be positive")
        weights = float(s["feature_weight"]), float(s["output_weight"])
        if min(weights) < 0 or max(weights) == 0:
            raise MagicBokehError(
                "--feature-weight and --output-weight must not be negative, and one must be > 0"
            )
        if s["freeze_encoder"] and s["freeze_head"]:
            raise MagicBokehError(
                "--freeze-encoder and --freeze-head together leave nothing to train; drop one"
            )

    def _images(self, sources: list[str], flag: str):
        from magicbokeh.data.datasets import SRPairs

        s = self.settings
        dataset = SRPairs(
            sources,
            crop=int(s["resolution"]),
            flip=True,
            seed=int(s["seed"]),
            degrade=False,
        )
        files, skipped = readable_images(dataset.files)
        if skipped:
            logger.warning("%s: skipping %d unreadable images", flag, len(skipped))
        if not files:
            raise MagicBokehError(
                f"none of the {len(dataset.files)} images of {flag} can be read "
                f"(first: {skipped[0]['file']})"
            )
        dataset.files = files
        return dataset, skipped

    def check(self) -> None:
        from magicbokeh.depth.distill import load_teacher, parse_feature_layers

        s = self.settings
        if not s.get("teacher"):
            raise MagicBokehError(
                "give the teacher with --teacher MODEL (a Depth Anything V2 folder, Hub id or .pth)"
            )
        if not s.get("data"):
            raise MagicBokehError("give the training photos with --data DIR [DIR ...]")
        self._check_numbers()
        stored = Path(s["output"]) / INIT_DIR / TEACHER_DIR
        source = stored if (stored / "config.json").is_file() else s["teacher"]
        self._teacher = load_teacher(source)
        self._layers = parse_feature_layers(str(s["feature_layers"]), self._teacher)
        self._datasets["images"], self.skipped = self._images(s["data"], "--data")
        if s.get("val_data"):
            self._datasets["val_images"], _ = self._images(s["val_data"], "--val-data")

    # --------------------------------------------------------------------------- model
    def write_init(self, folder: Path) -> None:
        assert self._teacher is not None, "check() loads the teacher"
        self._teacher.save_pretrained(folder / TEACHER_DIR, safe_serialization=True)
        source = {
            "teacher": self.settings["teacher"],
            "feature_layers": list(self._layers),
            "images": len(self._datasets["images"].files),
            "skipped": self.skipped,
        }
        (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")

    def load_model(self, folder: Path) -> nn.Module:
        from magicbokeh.depth.distill import (
            DistillationModel,
            DistillSettings,
            load_teacher,
            make_student,
            parse_feature_layers,
        )

        s = self.settings
        teacher = load_teacher(folder / TEACHER_DIR)
        student = make_student(
            teacher, freeze_encoder=bool(s["freeze_encoder"]), freeze_head=bool(s["freeze_head"])
        )
        settings = DistillSettings(
            feature_layers=parse_feature_layers(str(s["feature_layers"]), teacher),
            feature_weight=float(s["feature_weight"]),
            output_weight=float(s["output_weight"]),
            degrade_scale=int(s["degradation_scale"]),
        )
        return DistillationModel(teacher, student, settings)

    def prepare_model(self, model: nn.Module, gradient_checkpointing: bool) -> None:
        if gradient_checkpointing:
            model.student.gradient_checkpointing_enable()

    def phase_names(self) -> tuple[str, ...]:
        return ("distill",)

    def phases(self, model: nn.Module) -> dict[str, Phase]:
        s = self.settings
        student = model.student
        groups = {}
        if not s["freeze_encoder"]:
            groups["encoder"] = ParamGroup(
                [(f"student.backbone.{n}", p) for n, p in student.backbone.named_parameters()],
                float(s["lr"]),
            )
        if not s["freeze_head"]:
            head = [(f"student.neck.{n}", p) for n, p in student.neck.named_parameters()]
            head += [(f"student.head.{n}", p) for n, p in student.head.named_parameters()]
            groups["head"] = ParamGroup(head, float(s["lr_head"]))
        return {"distill": Phase("distill", groups, ("images",))}

    def streams(self) -> dict[str, StreamSpec]:
        return {"images": StreamSpec(self._datasets["images"], int(self.settings["batch_size"]))}

    def validation_sets(self) -> dict[str, ValidationSet]:
        if "val_images" not in self._datasets:
            return {}
        return {"images": ValidationSet(self._datasets["val_images"], "distill", "images")}

    # --------------------------------------------------------------------------- steps
    def step(
        self,
        model: nn.Module,
        phase: str,
        batches: dict[str, dict],
        *,
        device: torch.device,
        generator: torch.Generator,
        images: bool,
    ) -> StepOutput:
        from magicbokeh.depth.distill import output_gap, sample_panels

        clean = batches["images"]["hq"].to(device)
        losses = model(clean, generator)
        inner = model.module if hasattr(model, "module") else model
        result = StepOutput(losses.total, {"feature": losses.feature, "output": losses.output})
        if not inner.training:  # validation: the teacher's own gap on the same items
            teacher = inner.teacher
            result.terms["teacher_output"] = output_gap(teacher, teacher, losses.lq, clean)
        if images:
            result.images = sample_panels(inner.teacher, inner.student, clean, losses.lq)
        return result


# ------------------------------------------------------------------------------- export
def student_from_run(run: RunFolder, step: int | None = None):
    """``(student, step)``: the student of checkpoint ``step`` (default the last) of a depth run."""
    from magicbokeh.depth.distill import load_teacher, make_student
    from magicbokeh.train.trainer import load_trainable

    config = run.read_run()
    if config.get("task") != DepthDistillTask.name:
        raise MagicBokehError(
            f"{run.root} is a `train {config.get('task')}` run; it holds no depth student"
        )
    step, folder = run.checkpoint(step)
    student = make_student(load_teacher(run.init_dir / TEACHER_DIR))
    holder = nn.Module()
    holder.student = student
    load_trainable(holder, folder)
    return student.eval(), step


def export_transformers(
    run: RunFolder, step: int | None, output: Path, overwrite: bool
) -> tuple[Path, int]:
    """The student of checkpoint ``step`` as a transformers folder at ``output``."""
    from magicbokeh.depth.export import save_transformers

    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise MagicBokehError(f"{output} already exists: pass --overwrite to replace it")
    student, step = student_from_run(run, step)
    return save_transformers(student, output, overwrite=overwrite), step


def export_original(
    run: RunFolder, step: int | None, output: Path, overwrite: bool
) -> tuple[Path, int]:
    """The student of checkpoint ``step`` as an original-layout ``DAdepth.pth`` at ``output``."""
    from magicbokeh.depth.export import save_original
    from magicbokeh.io.atomic import ensure_writable

    output = ensure_writable(output, overwrite=overwrite)
    if output.suffix.lower() not in (".pth", ".pt"):
        raise MagicBokehError(f"-o {output} needs a .pth suffix for the original format")
    student, step = student_from_run(run, step)
    return save_original(student, output, overwrite=overwrite), step
