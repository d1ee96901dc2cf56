"""Checkpoints written atomically: a complete ``step-<N>/`` folder appears, or nothing does.

A checkpoint is built in a hidden staging folder beside the others (every file written,
flushed and fsynced), then renamed to ``step-<N>`` in one step. A failure while writing (a full
disk, say) removes the staging folder and leaves every earlier checkpoint as it was. After a
successful write only the last ``keep`` checkpoints are kept.

Files of a checkpoint (written by :class:`magicbokeh.train.trainer.Trainer`):

- ``trainable.safetensors``: the tensors any phase of the task trains (model state-dict keys);
- ``optimizers.pt``: per phase, the optimizer and learning-rate scheduler state dicts (and the
  fp16 gradient scaler), loaded with ``weights_only=True``;
- ``rng.pt``: per process, the torch (CPU and CUDA), numpy and Python RNG states;
- ``state.json``: step, phase, data-stream positions, world size, time (written last).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicbokeh.errors import MagicBokehError
from magicbokeh.train.run_folder import RunFolder

__all__ = ["STATE_FILE", "read_state", "remove_stale_staging", "write_checkpoint"]

STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZERS_FILE = "optimizers.pt"
RNG_FILE = "rng.pt"
_STAGING_PREFIX = ".staging-step-"

#: ``writer(path)`` writes one file of the checkpoint at ``path``.
Writer = Callable[[Path], None]


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        handle = os.open(path, flags)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def remove_stale_staging(run: RunFolder) -> None:
    """Remove staging folders left by a process that died while writing a checkpoint."""
    if run.checkpoints_dir.is_dir():
        for path in run.checkpoints_dir.glob(_STAGING_PREFIX + "*"):
            shutil.rmtree(path, ignore_errors=True)


def write_checkpoint(
    run: RunFolder, step: int, writers: dict[str, Writer], state: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint ``step`` atomically and keep the last ``keep``; returns its folder.

    ``writers`` maps file names to functions writing them; ``state`` becomes ``state.json``.
    Raises MagicBokehError (naming the checkpoint that survives) when a file cannot be written.
    """
    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    staging = run.checkpoints_dir / f"{_STAGING_PREFIX}{step}"
    final = run.checkpoint_dir(step)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for name, write in writers.items():
            write(staging / name)
        (staging / STATE_FILE).write_text(
            json.dumps({"step": step, **state}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        for path in staging.iterdir():
            _fsync(path)
        _fsync(staging)
        if final.exists():  # the same step again (a stop right after a scheduled checkpoint)
            old = run.checkpoints_dir / f"{_STAGING_PREFIX}{step}.old"
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
        _fsync(run.checkpoints_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        previous = [s for s in run.checkpoint_steps() if s != step]
        kept = (
            f"the previous checkpoint step-{previous[-1]} is intact"
            if previous
            else "no earlier checkpoint exists"
        )
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "the disk is full"
            fix = "free some space and continue with --resume"
        else:
            reason = error.strerror or str(error) or type(error).__name__
            fix = "fix the folder and continue with --resume"
        raise MagicBokehError(
            f"cannot write checkpoint step-{step} in {run.checkpoints_dir} ({reason}); {kept}; "
            f"{fix}"
        ) from None
    for old_step in run.checkpoint_steps()[:-keep] if keep > 0 else []:
        with contextlib.suppress(OSError):
            shutil.rmtree(run.checkpoint_dir(old_step))
    return final


def read_state(folder: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder; MagicBokehError when missing or damaged."""
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise MagicBokehError(f"{path} is missing or damaged; the checkpoint cannot be used")
    return state
