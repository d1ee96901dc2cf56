"""The weight-free depth guess: right shape and range, subject nearer than background."""

from __future__ import annotations

import numpy as np

from magicbokeh.depth.heuristic import guided_filter, heuristic_disparity


def subject_scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = np.empty((96, 128, 3), dtype=np.float32)
    rgb[:] = (0.35, 0.45, 0.55)
    rgb += rng.normal(0, 0.02, rgb.shape).astype(np.float32)
    rgb[30:66, 44:84] = (0.85, 0.2, 0.15)  # a red subject in the middle
    return np.clip(rgb, 0, 1)


def test_shape_range_and_determinism() -> None:
    rgb = subject_scene()
    d = heuristic_disparity(rgb)
    assert d.shape == (96, 128) and d.dtype == np.float32
    assert d.min() == 0.0 and d.max() == 1.0
    np.testing.assert_array_equal(d, heuristic_disparity(rgb))


def test_subject_is_nearer_than_background_at_the_same_height() -> None:
    d = heuristic_disparity(subject_scene())
    assert d[48, 64] > d[48, 10] + 0.2
    assert d[48, 64] > d[48, 118] + 0.2


def test_lower_rows_of_a_plain_scene_are_nearer() -> None:
    rgb = np.full((64, 64, 3), 0.5, dtype=np.float32)
    d = heuristic_disparity(rgb)
    assert d[60].mean() > d[32].mean() > d[3].mean()


def test_guided_filter_keeps_an_edge_of_the_guide() -> None:
    guide = np.zeros((32, 32), dtype=np.float32)
    guide[:, 16:] = 1.0
    source = guide + np.random.default_rng(1).normal(0, 0.1, guide.shape).astype(np.float32)
    smooth = guided_filter(guide, source, radius=3, eps=1e-3)
    assert abs(smooth[:, 18:].mean() - smooth[:, :14].mean()) > 0.9
    assert smooth[:, 18:].std() < source[:, 18:].std() / 2
