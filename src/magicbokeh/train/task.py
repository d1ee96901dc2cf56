"""What a training task gives the run machinery (:class:`magicbokeh.train.trainer.Trainer`).

A task knows its model, its phases (which parameters train, at which learning rate, on which
data streams), its phase cycle and its loss. The trainer does everything else: accelerate,
optimizers (one per phase), schedulers, resumable data streams, mixed precision, gradient
accumulation and clipping, logs, samples, validation, checkpoints, Ctrl-C and NaN handling.

Life of a task object in a run: ``check()`` (all processes, before any work) →
``write_init(folder)`` (main process, new runs only: the starting model) → ``load_model(folder)``
(all processes) → ``phases(model)``, ``cycle()``, ``streams()``, ``validation_sets()`` → per
step ``enter_phase(model, phase)`` and ``step(...)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from magicbokeh.train.schedule import PhaseCycle

__all__ = ["ParamGroup", "Phase", "StepOutput", "StreamSpec", "TrainingTask", "ValidationSet"]


@dataclass
class ParamGroup:
    """Named parameters trained with one learning rate.

    ``own_clipping``: clip this group's gradient norm on its own (logged as
    ``grad_norm_<group>``) instead of together with the phase's other groups, as if the group
    had an optimizer of its own (AdamW's update of a parameter depends only on its own
    gradient, so one AdamW with this group then equals two AdamWs).
    """

    parameters: list[tuple[str, nn.Parameter]]
    lr: float
    own_clipping: bool = False


@dataclass
class Phase:
    """One phase: its parameter groups (one optimizer for the phase) and the streams it reads.

    ``groups`` maps a group name to its parameters and learning rate; ``streams`` names the
    data streams whose batches each step receives.
    """

    name: str
    groups: dict[str, ParamGroup]
    streams: tuple[str, ...]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [item for group in self.groups.values() for item in group.parameters]


@dataclass
class StreamSpec:
    """A training data stream: a map-style dataset and the items per process and step."""

    dataset: Dataset
    batch_size: int


@dataclass
class ValidationSet:
    """Held-out items scored with ``phase``'s loss on ``stream``-shaped batches."""

    dataset: Dataset
    phase: str
    stream: str


@dataclass
class StepOutput:
    """What :meth:`TrainingTask.step` returns.

    ``loss``: the scalar to minimise; ``terms``: named scalar parts to log (``loss`` itself is
    logged too); ``images``: when asked for, the columns of the sample sheet, each a
    ``B×3×H×W`` (or ``B×1×H×W``) tensor in [0, 1], in column order (e.g. input, output, target).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] | None = None


class TrainingTask(ABC):
    """A kind of training run (``magicbokeh train <name>``); see the module docstring."""

    #: the task's name: the ``train`` sub-command and the ``task`` of the run's config.json.
    name: ClassVar[str]
    #: settings that may differ on ``--resume`` besides :data:`~magicbokeh.train.trainer.
    #: CHANGEABLE_SETTINGS` (paths to weights that moved, say).
    changeable_settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def check(self) -> None:  # noqa: B027 - optional hook
        """Validate the inputs (data folders, model folders) before any heavy work."""

    @abstractmethod
    def write_init(self, folder: Path) -> None:
        """Write the model the run starts from into ``folder`` (new runs, main process)."""

    @abstractmethod
    def load_model(self, folder: Path) -> nn.Module:
        """The model to train, built from ``folder`` (written by :meth:`write_init`), on CPU."""

    @abstractmethod
    def phases(self, model: nn.Module) -> dict[str, Phase]:
        """The phases by name, their parameters taken from ``model``."""

    def cycle(self) -> PhaseCycle:
        """Which phase runs at each step (default: the only phase, always)."""
        names = list(self.phase_names())
        return PhaseCycle(((names[0], 1),))

    @abstractmethod
    def phase_names(self) -> tuple[str, ...]:
        """The names of the phases, without building anything."""

    @abstractmethod
    def streams(self) -> dict[str, StreamSpec]:
        """The training data streams by name."""

    def validation_sets(self) -> dict[str, ValidationSet]:
        """Held-out sets by name (default none)."""
        return {}

    def enter_phase(self, model: nn.Module, phase: Phase) -> None:
        """Make exactly ``phase``'s parameters trainable (``requires_grad``) and train mode."""
        for param in model.parameters():
            param.requires_grad_(False)
        for _, param in phase.named_parameters():
            param.requires_grad_(True)
        model.train()

    def prepare_model(self, model: nn.Module, gradient_checkpointing: bool) -> None:  # noqa: B027
        """Last changes before training (e.g. gradient checkpointing); default none."""

    @abstractmethod
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
        """Loss of one micro-batch.

        ``model`` is the (possibly DDP-wrapped) model: call it, do not unwrap it, so gradients
        are synchronised. ``batches`` maps each of the phase's streams to a collated CPU batch;
        move what is needed to ``device``. ``generator`` (on ``device``, seeded per step, process
        and micro-batch) drives every random choice, so runs are reproducible and resumable.
        """

    def trainable_keys(self, model: nn.Module) -> list[str]:
        """State-dict keys stored in checkpoints: every parameter some phase trains."""
        names = {id(p): n for n, p in model.named_parameters()}
        keys = {
            names[id(p)]
            for phase in self.phases(model).values()
            for _, p in phase.named_parameters()
        }
        return sorted(keys)
