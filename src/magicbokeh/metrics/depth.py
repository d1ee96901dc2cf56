"""Relative-depth metrics: disparity alignment to metric ground truth, AbsRel, RMSE, δ₁..δ₃.

The protocol of affine-invariant (relative) depth evaluation used for MiDaS and Depth Anything:

1. the prediction is *disparity* (relative inverse depth, larger = nearer, any scale and shift);
2. the ground-truth depth ``z`` (metres) is inverted to disparity ``1/z`` on the valid pixels;
3. a scale ``s`` and shift ``t`` are fitted by least squares, ``min Σ_valid (s·p + t − 1/z)²``
   (:func:`fit_scale_shift`);
4. the aligned disparity ``s·p + t`` is clipped to ``[1/max_depth, 1/min_depth]`` and inverted to
   depth, so every predicted depth lies in ``[min_depth, max_depth]`` (a non-positive aligned
   disparity becomes ``max_depth``; :func:`aligned_depth`);
5. the metrics compare that depth with ``z`` on the valid pixels (:func:`depth_metrics`).

Arrays are ``H×W`` numpy arrays; the valid mask is boolean ``H×W``. Computation is in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magicbokeh.errors import MagicBokehError

DELTA_BASE = 1.25
"""δₙ counts pixels with ``max(pred/gt, gt/pred) < 1.25ⁿ``."""

METRIC_NAMES = ("abs_rel", "delta1", "rmse", "delta2", "delta3")
"""Metric keys, in report order: AbsRel ↓, δ₁ ↑, RMSE (metres) ↓, δ₂ ↑, δ₃ ↑."""


@dataclass(frozen=True)
class Alignment:
    """Least-squares map from predicted to ground-truth disparity: ``gt ≈ scale·pred + shift``."""

    scale: float
    shift: float


def _check_pair(prediction: np.ndarray, target: np.ndarray, valid: np.ndarray) -> None:
    if prediction.shape != target.shape or valid.shape != target.shape:
        raise MagicBokehError(
            f"prediction {prediction.shape}, ground truth {target.shape} and valid mask "
            f"{valid.shape} must have the same H×W; resize the prediction to the ground truth"
        )
    if not valid.any():
        raise MagicBokehError(
            "the ground truth has no valid pixels inside the evaluation crop and depth range"
        )


def fit_scale_shift(prediction: np.ndarray, target: np.ndarray, valid: np.ndarray) -> Alignment:
    """Least-squares ``scale, shift`` minimising ``Σ_valid (scale·prediction + shift − target)²``.

    ``prediction`` and ``target`` are ``H×W`` (any units), ``valid`` a boolean ``H×W`` mask. A
    prediction that is constant on the valid pixels gets ``scale = 0`` and the mean target as
    shift (the best constant).
    """
    valid = np.asarray(valid, dtype=bool)
    _check_pair(prediction, target, valid)
    p = np.asarray(prediction, dtype=np.float64)[valid]
    y = np.asarray(target, dtype=np.float64)[valid]
    p_mean, y_mean = p.mean(), y.mean()
    variance = np.mean((p - p_mean) ** 2)
    if not variance > 1e-24:
        return Alignment(0.0, float(y_mean))
    scale = np.mean((p - p_mean) * (y - y_mean)) / variance
    return Alignment(float(scale), float(y_mean - scale * p_mean))


def aligned_depth(
    disparity: np.ndarray, alignment: Alignment, min_depth: float, max_depth: float
) -> np.ndarray:
    """Depth (metres, float64 ``H×W``) from predicted disparity and its alignment.

    ``1 / clip(scale·disparity + shift, 1/max_depth, 1/min_depth)``: values lie in
    ``[min_depth, max_depth]``; a non-positive aligned disparity (beyond the far limit) becomes
    ``max_depth``.
    """
    if not 0 < min_depth < max_depth:
        raise MagicBokehError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    aligned = alignment.scale * np.asarray(disparity, dtype=np.float64) + alignment.shift
    return 1.0 / np.clip(aligned, 1.0 / max_depth, 1.0 / min_depth)


def depth_metrics(prediction: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict:
    """AbsRel, δ₁, RMSE, δ₂, δ₃ of predicted depth against ground-truth depth on ``valid``.

    ``AbsRel = mean(|p − z| / z)``, ``RMSE = sqrt(mean((p − z)²))`` (in the depth unit),
    ``δₙ = mean(max(p/z, z/p) < 1.25ⁿ)``; means over the valid pixels. Both maps must be
    positive there. Returns floats keyed by :data:`METRIC_NAMES`.
    """
    valid = np.asarray(valid, dtype=bool)
    _check_pair(prediction, target, valid)
    p = np.asarray(prediction, dtype=np.float64)[valid]
    z = np.asarray(target, dtype=np.float64)[valid]
    if (p <= 0).any() or (z <= 0).any():
        raise MagicBokehError("depth metrics need positive depths on every valid pixel")
    ratio = np.maximum(p / z, z / p)
    return {
        "abs_rel": float(np.mean(np.abs(p - z) / z)),
        "delta1": float(np.mean(ratio < DELTA_BASE)),
        "rmse": float(np.sqrt(np.mean((p - z) ** 2))),
        "delta2": float(np.mean(ratio < DELTA_BASE**2)),
        "delta3": float(np.mean(ratio < DELTA_BASE**3)),
    }


def evaluate_disparity(
    disparity: np.ndarray,
    gt_depth: np.ndarray,
    valid: np.ndarray,
    *,
    min_depth: float,
    max_depth: float,
) -> tuple[dict, np.ndarray]:
    """The whole protocol for one image: align ``disparity`` in disparity space, score depth.

    ``gt_depth`` is metres (``H×W``), ``valid`` the evaluation mask (crop and depth range
    already applied; all its pixels must have ``gt_depth > 0``). Returns the metrics (plus
    ``scale``, ``shift`` and ``valid_pixels``) and the aligned depth ``H×W`` float32 metres
    over the whole image.
    """
    valid = np.asarray(valid, dtype=bool)
    _check_pair(disparity, gt_depth, valid)
    target = np.zeros(gt_depth.shape, dtype=np.float64)
    depth = np.asarray(gt_depth, dtype=np.float64)
    if (depth[valid] <= 0).any():
        raise MagicBokehError("valid ground-truth pixels must have a positive depth")
    target[valid] = 1.0 / depth[valid]
    alignment = fit_scale_shift(disparity, target, valid)
    prediction = aligned_depth(disparity, alignment, min_depth, max_depth)
    metrics = depth_metrics(prediction, depth, valid)
    metrics.update(
        scale=alignment.scale, shift=alignment.shift, valid_pixels=int(np.count_nonzero(valid))
    )
    return metrics, prediction.astype(np.float32)
