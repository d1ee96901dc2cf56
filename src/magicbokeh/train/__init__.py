"""Training: one run machinery (accelerate, run folders, checkpoints, resume, logs) and tasks.

- :class:`~magicbokeh.train.trainer.Trainer` runs any
  :class:`~magicbokeh.train.task.TrainingTask` in a run folder
  (:mod:`magicbokeh.train.run_folder`);
- :class:`~magicbokeh.train.model_tasks.SRTask` (``train sr``) and
  :class:`~magicbokeh.train.model_tasks.BokehTask` (``train bokeh``) train MagicBokeh.

Names are imported lazily, so the ``train`` command's parser loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "magicbokeh.train.trainer",
    "TrainResult": "magicbokeh.train.trainer",
    "TrainingTask": "magicbokeh.train.task",
    "Phase": "magicbokeh.train.task",
    "ParamGroup": "magicbokeh.train.task",
    "StepOutput": "magicbokeh.train.task",
    "StreamSpec": "magicbokeh.train.task",
    "ValidationSet": "magicbokeh.train.task",
    "RunFolder": "magicbokeh.train.run_folder",
    "PhaseCycle": "magicbokeh.train.schedule",
    "SRTask": "magicbokeh.train.model_tasks",
    "BokehTask": "magicbokeh.train.model_tasks",
    "network_from_run": "magicbokeh.train.model_runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'magicbokeh.train' has no attribute {name!r}")
