"""Depth benchmark: Depth Anything V2 models on NYUv2 / KITTI, clear and degraded.

For every readable test pair, each model predicts disparity for the original image (*Clear*)
and for a Real-ESRGAN degradation of it (*Degrade*: :func:`magicbokeh.degrade.degrade`, scale
4, resized back to the image size, seeded per image from ``degrade_seed`` and the image's name,
on the CPU, so every model sees the same degraded input). The disparity is scored with
:func:`magicbokeh.metrics.depth.evaluate_disparity` inside the protocol's crop and depth range.
A column's value is the mean over images of the per-image metric; *Average* is the mean of
*Clear* and *Degrade*.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from magicbokeh.degrade.command import image_seed
from magicbokeh.degrade.pipeline import degrade, minimum_hr_size
from magicbokeh.depth.depth_anything import DepthAnythingEstimator
from magicbokeh.errors import MagicBokehError
from magicbokeh.eval.depth_data import (
    KITTI_BENCHMARK_SIZE,
    KITTI_GARG_CROP,
    NYU_EIGEN_CROP,
    NYU_FRAME,
    DepthProtocol,
    DepthSample,
    SizeMismatch,
    probe_samples,
    read_sample,
    valid_mask,
)
from magicbokeh.io.atomic import atomic_write
from magicbokeh.io.images import to_tensor
from magicbokeh.io.sidecar import package_versions
from magicbokeh.metrics.depth import METRIC_NAMES, evaluate_disparity

logger = logging.getLogger(__name__)

COLUMNS = ("clear", "degrade")
"""Per-image columns; the report adds ``average`` (their mean)."""
DEGRADE_SCALE = 4
"""Downscaling factor of the *Degrade* column's Real-ESRGAN pipeline (resized back)."""
METRIC_TITLES = {
    "abs_rel": "AbsRel ↓",
    "delta1": "δ1 ↑",
    "rmse": "RMSE (m) ↓",
    "delta2": "δ2 ↑",
    "delta3": "δ3 ↑",
}


@dataclass
class DepthBenchmark:
    """Result of :func:`evaluate_depth`: per-model per-image metrics and what was skipped."""

    protocol: DepthProtocol
    models: dict[str, str]
    """label → model as given (path or Hub id)."""
    per_image: dict[str, list[dict]] = field(default_factory=dict)
    """label → one record per scored image: ``name``, ``clear`` and ``degrade`` metrics."""
    skipped: list[dict] = field(default_factory=list)
    """``{"name", "reason"}`` per test pair that was not scored."""

    def columns(self, label: str) -> dict[str, dict[str, float]]:
        """``clear``, ``degrade`` and ``average`` means of every metric for one model."""
        records = self.per_image[label]
        result = {
            column: {m: float(np.mean([r[column][m] for r in records])) for m in METRIC_NAMES}
            for column in COLUMNS
        }
        result["average"] = {
            m: (result["clear"][m] + result["degrade"][m]) / 2 for m in METRIC_NAMES
        }
        return result


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """A short unique label per model (the file or folder name, or the Hub id)."""
    labels: dict[str, str] = {}
    for model in models:
        path = Path(model).expanduser()
        base = path.name if path.exists() else str(model)
        label, number = base, 2
        while label in labels:
            label, number = f"{base}#{number}", number + 1
        labels[label] = str(model)
    return labels


def _prediction_folder(root: Path, label: str, single: bool) -> Path:
    return root if single else root / label.replace("/", "--").replace("#", "-")


def _save_prediction(folder: Path, name: str, depth: np.ndarray, disparity: np.ndarray) -> None:
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target.with_name(target.name + ".npy"), depth.astype(np.float32))
    np.save(target.with_name(target.name + "_disparity.npy"), disparity.astype(np.float32))


def evaluate_depth(
    estimators: Mapping[str, DepthAnythingEstimator],
    samples: Sequence[DepthSample],
    protocol: DepthProtocol,
    *,
    models: Mapping[str, str] | None = None,
    degrade_seed: int = 0,
    predictions: Path | None = None,
    progress: bool = False,
) -> DepthBenchmark:
    """Score every estimator on every readable sample, clear and degraded.

    ``estimators`` maps a label to a model. Pairs whose files cannot be read, whose ground
    truth has no valid pixel, or that are too small to degrade are skipped and listed in
    ``skipped``. With ``predictions``, writes per image and column the aligned depth
    ``<column>/<name>.npy`` and the raw disparity ``<column>/<name>_disparity.npy`` (float32,
    ground-truth size; depth in metres) under ``predictions`` (one model) or
    ``predictions/<label>`` (several).

    Raises:
        MagicBokehError: no estimator; an image and its ground truth differ in size; or no
            sample could be scored.
    """
    if not estimators:
        raise MagicBokehError("no model to evaluate; pass at least one --model")
    result = DepthBenchmark(protocol, dict(models or {k: k for k in estimators}))
    result.per_image = {label: [] for label in estimators}
    usable, result.skipped = probe_samples(list(samples))
    smallest = minimum_hr_size(DEGRADE_SCALE)
    for sample in tqdm(usable, desc=f"depth {protocol.name}", unit="img", disable=not progress):
        try:
            rgb, depth = read_sample(sample, protocol)
        except SizeMismatch:
            raise
        except MagicBokehError as error:
            result.skipped.append({"name": sample.name, "reason": str(error)})
            continue
        valid = valid_mask(depth, protocol)
        if not valid.any():
            reason = "the ground truth has no valid pixels in the crop and depth range"
            result.skipped.append({"name": sample.name, "reason": reason})
            continue
        if min(rgb.shape[:2]) < smallest:
            reason = f"smaller than the {smallest} px the degradation needs"
            result.skipped.append({"name": sample.name, "reason": reason})
            continue
        clear = to_tensor(rgb)
        generator = torch.Generator().manual_seed(image_seed(degrade_seed, sample.name))
        inputs = {
            "clear": clear,
            "degrade": degrade(clear, generator=generator, scale=DEGRADE_SCALE, resize_back=True),
        }
        for label, estimator in estimators.items():
            record: dict = {"name": sample.name}
            for column, image in inputs.items():
                disparity = estimator.disparity(image.to(estimator.device), normalise=False)
                disparity = disparity[0, 0].float().cpu().numpy()
                metrics, aligned = evaluate_disparity(
                    disparity,
                    depth,
                    valid,
                    min_depth=protocol.min_depth,
                    max_depth=protocol.max_depth,
                )
                record[column] = metrics
                if predictions is not None:
                    folder = _prediction_folder(predictions, label, len(estimators) == 1)
                    _save_prediction(folder / column, sample.name, aligned, disparity)
            result.per_image[label].append(record)
    if not any(result.per_image.values()):
        first = result.skipped[0]["reason"] if result.skipped else "no samples"
        raise MagicBokehError(
            f"none of the {len(samples)} test pairs could be scored (first: {first})"
        )
    return result


def conventions(protocol: DepthProtocol, degrade_seed: int) -> dict:
    """Every constant of the protocol, for the report."""
    if protocol.crop == "eigen":
        top, bottom, left, right = NYU_EIGEN_CROP
        crop = {"name": "eigen", "frame_hw": list(NYU_FRAME)}
        crop.update(rows=[top, bottom], columns=[left, right])
    else:
        top, bottom, left, right = KITTI_GARG_CROP
        crop = {"name": "garg", "benchmark_crop_hw": list(KITTI_BENCHMARK_SIZE)}
        crop.update(row_fractions=[top, bottom], column_fractions=[left, right])
    return {
        "min_depth_m": protocol.min_depth,
        "max_depth_m": protocol.max_depth,
        "depth_png_scale_per_m": protocol.depth_scale,
        "crop": crop,
        "alignment": "least-squares scale and shift of predicted disparity to 1/gt over valid "
        "pixels; depth = 1/clip(s*d+t, 1/max_depth, 1/min_depth)",
        "aggregation": "mean over images of per-image metrics; average = (clear + degrade) / 2",
        "degradation": {
            "pipeline": "Real-ESRGAN second-order (magicbokeh.degrade defaults)",
            "scale": DEGRADE_SCALE,
            "resize_back": True,
            "seed": degrade_seed,
            "per_image_seed": "sha256(seed, image name), see magicbokeh.degrade.command.image_seed",
            "device": "cpu",
        },
    }


def report_json(benchmark: DepthBenchmark, *, data: dict, degrade_seed: int) -> dict:
    """The JSON report: protocol, data, one row per model and column, per-image values."""
    rows, models = [], []
    for label, source in benchmark.models.items():
        columns = benchmark.columns(label)
        for column, metrics in columns.items():
            rows.append({"model": label, "column": column, **metrics})
        models.append(
            {
                "label": label,
                "model": source,
                "columns": columns,
                "per_image": benchmark.per_image[label],
            }
        )
    return {
        "protocol": "depth",
        "dataset": benchmark.protocol.name,
        "conventions": conventions(benchmark.protocol, degrade_seed),
        "data": {**data, "skipped": benchmark.skipped},
        "rows": rows,
        "models": models,
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def report_markdown(report: dict) -> str:
    """The Markdown report: a table with one row per model and column, then the settings."""
    protocol, data = report["conventions"], report["data"]
    title = {"nyu": "NYUv2", "kitti": "KITTI"}.get(report["dataset"], report["dataset"])
    lines = [
        f"# Depth benchmark: {title}",
        "",
        f"{data['scored']} images scored from `{data['root']}` (layout `{data['layout']}`), "
        f"{len(data['skipped'])} skipped; degradation seed {protocol['degradation']['seed']}.",
        "",
        "| model | column | " + " | ".join(METRIC_TITLES[m] for m in METRIC_NAMES) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in METRIC_NAMES) + " |",
    ]
    for row in report["rows"]:
        values = " | ".join(f"{row[m]:.4f}" for m in METRIC_NAMES)
        lines.append(f"| {row['model']} | {row['column'].capitalize()} | {values} |")
    lines += [
        "",
        f"Depth range {protocol['min_depth_m']:g}–{protocol['max_depth_m']:g} m, "
        f"{protocol['crop']['name']} crop; {protocol['alignment']}; {protocol['aggregation']}.",
    ]
    if data["skipped"]:
        lines += ["", "Skipped:", ""]
        lines += [f"- `{item['name']}`: {item['reason']}" for item in data["skipped"]]
    return "\n".join(lines) + "\n"


REPORT_FILES = ("report.json", "report.md")


def write_report(report: dict, out_dir: Path, *, overwrite: bool) -> list[Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` atomically; returns the paths."""
    paths = [out_dir / name for name in REPORT_FILES]
    texts = [json.dumps(report, indent=2, ensure_ascii=False) + "\n", report_markdown(report)]
    for path, text in zip(paths, texts, strict=True):
        with atomic_write(path, overwrite=overwrite) as temporary:
            temporary.write_text(text, encoding="utf-8")
    return paths
