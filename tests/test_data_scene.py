"""Scene composition for synthetic training data: plans, layers, disparity and focus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magicbokeh.data.scene import (
    Cutout,
    SourceInfo,
    background_surface,
    build_layers,
    describe_cutout,
    place_cutout,
    sample_plan,
)
from magicbokeh.errors import MagicBokehError
from magicbokeh.optics.color import srgb_to_linear

SIZE = 64


def soft_disk(height: int, width: int, radius: float, softness: float = 3.0) -> np.ndarray:
    """``H×W`` alpha: a disk with a soft (linear ramp) edge, centred."""
    y, x = np.mgrid[:height, :width]
    distance = np.hypot(y - (height - 1) / 2, x - (width - 1) / 2)
    return np.clip((radius - distance) / softness + 0.5, 0.0, 1.0).astype(np.float32)


def sources() -> tuple[list[SourceInfo], list[SourceInfo], np.ndarray, dict[str, Cutout]]:
    rng = np.random.default_rng(3)
    background = rng.uniform(0.2, 0.8, (90, 120, 3)).astype(np.float32)
    red = np.zeros((40, 30, 3), np.float32)
    red[..., 0] = 0.9
    green = np.zeros((50, 50, 3), np.float32)
    green[..., 1] = 0.8
    cutouts = {
        "red.png": Cutout(red, soft_disk(40, 30, 12)),
        "green.png": Cutout(green, soft_disk(50, 50, 20)),
    }
    fg = [describe_cutout(name, c.alpha) for name, c in cutouts.items()]
    return [SourceInfo("bg.jpg", 120, 90)], fg, background, cutouts


def build(seed: int):
    bg_info, fg_info, background, cutouts = sources()
    plan = sample_plan(np.random.default_rng(seed), SIZE, bg_info, fg_info)
    scene = build_layers(plan, background, [cutouts[f.name] for f in plan.foregrounds])
    return plan, scene


def test_plan_is_a_pure_function_of_the_generator_and_json_ready() -> None:
    bg, fg, _, _ = sources()
    first = sample_plan(np.random.default_rng(11), SIZE, bg, fg)
    again = sample_plan(np.random.default_rng(11), SIZE, bg, fg)
    other = sample_plan(np.random.default_rng(12), SIZE, bg, fg)
    assert first == again and first != other
    record = json.loads(json.dumps(first.to_dict()))
    assert record["foregrounds"][0]["name"] in ("red.png", "green.png")
    assert record["size"] == SIZE


def test_plan_statistics_match_the_recipe() -> None:
    bg, fg, _, _ = sources()
    plans = [sample_plan(np.random.default_rng(i), SIZE, bg, fg, k_max=32.0) for i in range(400)]
    apertures = np.array([p.aperture for p in plans])
    assert apertures.min() >= 0 and apertures.max() <= 32
    assert 14 < apertures.mean() < 18  # U[0, 32]
    targets = {t: sum(p.focus_target == t for p in plans) for t in ("foreground0", "background")}
    assert all(90 < n < 180 for n in targets.values())  # one third each
    kinds = {p.background.surface for p in plans}
    assert kinds == {"flat", "tilted", "smooth"}
    for plan in plans:
        names = [f.name for f in plan.foregrounds]
        assert len(set(names)) == 2  # two distinct cut-outs when there are two
        for f in plan.foregrounds:
            assert f.disparity >= plan.background.span + 0.1 - 1e-9  # nearer than background
            assert f.size[1] <= 0.85 * SIZE + 1


def test_one_foreground_source_is_used_twice() -> None:
    bg, fg, _, _ = sources()
    plan = sample_plan(np.random.default_rng(0), SIZE, bg, fg[:1])
    assert [f.name for f in plan.foregrounds] == [fg[0].name] * 2


def test_layers_are_ordered_and_the_visible_disparity_spans_zero_to_one() -> None:
    for seed in range(12):
        plan, scene = build(seed)
        assert len(scene.layers) == 3
        visible = scene.disparity[0, 0]
        assert float(visible.min()) == pytest.approx(0.0, abs=1e-6)
        assert float(visible.max()) == pytest.approx(1.0, abs=1e-6)
        background = scene.layers[0]
        assert torch.all(background.rgba[:, 3] == 1)
        top = float(background.disparity.max())
        for layer in scene.layers[1:]:
            planes = layer.disparity.unique()
            assert len(planes) == 1 and float(planes[0]) > top  # planes in front
        for layer in scene.layers:
            assert layer.rgba.shape == (1, 4, SIZE, SIZE)
            assert float(layer.rgba.min()) >= 0 and float(layer.rgba.max()) <= 1


def test_focus_disparity_is_the_target_surface() -> None:
    seen = set()
    for seed in range(30):
        plan, scene = build(seed)
        seen.add(plan.focus_target)
        x, y = scene.focus_point
        if plan.focus_target == "background":
            surface = scene.layers[0].disparity[0, 0, y, x]
            assert scene.focus_disparity == pytest.approx(float(surface), abs=1e-6)
            # The focused background point is visible, not covered by a cut-out.
            covered = max(float(layer.rgba[0, 3, y, x]) for layer in scene.layers[1:])
            assert covered < 0.5
        else:
            index = int(plan.focus_target[-1])
            layer = scene.layers[1 + index]
            assert scene.focus_disparity == pytest.approx(float(layer.disparity[0, 0, 0, 0]))
            assert float(layer.rgba[0, 3, y, x]) > 0.4
    assert seen == {"foreground0", "foreground1", "background"}


def test_background_surfaces() -> None:
    bg, fg, _, _ = sources()
    plans = [sample_plan(np.random.default_rng(i), SIZE, bg, fg) for i in range(40)]
    for plan in plans:
        surface = background_surface(plan.background, SIZE)
        assert surface.shape == (SIZE, SIZE)
        assert float(surface.min()) == pytest.approx(0.0, abs=1e-6)
        assert float(surface.max()) == pytest.approx(plan.background.span, abs=1e-5)
        if plan.background.surface == "tilted":
            # A plane: constant second differences along rows and columns.
            assert np.abs(np.diff(surface, 2, axis=1)).max() < 1e-4
            assert np.abs(np.diff(surface, 2, axis=0)).max() < 1e-4


def test_cutout_keeps_its_colour_at_soft_edges() -> None:
    """Premultiplied resampling: no dark fringe where alpha is fractional."""
    _, fg, _, cutouts = sources()
    plan = sample_plan(np.random.default_rng(5), SIZE, sources()[0], fg)
    for f in plan.foregrounds:
        layer = place_cutout(f, cutouts[f.name], SIZE)
        edge = (layer[..., 3] > 0.05) & (layer[..., 3] < 0.95)
        assert edge.any()
        colour = layer[..., :3][edge]
        channel = 0 if f.name == "red.png" else 1
        expected = float(srgb_to_linear(torch.tensor(0.9 if channel == 0 else 0.8)))
        assert np.allclose(colour[:, channel], expected, rtol=1e-3)  # linear light, no fringe
        outside = layer[..., 3] == 0
        assert np.all(layer[..., :3][outside] == 0)


def test_describe_cutout_box_and_bottom_cut() -> None:
    alpha = np.zeros((40, 30), np.float32)
    alpha[10:40, 5:25] = 1.0  # touches the bottom edge: a person cut at the waist
    info = describe_cutout("p.png", alpha)
    assert info.box == (5, 10, 25, 40) and info.bottom_cut
    bg, _, _, _ = sources()
    plan = sample_plan(np.random.default_rng(0), SIZE, bg, [info])
    for f in plan.foregrounds:
        assert f.position[1] + f.size[1] == SIZE  # stands on the bottom edge
    floating = describe_cutout("d.png", soft_disk(20, 20, 6))
    assert not floating.bottom_cut
    with pytest.raises(MagicBokehError, match="empty"):
        describe_cutout("e.png", np.zeros((5, 5), np.float32))
