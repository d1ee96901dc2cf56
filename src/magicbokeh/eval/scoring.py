"""The metrics evaluation reports, their names and order, and one object that computes them.

Names (``--metrics``), in the order reports print them (the papers' column order):
``psnr``, ``ssim``, ``lpips`` (AlexNet), ``lpips-vgg``, ``dists``, ``clipiqa``, ``niqe``,
``musiq``, ``maniqa``, ``fid``. PSNR, SSIM and LPIPS are computed by this package
(:mod:`magicbokeh.metrics`); the others by pyiqa (:mod:`magicbokeh.metrics.pyiqa_metrics`).
A metric that cannot be computed here (pyiqa missing, weights missing) is kept as a column
whose value is ``"not available: <reason>"``.

Images reach the metrics as 8-bit values: outputs are rounded to 8 bits (exactly as a saved
PNG), targets are read from their files (16-bit files are rounded to 8 bits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from magicbokeh.errors import MagicBokehError

__all__ = ["METRICS", "MetricInfo", "Scorer", "parse_metrics"]


@dataclass(frozen=True)
class MetricInfo:
    """A metric's report label, direction and kind (FR: output vs target; NR: output alone;
    set: the output folder vs the target folder)."""

    name: str
    label: str
    higher_better: bool
    kind: str
    decimals: int


#: Every metric, in report order.
METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("psnr", "PSNR", True, "FR", 2),
        MetricInfo("ssim", "SSIM", True, "FR", 4),
        MetricInfo("lpips", "LPIPS", False, "FR", 4),
        MetricInfo("lpips-vgg", "LPIPS-VGG", False, "FR", 4),
        MetricInfo("dists", "DISTS", False, "FR", 4),
        MetricInfo("clipiqa", "CLIP-IQA", True, "NR", 4),
        MetricInfo("niqe", "NIQE", False, "NR", 4),
        MetricInfo("musiq", "MUSIQ", True, "NR", 2),
        MetricInfo("maniqa", "MANIQA", True, "NR", 4),
        MetricInfo("fid", "FID", False, "set", 2),
    )
}

#: LPIPS metric name → network.
LPIPS_NETS = {"lpips": "alex", "lpips-vgg": "vgg"}


def parse_metrics(text: str) -> list[str]:
    """Metric names from ``"psnr,ssim,..."``, validated, in report order, without repeats.

    Raises:
        MagicBokehError: an unknown name (the message lists the valid ones) or none at all.
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MagicBokehError(
            f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)} (comma-separated)"
        )
    if not names:
        raise MagicBokehError(f"--metrics names no metric: choose from {', '.join(METRICS)}")
    return [n for n in METRICS if n in names]


class Scorer:
    """Computes the chosen metrics; the ones that cannot run are listed in ``unavailable``.

    Args:
        names: metric names (see :data:`METRICS`).
        device: where LPIPS and the pyiqa metrics run.
        y_channel: PSNR/SSIM in the pyiqa/OSEDiff Y convention instead of 8-bit RGB
            (see :mod:`magicbokeh.metrics.psnr_ssim`).
        crop_border: pixels removed from each side before PSNR and SSIM.
        lpips_folder: where the LPIPS weights are (default ``<model home>/lpips``).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        device: torch.device | str = "cpu",
        y_channel: bool = False,
        crop_border: int = 0,
        lpips_folder: str | Path | None = None,
    ) -> None:
        self.names = list(names)
        self.device = torch.device(device)
        self.y_channel, self.crop_border = y_channel, crop_border
        self.unavailable: dict[str, str] = {}
        self.details: dict[str, str] = {}
        self._functions: dict[str, object] = {}
        for name in self.names:
            self._load(name, lpips_folder)

    def _load(self, name: str, lpips_folder: str | Path | None) -> None:
        from magicbokeh.metrics import pyiqa_metrics

        if name in ("psnr", "ssim"):
            return
        if name in LPIPS_NETS:
            from magicbokeh.metrics.lpips import LPIPS

            net = LPIPS_NETS[name]
            try:
                self._functions[name] = LPIPS.from_pretrained(net, folder=lpips_folder).to(
                    self.device
                )
            except MagicBokehError:
                self.unavailable[name] = f"run magicbokeh download --lpips {net}"
            return
        try:
            self._functions[name] = pyiqa_metrics.load(name, self.device)
        except pyiqa_metrics.MetricUnavailable as error:
            self.unavailable[name] = str(error)
            if error.detail:
                self.details[name] = error.detail

    @property
    def computed(self) -> list[str]:
        """The metrics that can be computed, in report order."""
        return [n for n in self.names if n not in self.unavailable]

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> list[dict[str, float]]:
        """Per-image values of every computable per-image metric.

        Args:
            outputs, targets: ``B×3×H×W`` sRGB in [0, 1] on 8-bit levels (any device).

        Returns:
            ``B`` dicts metric name → value (float; PSNR may be ``inf``).
        """
        from magicbokeh.metrics.psnr_ssim import psnr, ssim

        outputs = outputs.to(self.device, torch.float32)
        targets = targets.to(self.device, torch.float32)
        values: dict[str, torch.Tensor] = {}
        options = {"y_channel": self.y_channel, "crop_border": self.crop_border}
        for name in self.computed:
            kind = METRICS[name].kind
            if name == "psnr":
                values[name] = psnr(outputs, targets, **options)
            elif name == "ssim":
                values[name] = ssim(outputs, targets, **options)
            elif name in LPIPS_NETS:
                with torch.no_grad():
                    values[name] = self._functions[name](outputs, targets, normalize=True)
            elif kind == "FR":
                values[name] = self._functions[name](outputs, targets)
            elif kind == "NR":
                values[name] = self._functions[name](outputs)
        return [
            {name: float(v.reshape(-1)[i]) for name, v in values.items()}
            for i in range(outputs.shape[0])
        ]

    def score_sets(self, output_dir: Path, target_dir: Path) -> dict[str, float]:
        """Set-level metrics (FID) between two folders of images."""
        return {
            name: self._functions[name](output_dir, target_dir)
            for name in self.computed
            if METRICS[name].kind == "set"
        }
