"""Relative-depth metrics against hand-computed values on constructed depth maps."""

from __future__ import annotations

import numpy as np
import pytest

from magicbokeh.errors import MagicBokehError
from magicbokeh.metrics.depth import (
    Alignment,
    aligned_depth,
    depth_metrics,
    evaluate_disparity,
    fit_scale_shift,
)


def ground_truth() -> np.ndarray:
    """A 6×8 depth map (metres) with a ramp from 1 to 8 m."""
    return np.linspace(1.0, 8.0, 48).reshape(6, 8)


def test_any_scale_and_shift_of_true_disparity_gives_zero_error() -> None:
    depth = ground_truth()
    valid = np.ones(depth.shape, dtype=bool)
    for scale, shift in [(3.0, 0.7), (0.01, -0.002), (250.0, 40.0)]:
        metrics, aligned = evaluate_disparity(
            scale / depth + shift, depth, valid, min_depth=1e-3, max_depth=10.0
        )
        assert metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12)
        assert metrics["rmse"] == pytest.approx(0.0, abs=1e-10)
        assert metrics["delta1"] == metrics["delta2"] == metrics["delta3"] == 1.0
        assert metrics["scale"] == pytest.approx(1 / scale)
        assert metrics["shift"] == pytest.approx(-shift / scale, abs=1e-12)
        np.testing.assert_allclose(aligned, depth, rtol=1e-6)
        assert aligned.dtype == np.float32


def test_known_depth_errors() -> None:
    depth = ground_truth()
    valid = np.ones(depth.shape, dtype=bool)
    prediction = depth * np.where(np.arange(48).reshape(6, 8) % 2 == 0, 1.1, 1.3)
    metrics = depth_metrics(prediction, depth, valid)
    assert metrics["abs_rel"] == pytest.approx(0.2)  # half at 10 %, half at 30 %
    assert metrics["delta1"] == 0.5  # 1.3 ≥ 1.25
    assert metrics["delta2"] == metrics["delta3"] == 1.0  # 1.3 < 1.5625
    expected_rmse = np.sqrt(np.mean((prediction - depth) ** 2))
    assert metrics["rmse"] == pytest.approx(expected_rmse)
    # Too near by a factor 2: ratio 2 exceeds 1.25³ = 1.953, so every δ is 0.
    half = depth_metrics(depth / 2, depth, valid)
    assert half["abs_rel"] == pytest.approx(0.5)
    assert half["delta1"] == half["delta2"] == half["delta3"] == 0.0


def test_alignment_and_clipping_by_hand() -> None:
    # Three pixels at 1, 2 and 4 m (disparity 1, 1/2, 1/4); prediction 0, 1, 2.
    # Least squares: scale = −3/8, shift = 23/24 → aligned disparity 23/24, 14/24, 5/24,
    # depth 24/23, 24/14, 24/5 m.
    depth = np.array([[1.0, 2.0, 4.0]])
    disparity = np.array([[0.0, 1.0, 2.0]])
    valid = np.ones(depth.shape, dtype=bool)
    alignment = fit_scale_shift(disparity, 1 / depth, valid)
    assert alignment.scale == pytest.approx(-3 / 8)
    assert alignment.shift == pytest.approx(23 / 24)
    metrics, aligned = evaluate_disparity(disparity, depth, valid, min_depth=1e-3, max_depth=10.0)
    np.testing.assert_allclose(aligned[0], [24 / 23, 24 / 14, 24 / 5], rtol=1e-6)
    assert metrics["abs_rel"] == pytest.approx((1 / 23 + 1 / 7 + 1 / 5) / 3)
    assert metrics["delta1"] == 1.0  # ratios 1.043, 1.167, 1.2
    # The far limit clips the third pixel to 4.5 m: its error becomes 0.5/4.
    metrics, aligned = evaluate_disparity(disparity, depth, valid, min_depth=1e-3, max_depth=4.5)
    assert aligned[0, 2] == pytest.approx(4.5)
    assert metrics["abs_rel"] == pytest.approx((1 / 23 + 1 / 7 + 0.125) / 3)


def test_only_valid_pixels_count() -> None:
    depth = ground_truth()
    disparity = 2.0 / depth + 1.0
    disparity[0, :] = 50.0  # wrong, but outside the mask
    valid = np.ones(depth.shape, dtype=bool)
    valid[0, :] = False
    metrics, _ = evaluate_disparity(disparity, depth, valid, min_depth=1e-3, max_depth=10.0)
    assert metrics["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["valid_pixels"] == 40


def test_non_positive_aligned_disparity_is_the_far_limit() -> None:
    result = aligned_depth(np.array([[-1.0, 0.0, 0.5, 2000.0]]), Alignment(1.0, 0.0), 1e-3, 80.0)
    np.testing.assert_allclose(result[0], [80.0, 80.0, 2.0, 1e-3])


def test_constant_prediction_is_the_best_constant() -> None:
    depth = np.array([[1.0, 2.0, 4.0]])
    alignment = fit_scale_shift(np.full((1, 3), 0.3), 1 / depth, np.ones((1, 3), dtype=bool))
    assert alignment.scale == 0.0
    assert alignment.shift == pytest.approx((1 + 0.5 + 0.25) / 3)


def test_bad_inputs_are_refused() -> None:
    depth = ground_truth()
    valid = np.ones(depth.shape, dtype=bool)
    with pytest.raises(MagicBokehError, match="same H×W"):
        evaluate_disparity(np.ones((6, 7)), depth, valid, min_depth=1e-3, max_depth=10.0)
    with pytest.raises(MagicBokehError, match="no valid pixels"):
        evaluate_disparity(
            1 / depth, depth, np.zeros(depth.shape, bool), min_depth=1e-3, max_depth=10.0
        )
    with pytest.raises(MagicBokehError, match="positive depth"):
        evaluate_disparity(1 / depth, depth * 0, valid, min_depth=1e-3, max_depth=10.0)
    with pytest.raises(MagicBokehError, match="min_depth < max_depth"):
        aligned_depth(depth, Alignment(1.0, 0.0), 10.0, 1.0)
