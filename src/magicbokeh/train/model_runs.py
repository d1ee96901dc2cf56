"""MagicBokeh networks from runs: a checkpoint's network, and what ``--init`` may name.

A checkpoint's network is the run's starting model (``RUN/init/network``) with the
checkpoint's trainable tensors loaded over it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicbokeh.errors import MagicBokehError
from magicbokeh.train.run_folder import CHECKPOINTS_DIR, RunFolder

__all__ = ["MODEL_TASKS", "InitSource", "network_from_run", "resolve_init"]

#: Tasks whose runs train a MagicBokehNetwork.
MODEL_TASKS = ("sr", "bokeh")


def network_from_run(run: RunFolder, step: int | None = None):
    """``(network, step)``: the network of checkpoint ``step`` (default the last) of a model run."""
    from magicbokeh.model.network import MagicBokehNetwork
    from magicbokeh.train.trainer import load_trainable
    from magicbokeh.train.vsd import REGULARISER_PREFIX

    config = run.read_run()
    if config.get("task") not in MODEL_TASKS:
        raise MagicBokehError(
            f"{run.root} is a `train {config.get('task')}` run; it holds no MagicBokeh network"
        )
    step, folder = run.checkpoint(step)
    network = MagicBokehNetwork.from_pretrained(run.init_dir)
    # The VSD regulariser (``train sr --vsd-weight``) trains beside the network, not in it.
    load_trainable(network, folder, skip_prefixes=(REGULARISER_PREFIX,))
    return network, step


@dataclass(frozen=True)
class InitSource:
    """Where a ``train bokeh`` run starts: a model folder, or a run (at ``step``)."""

    kind: str  # "model" or "run"
    path: Path
    step: int | None = None

    def load(self) -> tuple[Any, dict[str, Any]]:
        """``(network, description)`` of the starting network (float32, CPU)."""
        if self.kind == "run":
            network, step = network_from_run(RunFolder(self.path), self.step)
            return network, {"init": str(self.path), "kind": "run", "step": step}
        from magicbokeh.model.network import MagicBokehNetwork

        network = MagicBokehNetwork.from_pretrained(self.path)
        return network, {"init": str(self.path), "kind": "model"}


def _is_model_folder(path: Path) -> bool:
    from magicbokeh.model.network import CONFIG_FILE, NETWORK_SUBFOLDER

    for folder in (path, path / NETWORK_SUBFOLDER):
        try:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("_class_name") == "MagicBokehNetwork":
            return True
    return False


def resolve_init(path: Path) -> InitSource:
    """What ``--init PATH`` names: a model folder, a model run, or one checkpoint of it."""
    from magicbokeh.train.checkpoints import read_state

    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise MagicBokehError(f"--init {path} does not exist; give a model folder or a run")
    run = RunFolder(path)
    if run.is_run():
        config = run.read_run()
        if config.get("task") not in MODEL_TASKS:
            raise MagicBokehError(
                f"--init {path} is a `train {config.get('task')}` run, not a model run"
            )
        run.checkpoint()  # refuses a run without checkpoints
        return InitSource("run", path)
    parent = path.parent
    if parent.name == CHECKPOINTS_DIR and RunFolder(parent.parent).is_run():
        step = read_state(path)["step"]
        config = RunFolder(parent.parent).read_run()
        if config.get("task") not in MODEL_TASKS:
            raise MagicBokehError(
                f"--init {path} is a checkpoint of a `train {config.get('task')}` run"
            )
        return InitSource("run", parent.parent, step)
    if _is_model_folder(path):
        return InitSource("model", path)
    raise MagicBokehError(
        f"--init {path} is neither a MagicBokeh model folder (network config.json + weights) nor "
        "a `train sr` run or checkpoint"
    )
