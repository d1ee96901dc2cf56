"""Metrics computed by pyiqa (IQA-PyTorch): DISTS, NIQE, MUSIQ, MANIQA, CLIP-IQA and FID.

pyiqa is the ``eval`` extra (``pip install "magicbokeh[eval]"``). It is optional because it
needs torchvision, and PyPI's torchvision only imports beside the torch build it was made for
(not beside a CPU build of torch from the PyTorch index, for example). pyiqa fetches each
metric's weights into its own cache (``~/.cache/torch/hub/pyiqa``) on first use.

:func:`load` returns a ready metric or raises :class:`MetricUnavailable` with a short reason
(pyiqa missing or not importable, weights that cannot be fetched), so evaluation can mark the
column "not available" instead of failing.

Inputs are ``B×3×H×W`` sRGB images in [0, 1] (float32); FR metrics take (output, target),
NR metrics the output alone, FID two folders of images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["PYIQA_METRICS", "MetricUnavailable", "PyiqaMetric", "load"]

INSTALL_HINT = "install magicbokeh[eval]"


class MetricUnavailable(Exception):
    """A metric cannot be computed here: ``str(error)`` is the short reason a report column
    shows, ``detail`` what went wrong (for the command line)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail


@dataclass(frozen=True)
class PyiqaMetric:
    """One pyiqa metric: our name, pyiqa's name and options, kind and direction."""

    name: str
    pyiqa_name: str
    kind: str  # "FR" (output vs target), "NR" (output alone), "set" (two folders)
    lower_better: bool
    options: tuple[tuple[str, object], ...] = ()


#: Our metric name → how pyiqa computes it (the settings OSEDiff/S3Diff-style papers report).
PYIQA_METRICS: dict[str, PyiqaMetric] = {
    "dists": PyiqaMetric("dists", "dists", "FR", True),
    "clipiqa": PyiqaMetric("clipiqa", "clipiqa", "NR", False),
    "niqe": PyiqaMetric("niqe", "niqe", "NR", True),
    "musiq": PyiqaMetric("musiq", "musiq", "NR", False),
    "maniqa": PyiqaMetric("maniqa", "maniqa-pipal", "NR", False),
    "fid": PyiqaMetric("fid", "fid", "set", True),
}


def _import_pyiqa():
    try:
        import pyiqa
    except ImportError:
        raise MetricUnavailable(INSTALL_HINT) from None
    except Exception as error:  # e.g. a torchvision built for another torch
        raise MetricUnavailable(
            f"pyiqa does not import here; {INSTALL_HINT} with a matching torch and torchvision",
            f"{type(error).__name__}: {_first_line(error)}",
        ) from None
    return pyiqa


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else ""


def available() -> str | None:
    """None when pyiqa imports, else the reason it does not."""
    try:
        _import_pyiqa()
    except MetricUnavailable as error:
        return str(error)
    return None


def load(name: str, device: torch.device | str = "cpu") -> Callable:
    """The pyiqa metric ``name`` (a key of :data:`PYIQA_METRICS`) on ``device``.

    Returns a callable: FR ``f(output, target) -> B`` scores, NR ``f(output) -> B`` scores,
    set ``f(output_dir, target_dir) -> float``.

    Raises:
        MetricUnavailable: pyiqa is missing or broken, or the metric's weights cannot be
            fetched or loaded.
    """
    spec = PYIQA_METRICS[name]
    pyiqa = _import_pyiqa()
    try:
        metric = pyiqa.create_metric(
            spec.pyiqa_name, device=torch.device(device), **dict(spec.options)
        )
    except Exception as error:  # download, cache and model-construction errors
        raise MetricUnavailable(
            "pyiqa could not load its weights",
            f"{spec.pyiqa_name}: {type(error).__name__}: {_first_line(error)}; check the "
            "connection or pyiqa's weight cache (~/.cache/torch/hub/pyiqa)",
        ) from None
    if spec.kind == "set":

        def folders(output_dir: str | os.PathLike[str], target_dir: str | os.PathLike[str]):
            return float(metric(os.fspath(output_dir), os.fspath(target_dir)))

        return folders

    def scores(output: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            args = (output,) if spec.kind == "NR" else (output, target)
            return metric(*(a.float().clamp(0.0, 1.0) for a in args)).reshape(-1).double().cpu()

    return scores
