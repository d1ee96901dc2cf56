"""What a run reports while it trains: the metrics log, TensorBoard events, sample sheets.

Only the main process writes. ``metrics.jsonl`` gets one JSON object per line, appended and
fsynced (a failed append is cut back off); each record has ``step``, ``phase``, ``split``
(``train`` or ``val``), ``loss`` and the loss terms, and for training records ``lr``,
``grad_norm``, ``samples_per_s`` and ``step_s`` (seconds per optimizer step).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magicbokeh.data.store import ManifestAppender
from magicbokeh.io.atomic import atomic_write
from magicbokeh.io.images import save_image
from magicbokeh.sheet import contact_sheet

__all__ = ["RunLog", "read_metrics", "sample_sheet"]

SAMPLE_ROWS = 4


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (complete lines only)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            records.append(json.loads(line))
    return records


def _truncate_after(path: Path, step: int) -> None:
    """Keep the records of steps ≤ ``step`` (a resumed run repeats the later ones)."""
    records = read_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(records) and path.is_file() and path.read_text().endswith("\n"):
        return
    with atomic_write(path, overwrite=True) as temporary:
        temporary.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def sample_sheet(images: dict[str, torch.Tensor], rows: int = SAMPLE_ROWS) -> np.ndarray:
    """Contact sheet: one row per item, one column per entry of ``images`` (B×C×H×W in [0, 1])."""
    columns = list(images)
    count = min(rows, *(images[c].shape[0] for c in columns))
    cells, labels = [], []
    for i in range(count):
        for name in columns:
            cell = images[name][i].detach().float().clamp(0, 1).cpu()
            cells.append(
                cell.permute(1, 2, 0).numpy().squeeze(-1)
                if cell.shape[0] == 1
                else cell.permute(1, 2, 0).numpy()
            )
            labels.append(name)
    width = max(128, min(256, int(images[columns[0]].shape[-1])))
    return contact_sheet(cells, labels, columns=len(columns), cell_width=width)


class RunLog:
    """Metrics file, TensorBoard writer and sample sheets of one run (main process only)."""

    def __init__(
        self, metrics_path: Path, tensorboard_dir: Path, samples_dir: Path, start_step: int
    ):
        # A run resumed from step N repeats what came after N; one without a checkpoint repeats
        # everything, the validation at step 0 included.
        _truncate_after(metrics_path, start_step if start_step > 0 else -1)
        self.samples_dir = samples_dir
        self._handle = open(metrics_path, "ab")  # noqa: SIM115 - closed in close()
        self._metrics = ManifestAppender(self._handle, metrics_path)
        from torch.utils.tensorboard import SummaryWriter

        self._board = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1)

    def record(self, record: dict[str, Any]) -> None:
        """Append one metrics record and mirror its numbers to TensorBoard."""
        clean: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            clean[key] = value
        clean["step"] = int(record["step"])
        self._metrics.append(clean)
        prefix = f"{record['split']}/{record['phase']}"
        for key, value in clean.items():
            if key in ("step", "phase", "split", "set") or not isinstance(value, (int, float)):
                continue
            self._board.add_scalar(f"{prefix}/{key}", value, clean["step"])

    def samples(self, step: int, images: dict[str, torch.Tensor], phase: str) -> Path:
        """Write ``samples/step-<N>.png`` and the same sheet to TensorBoard."""
        sheet = sample_sheet(images)
        path = save_image(self.samples_dir / f"step-{step}.png", sheet, overwrite=True)
        self._board.add_image(f"samples/{phase}", sheet, step, dataformats="HWC")
        return path

    def close(self) -> None:
        self._board.flush()
        self._board.close()
        self._handle.close()
