"""Focus specs resolve to the right d_f; defocus maps follow the documented conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magicbokeh import focus as focus_module
from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import (
    FocusSpec,
    as_focus_spec,
    auto_focus_region,
    defocus_radius,
    focus_mask,
    learned_defocus,
    parse_numbers,
    resolve_focus,
    signed_defocus,
)


def two_plane_scene(height: int = 120, width: int = 160) -> np.ndarray:
    """Far background 0.2 with a near square 0.8 in the middle."""
    d = np.full((height, width), 0.2, dtype=np.float32)
    d[40:80, 60:100] = 0.8
    return d


def test_parse_numbers_reads_and_rejects() -> None:
    assert parse_numbers("12, 34", 2, "--focus") == (12.0, 34.0)
    for bad in ("12", "a,b", "1,2,3", "nan,1"):
        with pytest.raises(MagicBokehError, match="--focus"):
            parse_numbers(bad, 2, "--focus")


def test_point_ignores_a_noisy_pixel() -> None:
    d = two_plane_scene()
    d[60, 80] = 0.0  # a single bad depth sample under the click
    assert resolve_focus(d, FocusSpec("point", point=(80, 60))) == pytest.approx(0.8)


def test_point_next_to_a_depth_edge_stays_on_its_surface() -> None:
    d = two_plane_scene()
    assert resolve_focus(d, FocusSpec("point", point=(61, 41))) == pytest.approx(0.8)
    assert resolve_focus(d, FocusSpec("point", point=(58, 38))) == pytest.approx(0.2)


def test_point_outside_the_image_is_an_error() -> None:
    with pytest.raises(MagicBokehError, match="outside the 160×120 image"):
        resolve_focus(two_plane_scene(), FocusSpec("point", point=(160, 10)))


def test_box_and_mask_take_the_median() -> None:
    d = np.tile(np.linspace(0, 1, 101, dtype=np.float32), (10, 1))
    assert resolve_focus(d, FocusSpec("box", box=(0, 0, 101, 10))) == pytest.approx(0.5)
    mask = np.zeros_like(d)
    mask[:, 80:] = 1.0
    assert resolve_focus(d, FocusSpec("mask", mask=mask)) == pytest.approx(0.9)


def test_mask_of_another_size_is_resized_when_the_aspect_matches() -> None:
    d = two_plane_scene()
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[20:40, 30:50] = 255
    assert resolve_focus(d, FocusSpec("mask", mask=mask)) == pytest.approx(0.8)
    with pytest.raises(MagicBokehError, match="aspect ratio"):
        resolve_focus(d, FocusSpec("mask", mask=np.ones((60, 60))))


def test_empty_mask_and_empty_box_are_errors() -> None:
    d = two_plane_scene()
    with pytest.raises(MagicBokehError, match="selects no pixels"):
        resolve_focus(d, FocusSpec("mask", mask=np.zeros_like(d)))
    with pytest.raises(MagicBokehError, match="no pixels inside"):
        resolve_focus(d, FocusSpec("box", box=(200, 200, 300, 300)))


def test_disparity_value_must_be_in_range() -> None:
    assert resolve_focus(two_plane_scene(), FocusSpec("disparity", value=0.3)) == 0.3
    with pytest.raises(MagicBokehError, match="outside \\[0, 1\\]"):
        resolve_focus(two_plane_scene(), FocusSpec("disparity", value=1.5))


def test_auto_prefers_the_central_subject_over_a_near_floor_edge() -> None:
    height, width = 120, 160
    d = np.tile(np.linspace(0.1, 0.6, height, dtype=np.float32)[:, None], (1, width))
    d[30:90, 55:105] = 0.75  # subject in the middle
    d[112:, :] = 0.95  # floor strip touching the camera along the bottom edge
    assert resolve_focus(d, FocusSpec("auto")) == pytest.approx(0.75)
    assert auto_focus_region(d)[60, 80]


def test_auto_on_a_large_map_decides_on_a_subsampled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    height, width = 120, 160
    d = np.tile(np.linspace(0.1, 0.6, height, dtype=np.float32)[:, None], (1, width))
    d[30:90, 55:105] = 0.75
    d[112:, :] = 0.95
    seen: list[tuple[int, int]] = []

    def region(disparity: np.ndarray) -> np.ndarray:
        seen.append(disparity.shape)
        return auto_focus_region(disparity)

    monkeypatch.setattr(focus_module, "AUTO_FOCUS_PIXELS", 2200)  # 19200 px / 2200 → stride 3
    monkeypatch.setattr(focus_module, "auto_focus_region", region)
    assert resolve_focus(d, FocusSpec("auto")) == pytest.approx(0.75)
    assert seen == [(40, 54)]  # every third row and column


def test_as_focus_spec_accepts_every_documented_form() -> None:
    assert as_focus_spec("auto").kind == "auto"
    assert as_focus_spec((3, 4)).point == (3.0, 4.0)
    assert as_focus_spec((1, 2, 3, 4)).box == (1.0, 2.0, 3.0, 4.0)
    assert as_focus_spec(0.25).value == 0.25
    assert as_focus_spec(np.ones((4, 4), dtype=bool)).kind == "mask"
    with pytest.raises(MagicBokehError):
        as_focus_spec("middle")


def test_defocus_maps() -> None:
    d = torch.tensor([[[[0.0, 0.5, 1.0]]]])
    assert defocus_radius(d, 0.5, 20.0).flatten().tolist() == [10.0, 0.0, 10.0]
    assert signed_defocus(d, 0.5, 20.0).flatten().tolist() == [-10.0, 0.0, 10.0]
    assert learned_defocus(d, 0.5, 32.0).flatten().tolist() == [0.5, 0.0, 0.5]


def test_focus_mask_threshold_follows_the_learned_engine() -> None:
    d = torch.tensor([0.5, 0.59, 0.62, 0.3])
    assert focus_mask(d, 0.5, 32.0).tolist() == [1.0, 1.0, 0.0, 0.0]
    # The in-focus band is |d - d_f| <= 3.2 / K: everything is in focus for K <= 3.
    assert focus_mask(d, 0.5, 3.0).tolist() == [1.0, 1.0, 1.0, 1.0]
