"""The run folder: what a training run writes, and the checks before it starts or resumes.

Layout of ``RUN`` (tests and scripts rely on it)::

    RUN/config.json                every resolved setting, the task, versions, seeds
    RUN/metrics.jsonl              one JSON object per logged step: step, phase, split, loss,
                                   each loss term, lr, throughput
    RUN/init/                      the model the run started from (frozen parts included)
    RUN/checkpoints/step-<N>/      the state after N steps: trainable tensors, optimizers,
                                   schedulers, RNG states, data and phase positions
    RUN/samples/step-<N>.png       input | output | target of a few training items
    RUN/tensorboard/               TensorBoard event files

A folder is a run when its ``config.json`` has ``"format": "magicbokeh-run"``. A new run
needs a missing or empty folder; ``--resume`` needs a run of the same task whose settings
match, except the ones a task lists as changeable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import LOCK_NAME, atomic_write, folder_lock

__all__ = ["RUN_FORMAT", "RunFolder", "settings_differences"]

RUN_FORMAT = "magicbokeh-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
INIT_DIR = "init"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def settings_differences(
    stored: dict[str, Any],
    given: dict[str, Any],
    changeable: Collection[str],
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """``name (run: A, now: B)`` for every setting outside ``changeable`` that differs.

    A setting the run does not store (one added to magicbokeh after the run was made) counts
    as equal when it is given at its value in ``defaults``: the run was made without it.
    """
    defaults = defaults or {}
    out = []
    for key in sorted(set(stored) | set(given)):
        if key in changeable:
            continue
        if key not in stored and key in defaults and given.get(key) == defaults[key]:
            continue
        old, new = stored.get(key, "<unset>"), given.get(key, "<unset>")
        if old != new:
            out.append(f"{key} (run: {old!r}, now: {new!r})")
    return out


class RunFolder:
    """Paths and checks of one run folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()

    # ------------------------------------------------------------------------------ layout
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def init_dir(self) -> Path:
        return self.root / INIT_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def samples_dir(self) -> Path:
        return self.root / SAMPLES_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / TENSORBOARD_DIR

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step}"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        if not self.checkpoints_dir.is_dir():
            return []
        steps = []
        for path in self.checkpoints_dir.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and path.is_dir():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def checkpoint(self, step: int | None = None) -> tuple[int, Path]:
        """``(step, folder)`` of checkpoint ``step`` (default: the last one)."""
        steps = self.checkpoint_steps()
        if not steps:
            raise MagicBokehError(f"{self.root} holds no checkpoint yet; train it first")
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise MagicBokehError(
                f"{self.root} has no checkpoint of step {step}; it has steps "
                f"{', '.join(map(str, steps))}"
            )
        return step, self.checkpoint_dir(step)

    # ------------------------------------------------------------------------------ config
    def is_run(self) -> bool:
        """True when the folder holds a run's ``config.json``."""
        try:
            return self.read_config() is not None
        except MagicBokehError:
            return False

    def read_config(self) -> dict[str, Any] | None:
        """The run's config, None when there is no ``config.json``.

        Raises MagicBokehError when the file is not a run config.
        """
        if not self.config_path.is_file():
            return None
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            config = None
        if (
            not isinstance(config, dict)
            or config.get("format") != RUN_FORMAT
            or not isinstance(config.get("settings"), dict)
        ):
            raise MagicBokehError(
                f"{self.config_path} is not the config of a magicbokeh training run; give a "
                "folder made by `magicbokeh train`"
            )
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        """Write ``config.json`` atomically (``format`` and ``version`` added)."""
        record = {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, **config}
        text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
        with atomic_write(self.config_path, overwrite=True) as temporary:
            temporary.write_text(text, encoding="utf-8")

    def read_run(self, task: str | None = None) -> dict[str, Any]:
        """The config of an existing run (optionally checking its task), for export etc."""
        if not self.root.is_dir():
            raise MagicBokehError(f"run folder {self.root} does not exist")
        config = self.read_config()
        if config is None:
            raise MagicBokehError(
                f"{self.root} is not a training run (no {CONFIG_FILE}); give a folder made by "
                "`magicbokeh train`"
            )
        if task is not None and config.get("task") != task:
            raise MagicBokehError(
                f"{self.root} holds a `train {config.get('task')}` run, not `train {task}`"
            )
        return config

    # --------------------------------------------------------------------- start or resume
    def _contents(self) -> list[Path]:
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise MagicBokehError(f"{self.root} is a file; give a folder for the run")
        return [p for p in self.root.iterdir() if p.name != LOCK_NAME]

    def check_new(self) -> None:
        """Refuse to start a new run in a folder that is not empty."""
        if not self._contents():
            return
        config = self.read_config() if self.config_path.is_file() else None
        if config is not None:
            steps = self.checkpoint_steps()
            last = f"last checkpoint step {steps[-1]}" if steps else "no checkpoint yet"
            raise MagicBokehError(
                f"{self.root} already holds a `train {config.get('task')}` run ({last}); pass "
                "--resume to continue it, or choose another -o folder"
            )
        raise MagicBokehError(
            f"{self.root} is not empty and holds no training run; choose a new or empty -o folder"
        )

    def resumable_config(self, task: str) -> dict[str, Any]:
        """The stored config of a run of ``task`` to resume; refuse empty or foreign folders."""
        if not self._contents():
            raise MagicBokehError(
                f"{self.root} holds no run to resume; start the run without --resume"
            )
        config = self.read_config()
        if config is None:
            raise MagicBokehError(
                f"{self.root} is not a training run (no {CONFIG_FILE}); --resume needs a folder "
                "made by `magicbokeh train`"
            )
        if config.get("task") != task:
            raise MagicBokehError(
                f"{self.root} holds a `train {config.get('task')}` run; resume it with "
                f"`magicbokeh train {config.get('task')} --resume`"
            )
        return config

    def check_resume(
        self,
        task: str,
        settings: dict[str, Any],
        changeable: Collection[str],
        defaults: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """:meth:`resumable_config`, also refusing settings that differ from the run's
        (see :func:`settings_differences` for ``defaults``)."""
        config = self.resumable_config(task)
        differences = settings_differences(config["settings"], settings, changeable, defaults)
        if differences:
            raise MagicBokehError(
                f"--resume: the run in {self.root} was made with other settings: "
                f"{'; '.join(differences)}; use the run's settings or start a new run folder"
            )
        return config

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder's lock (one training process group per folder)."""
        with folder_lock(
            self.root,
            f"another training process is using {self.root}; wait for it to finish or choose "
            "another -o folder",
        ):
            yield


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
