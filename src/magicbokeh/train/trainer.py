"""The one run machinery behind every ``magicbokeh train`` task, built on accelerate.

:class:`Trainer` runs a :class:`~magicbokeh.train.task.TrainingTask` in a run folder
(:mod:`magicbokeh.train.run_folder`): the same code on a CPU, one GPU, or ``accelerate launch``
over many GPUs and nodes (DDP; each process takes its own share of every data stream, only
the main process writes).

Per step N (1-based) the phase of the task's cycle runs: its parameters alone are trainable,
its own AdamW (and learning-rate schedule: linear warm-up, then constant) steps, after
``gradient_accumulation_steps`` micro-batches whose gradients are summed, with the gradient
norm clipped. Randomness inside a step comes from a generator seeded with (seed, step,
micro-batch, process), and data streams resume at their exact position, so N steps in one go
and N/2 + ``--resume`` N/2 give the same weights.

Stops: Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and returns with
``interrupted=True`` (a second Ctrl-C aborts at once). A non-finite loss or gradient norm
stops before the update with MagicBokehError naming the step; the last checkpoint stays the
last good one. A failed checkpoint write keeps the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import require
from magicbokeh.io.sidecar import package_versions
from magicbokeh.train.checkpoints import (
    OPTIMIZERS_FILE,
    RNG_FILE,
    TRAINABLE_FILE,
    read_state,
    remove_stale_staging,
    write_checkpoint,
)
from magicbokeh.train.run_folder import RunFolder, now
from magicbokeh.train.schedule import PhaseCycle
from magicbokeh.train.streams import BatchStream
from magicbokeh.train.task import Phase, StepOutput, TrainingTask

__all__ = ["CHANGEABLE_SETTINGS", "TrainResult", "Trainer", "load_trainable"]

#: Settings that may differ when a run is resumed (they change no result).
CHANGEABLE_SETTINGS = frozenset(
    {
        "output",
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "sample_every",
        "val_every",
        "num_workers",
        "device",
        "quiet",
    }
)
_VERSIONED = ("accelerate", "peft", "safetensors", "tensorboard")
#: Record entries that are not loss terms (not averaged over processes).
_NOT_TERMS = (
    "step",
    "phase",
    "split",
    "set",
    "lr",
    "grad_norm",
    "step_s",
    "samples_per_s",
    "steps_in_record",
)


@dataclass
class TrainResult:
    """How a run ended: the last step done, its checkpoint, and whether Ctrl-C stopped it."""

    run: Path
    step: int
    checkpoint: Path | None
    interrupted: bool


class WarmupConstant:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then 1."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, taken: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (taken + 1) / self.warmup)


class StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks to stop after the step, the second aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstopping after this step and writing a checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run seed and (step, micro-batch, process, ...)."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _rng_state() -> dict[str, Any]:
    key, positions, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [key, [int(v) for v in positions], int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    key, positions, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((key, np.asarray(positions, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trainable(
    model: torch.nn.Module,
    checkpoint: Path,
    keys: list[str] | None = None,
    *,
    skip_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Load a checkpoint's ``trainable.safetensors`` into ``model``; returns the keys loaded.

    With ``keys`` the file must hold exactly those; without, any of the model's tensors.
    Tensors whose key starts with one of ``skip_prefixes`` are left out first (parts of the
    training model that ``model`` does not have, e.g. a training-only regulariser).
    """
    path = checkpoint / TRAINABLE_FILE
    if not path.is_file():
        raise MagicBokehError(f"{path} is missing; the checkpoint is damaged")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise MagicBokehError(f"{path} is damaged ({exc}); use another checkpoint") from None
    if skip_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    own = model.state_dict()
    expected = set(keys) if keys is not None else set(state) & set(own)
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing or extra:
        raise MagicBokehError(
            f"{path} does not fit this model ({len(missing)} tensors missing, {len(extra)} "
            f"unknown, e.g. {(missing + extra)[0]}); it belongs to another run"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise MagicBokehError(f"{path}: tensor {key} has shape {tuple(value.shape)}")
    model.load_state_dict(state, strict=False)
    return sorted(state)


@dataclass
class _Session:
    """Everything one training session works with (built by :meth:`Trainer._run`)."""

    accelerator: Any
    wrapped: torch.nn.Module
    model: torch.nn.Module
    phases: dict[str, Phase]
    cycle: PhaseCycle
    optimizers: dict[str, Any]
    schedulers: dict[str, Any]
    streams: dict[str, BatchStream]
    trainable: list[str]
    start_step: int
    last_checkpoint: Path | None
    log: Any = None


class Trainer:
    """Runs ``task`` with ``settings`` (see :mod:`magicbokeh.train.options`) in its run folder.

    ``on_step_end(step)`` is called on every process after each update, before the step's
    logs and checkpoint (a hook for tools and tests).
    """

    def __init__(
        self,
        task: TrainingTask,
        settings: dict[str, Any],
        *,
        resume: bool = False,
        on_step_end: Callable[[int], None] | None = None,
        setting_defaults: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.settings = settings
        self.resume = resume
        self.setting_defaults = setting_defaults
        self.on_step_end = on_step_end
        self.run_folder = RunFolder(settings["output"])

    # ----------------------------------------------------------------------------- setup
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        device = self.settings["device"]
        if device == "cuda" and not torch.cuda.is_available():
            raise MagicBokehError("--device cuda: no CUDA device is available; use --device cpu")
        try:
            return Accelerator(
                cpu=device == "cpu",
                mixed_precision=self.settings["mixed_precision"],
                # Phases train different parameters: the others get no gradient in a step.
                kwargs_handlers=[
                    DistributedDataParallelKwargs(
                        find_unused_parameters=len(self.task.phase_names()) > 1
                    )
                ],
            )
        except ValueError as exc:
            raise MagicBokehError(
                f"--mixed-precision {self.settings['mixed_precision']} is not available here "
                f"({exc}); use bf16 or no"
            ) from None

    def _check_settings(self) -> None:
        s = self.settings
        positive = ("steps", "batch_size", "gradient_accumulation_steps", "keep_checkpoints")
        for name in positive:
            if int(s[name]) < 1:
                raise MagicBokehError(f"--{name.replace('_', '-')} must be at least 1")
        counts = ("checkpoint_every", "log_every", "sample_every", "val_every", "val_count")
        for name in (*counts, "num_workers", "lr_warmup_steps"):
            if int(s[name]) < 0:
                raise MagicBokehError(f"--{name.replace('_', '-')} must not be negative")
        if s["max_grad_norm"] < 0 or s["weight_decay"] < 0 or s["adam_epsilon"] <= 0:
            raise MagicBokehError("--max-grad-norm, --weight-decay must be ≥ 0, --adam-epsilon > 0")
        if not (0 <= s["adam_beta1"] < 1 and 0 <= s["adam_beta2"] < 1):
            raise MagicBokehError("--adam-beta1 and --adam-beta2 must lie in [0, 1)")
        if s.get("output") is None:
            raise MagicBokehError("give the run folder with -o RUN")

    def _changeable(self) -> frozenset[str]:
        return CHANGEABLE_SETTINGS | self.task.changeable_settings

    def _prepare_folder(self, accelerator) -> dict[str, Any] | None:
        """Checks (every process) and first writes (main); returns the stored config."""
        run = self.run_folder
        stored = None
        if self.resume:
            stored = run.check_resume(
                self.task.name, self.settings, self._changeable(), self.setting_defaults
            )
        else:
            run.check_new()
        accelerator.wait_for_everyone()  # every process has checked before the main one writes
        if accelerator.is_main_process:
            if not self.resume:
                run.root.mkdir(parents=True, exist_ok=True)
                staging = run.root / ".init.partial"
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    self.task.write_init(staging)
                    staging.rename(run.init_dir)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            remove_stale_staging(run)
            config = dict(stored) if stored else {}
            config.pop("format", None)
            config.pop("version", None)
            versions = package_versions()
            from importlib import metadata

            for name in _VERSIONED:
                with contextlib.suppress(metadata.PackageNotFoundError):
                    versions[name] = metadata.version(name)
            config.update(
                task=self.task.name,
                settings=self.settings,
                seeds={"seed": self.settings["seed"]},
                versions=versions,
                processes=accelerator.num_processes,
            )
            config.setdefault("created", now())
            if self.resume:
                config.setdefault("sessions", []).append(
                    {"resumed": now(), "processes": accelerator.num_processes}
                )
            run.write_config(config)
        accelerator.wait_for_everyone()
        return stored

    # ------------------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        """Train to ``steps`` (or until stopped); returns how the run ended."""
        require("train", "training")
        self._check_settings()
        self.task.check()
        accelerator = self._accelerator()
        try:
            if accelerator.is_main_process:
                with self.run_folder.lock():
                    return self._run(accelerator)
            return self._run(accelerator)
        finally:
            accelerator.free_memory()
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state()
            GradientState._reset_state()

    def _run(self, accelerator) -> TrainResult:
        s = self.settings
        task, run = self.task, self.run_folder
        self._prepare_folder(accelerator)
        model = task.load_model(run.init_dir)
        phases = task.phases(model)
        trainable = task.trainable_keys(model)
        trainable_set = set(trainable)
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable_set)

        start_step, state, checkpoint = 0, {}, None
        if self.resume and run.checkpoint_steps():
            start_step, checkpoint = run.checkpoint()
            state = read_state(checkpoint)
            load_trainable(model, checkpoint, trainable)
        task.prepare_model(model, bool(s["gradient_checkpointing"]))

        optimizers = {name: self._optimizer(phase) for name, phase in phases.items()}
        schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(opt, WarmupConstant(int(s["lr_warmup_steps"])))
            for name, opt in optimizers.items()
        }
        prepared = accelerator.prepare(model, *optimizers.values())
        optimizers = dict(zip(optimizers, prepared[1:], strict=True))
        if checkpoint is not None:
            self._load_training_state(accelerator, checkpoint, optimizers, schedulers)
        streams = {
            name: BatchStream(
                spec.dataset,
                batch_size=spec.batch_size,
                seed=int(s["seed"]),
                key=name,
                rank=accelerator.process_index,
                world=accelerator.num_processes,
                position=int(state.get("streams", {}).get(name, 0)),
                num_workers=int(s["num_workers"]),
            )
            for name, spec in task.streams().items()
        }
        session = _Session(
            accelerator=accelerator,
            wrapped=prepared[0],
            model=model,
            phases=phases,
            cycle=task.cycle(),
            optimizers=optimizers,
            schedulers=schedulers,
            streams=streams,
            trainable=trainable,
            start_step=start_step,
            last_checkpoint=checkpoint,
        )
        try:
            if accelerator.is_main_process:
                session.log = self._open_log(start_step)
            return self._loop(session)
        finally:
            for stream in streams.values():
                stream.close()
            if session.log is not None:
                session.log.close()

    def _open_log(self, start_step: int):
        from magicbokeh.train.logs import RunLog

        run = self.run_folder
        return RunLog(run.metrics_path, run.tensorboard_dir, run.samples_dir, start_step)

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        s = self.settings
        groups = [
            {"params": [p for _, p in group.parameters], "lr": group.lr, "name": name}
            for name, group in phase.groups.items()
        ]
        return torch.optim.AdamW(
            groups,
            betas=(s["adam_beta1"], s["adam_beta2"]),
            eps=s["adam_epsilon"],
            weight_decay=s["weight_decay"],
        )

    # ------------------------------------------------------------------------------ loop
    def _every(self, name: str, step: int) -> bool:
        """Whether the ``name`` frequency setting (0 = never) falls on ``step``."""
        every = int(self.settings[name])
        return every > 0 and step % every == 0

    def _loop(self, session: _Session) -> TrainResult:
        s, accelerator = self.settings, session.accelerator
        total = int(s["steps"])
        main = accelerator.is_main_process
        items_per_step = {
            name: spec.batch_size
            * accelerator.num_processes
            * int(s["gradient_accumulation_steps"])
            for name, spec in self.task.streams().items()
        }
        current: str | None = None
        pending: dict[str, Any] = {}
        if session.start_step == 0 and int(s["val_every"]) > 0:
            self._validate(session, 0)
        progress = None
        if main and not s["quiet"]:
            from tqdm import tqdm

            progress = tqdm(
                total=total, initial=session.start_step, unit="step", dynamic_ncols=True
            )
        stop = StopRequest()
        step, stopped = session.start_step, False
        with stop.installed():
            for step in range(session.start_step + 1, total + 1):
                name = session.cycle.phase_at(step)
                phase = session.phases[name]
                if name != current:
                    self.task.enter_phase(session.model, phase)
                    current = name
                started = time.perf_counter()
                want_images = main and self._every("sample_every", step)
                output, losses = self._micro_batches(session, name, step, want_images)
                grad_norms = self._update(session, name, step)
                items = sum(items_per_step[n] for n in phase.streams)
                elapsed = time.perf_counter() - started
                optimizer = session.optimizers[name]
                self._accumulate(pending, name, losses, grad_norms, elapsed, items, optimizer)
                if self.on_step_end is not None:
                    self.on_step_end(step)
                stop_now = self._agree(accelerator, stop.requested)
                if (
                    self._every("log_every", step)
                    or step == total
                    or session.cycle.phase_at(step + 1) != name
                    or stop_now
                ):
                    record = self._mean_over_processes(accelerator, self._flush(pending, step))
                    if session.log is not None:
                        session.log.record(record)
                if want_images and output.images is not None and session.log is not None:
                    session.log.samples(step, output.images, name)
                if self._every("val_every", step):
                    self._validate(session, step)
                    self.task.enter_phase(session.model, phase)
                if self._every("checkpoint_every", step) or step == total or stop_now:
                    session.last_checkpoint = self._save(session, step, name)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(phase=name, loss=f"{float(losses['loss']):.4f}")
                if stop_now:
                    stopped = step < total
                    break
        if progress is not None:
            progress.close()
        if stopped and main:
            print(
                f"stopped at step {step}: wrote {session.last_checkpoint}; continue with the "
                "same command and --resume",
                file=sys.stderr,
            )
        return TrainResult(
            run=self.run_folder.root,
            step=step,
            checkpoint=session.last_checkpoint,
            interrupted=stopped,
        )

    def _micro_batches(
        self, session: _Session, name: str, step: int, want_images: bool
    ) -> tuple[StepOutput, dict[str, torch.Tensor]]:
        """Forward and backward of the step's micro-batches; returns the first output and the
        mean loss terms."""
        accelerator = session.accelerator
        accumulation = int(self.settings["gradient_accumulation_steps"])
        phase = session.phases[name]
        sums: dict[str, torch.Tensor] = {}
        output = None
        for micro in range(accumulation):
            batches = {stream: session.streams[stream].next() for stream in phase.streams}
            generator = torch.Generator(device=accelerator.device).manual_seed(
                step_seed(int(self.settings["seed"]), step, micro, accelerator.process_index)
            )
            sync = micro == accumulation - 1
            context = contextlib.nullcontext() if sync else accelerator.no_sync(session.wrapped)
            with context:
                with accelerator.autocast():
                    result = self.task.step(
                        session.wrapped,
                        name,
                        batches,
                        device=accelerator.device,
                        generator=generator,
                        images=want_images and micro == 0,
                    )
                finite = bool(torch.isfinite(result.loss.detach()).all())
                if self._agree(accelerator, not finite):
                    value = float(result.loss.detach())
                    self._non_finite(step, name, "loss", value, session.last_checkpoint)
                accelerator.backward(result.loss / accumulation)
            if micro == 0:
                output = result
            terms = {"loss": result.loss, **result.terms}
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value.detach().float() / accumulation
        assert output is not None
        return output, sums

    def _update(self, session: _Session, name: str, step: int) -> dict[str, float]:
        """Clip, step the phase's optimizer and schedule, clear gradients; the gradient norms.

        Returns ``{"grad_norm": norm}`` of the groups clipped together, plus
        ``grad_norm_<group>`` of each group clipped on its own (``ParamGroup.own_clipping``).
        """
        accelerator = session.accelerator
        optimizer = session.optimizers[name]
        norms: dict[str, float] = {}
        limit = float(self.settings["max_grad_norm"])
        if limit > 0:
            fp16 = self.settings["mixed_precision"] == "fp16"
            for index, (label, params) in enumerate(self._clipping_sets(session.phases[name])):
                if index == 0:  # unscales the gradients (fp16) and clips
                    norm = float(accelerator.clip_grad_norm_(params, limit))
                else:
                    norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
                norms[label] = norm
                if not np.isfinite(norm) and not fp16:
                    self._non_finite(step, name, "gradient norm", norm, session.last_checkpoint)
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            session.schedulers[name].step()
        optimizer.zero_grad(set_to_none=True)
        return norms

    @staticmethod
    def _clipping_sets(phase: Phase) -> list[tuple[str, list[torch.nn.Parameter]]]:
        """``(log name, parameters)`` clipped together: the shared groups, then each own one."""
        shared = [p for g in phase.groups.values() if not g.own_clipping for _, p in g.parameters]
        sets = [("grad_norm", shared)] if shared else []
        for group_name, group in phase.groups.items():
            if group.own_clipping:
                sets.append((f"grad_norm_{group_name}", [p for _, p in group.parameters]))
        return sets

    def _non_finite(self, step, name, what, value, last_checkpoint) -> None:
        kept = (
            f"the last good checkpoint is {last_checkpoint}"
            if last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        raise MagicBokehError(
            f"the {what} is {value} at step {step} (phase {name}); training stopped before "
            f"that update and {kept}; lower the learning rate, use --mixed-precision no or bf16, "
            "or check the data, then continue with --resume"
        )

    @staticmethod
    def _agree(accelerator, flag: bool) -> bool:
        """True when ``flag`` is set on any process."""
        if accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(value, reduction="sum").item() > 0)

    @staticmethod
    def _mean_over_processes(accelerator, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with its loss terms averaged over the processes (each saw other items)."""
        if accelerator.num_processes == 1:
            return record
        keys = [
            k for k in record if k not in _NOT_TERMS and not k.startswith(("lr_", "grad_norm_"))
        ]
        values = torch.tensor([float(record[k]) for k in keys], device=accelerator.device)
        values = accelerator.reduce(values, reduction="mean")
        return {**record, **dict(zip(keys, values.tolist(), strict=True))}

    @staticmethod
    def _accumulate(pending, name, losses, grad_norms, elapsed, items, optimizer) -> None:
        if pending.get("phase") != name:
            pending.clear()
            pending.update(phase=name, count=0, sums={}, seconds=0.0, items=0, norms={})
        pending["count"] += 1
        pending["seconds"] += elapsed
        pending["items"] += items
        for key, value in losses.items():
            pending["sums"][key] = pending["sums"].get(key, 0.0) + float(value)
        for key, value in grad_norms.items():
            pending["norms"].setdefault(key, []).append(value)
        pending["lr"] = {
            g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)
        }

    @staticmethod
    def _flush(pending, step) -> dict[str, Any]:
        count = max(1, pending["count"])
        record: dict[str, Any] = {"step": step, "phase": pending["phase"], "split": "train"}
        record.update({k: v / count for k, v in pending["sums"].items()})
        lrs = pending["lr"]
        if len(lrs) == 1:
            record["lr"] = next(iter(lrs.values()))
        else:
            record.update({f"lr_{k}": v for k, v in lrs.items()})
        for key, values in pending["norms"].items():
            record[key] = float(np.mean(values))
        record["step_s"] = pending["seconds"] / count
        record["samples_per_s"] = pending["items"] / max(pending["seconds"], 1e-9)
        record["steps_in_record"] = pending["count"]
        pending.clear()
        return record

    # ------------------------------------------------------------------------- validation
    def _validate(self, session: _Session, step: int) -> None:
        """Mean loss terms of the first ``val_count`` items of each validation set."""
        sets = self.task.validation_sets()
        if not sets:
            return
        accelerator, model = session.accelerator, session.model
        count = int(self.settings["val_count"])
        batch_size = int(self.settings["batch_size"])
        rank, world = accelerator.process_index, accelerator.num_processes
        model.eval()
        for set_name, val in sets.items():
            if hasattr(val.dataset, "set_epoch"):
                val.dataset.set_epoch(0)
            indices = list(range(min(count, len(val.dataset))))[rank::world]
            sums: dict[str, torch.Tensor] = {}
            seen = torch.zeros((), device=accelerator.device)
            with torch.no_grad():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    batch = torch.utils.data.default_collate([val.dataset[i] for i in chunk])
                    generator = torch.Generator(device=accelerator.device).manual_seed(
                        step_seed(int(self.settings["seed"]), 2**31 - 1, chunk[0])
                    )
                    with accelerator.autocast():
                        result = self.task.step(
                            model,
                            val.phase,
                            {val.stream: batch},
                            device=accelerator.device,
                            generator=generator,
                            images=False,
                        )
                    for key, value in {"loss": result.loss, **result.terms}.items():
                        sums[key] = sums.get(key, 0) + value.detach().float() * len(chunk)
                    seen += len(chunk)
            keys = sorted(sums)
            if world > 1:
                stacked = torch.stack([sums[k] for k in keys] + [seen])
                stacked = accelerator.reduce(stacked, reduction="sum")
                sums = dict(zip(keys, stacked[:-1], strict=True))
                seen = stacked[-1]
            if session.log is not None and float(seen) > 0:
                record = {"step": step, "phase": val.phase, "split": "val", "set": set_name}
                record.update({k: float(sums[k] / seen) for k in keys})
                session.log.record(record)

    # ------------------------------------------------------------------------ checkpoints
    def _save(self, session: _Session, step: int, name: str) -> Path:
        """Write checkpoint ``step`` (main process) after gathering every process's RNG state."""
        from accelerate.utils import gather_object

        accelerator = session.accelerator
        rng = gather_object([_rng_state()])
        if not accelerator.is_main_process:
            accelerator.wait_for_everyone()
            return self.run_folder.checkpoint_dir(step)
        own = session.model.state_dict()
        tensors = {
            key: own[key].detach().to("cpu", torch.float32).contiguous()
            if own[key].is_floating_point()
            else own[key].detach().cpu().contiguous()
            for key in session.trainable
        }
        training = {
            "optimizers": {n: opt.state_dict() for n, opt in session.optimizers.items()},
            "schedulers": {n: sch.state_dict() for n, sch in session.schedulers.items()},
        }
        if accelerator.scaler is not None:
            training["scaler"] = accelerator.scaler.state_dict()
        writers = {
            TRAINABLE_FILE: lambda path: save_file(tensors, str(path), metadata={"format": "pt"}),
            OPTIMIZERS_FILE: lambda path: torch.save(training, path),
            RNG_FILE: lambda path: torch.save({"processes": rng}, path),
        }
        state = {
            "phase": name,
            "streams": {n: stream.position for n, stream in session.streams.items()},
            "processes": accelerator.num_processes,
            "time": now(),
        }
        try:
            folder = write_checkpoint(
                self.run_folder, step, writers, state, int(self.settings["keep_checkpoints"])
            )
        finally:
            accelerator.wait_for_everyone()
        return folder

    def _load_training_state(self, accelerator, checkpoint, optimizers, schedulers) -> None:
        path = checkpoint / OPTIMIZERS_FILE
        try:
            training = torch.load(path, map_location="cpu", weights_only=True)
            rng = torch.load(checkpoint / RNG_FILE, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise MagicBokehError(f"{checkpoint} is damaged ({exc}); resume from another") from None
        if set(training.get("optimizers", {})) != set(optimizers):
            raise MagicBokehError(f"{path} holds other phases than this run has")
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(training["optimizers"][name])
            schedulers[name].load_state_dict(training["schedulers"][name])
        if accelerator.scaler is not None and "scaler" in training:
            accelerator.scaler.load_state_dict(training["scaler"])
        states = rng.get("processes", [])
        if len(states) == accelerator.num_processes:
            _set_rng_state(states[accelerator.process_index])
