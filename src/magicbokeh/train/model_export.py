"""Export a MagicBokeh run's checkpoint: our model folder, or the released ``lora.pkl``.

``magicbokeh`` format: ``OUT/network/`` (:meth:`MagicBokehNetwork.save_pretrained`),
``OUT/magicbokeh.json`` (what ``render --model OUT`` reads) and ``OUT/training.json`` (the run,
step and settings it came from). ``released`` format: see :mod:`magicbokeh.model.released`.
"""

from __future__ import annotations

import json
from pathlib import Path

from magicbokeh.errors import MagicBokehError
from magicbokeh.train.model_runs import network_from_run
from magicbokeh.train.run_folder import RunFolder

__all__ = ["export_model_folder", "export_released"]


def export_model_folder(
    run: RunFolder, step: int | None, output: Path, overwrite: bool
) -> tuple[Path, int]:
    """Write the network of checkpoint ``step`` as a model folder at ``output``."""
    from magicbokeh.install import staged_folder
    from magicbokeh.pipeline import MagicBokehPipeline

    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise MagicBokehError(f"{output} already exists: pass --overwrite to replace it")
    config = run.read_run()
    network, step = network_from_run(run, step)
    with staged_folder(output, overwrite=overwrite) as staging:
        MagicBokehPipeline(network).save_pretrained(staging)
        provenance = {
            "run": str(run.root),
            "step": step,
            "task": config.get("task"),
            "attention_mask": not config["settings"].get("no_fama", False),
            "settings": config["settings"],
        }
        (staging / "training.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return output, step


def export_released(
    run: RunFolder, step: int | None, output: Path, overwrite: bool
) -> tuple[Path, int]:
    """Write the network of checkpoint ``step`` as a released-format ``lora.pkl``."""
    from magicbokeh.io.atomic import ensure_writable
    from magicbokeh.model.released import save_released_checkpoint

    output = ensure_writable(output, overwrite=overwrite)
    network, step = network_from_run(run, step)
    return save_released_checkpoint(network, output, overwrite=overwrite), step
