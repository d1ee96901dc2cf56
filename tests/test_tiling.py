"""Fast tile grids: counts, coverage, evenly spread aligned starts, blending weights, padding."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from magicbokeh.tiling import (  # noqa: E402
    blend_profiles,
    plan_tiles,
    reflect_pad,
    round_up,
    tile_grid,
    tile_starts,
)

RELEASED_COUNTS = {(3024, 4032): 165, (1024, 1562): 18}


@pytest.mark.parametrize(
    ("height", "width", "tile", "count"),
    [
        (3024, 4032, 512, 80),
        (3024, 4032, 768, 30),
        (1024, 1562, 512, 12),
        (1024, 1562, 768, 6),
        (512, 512, 512, 1),
        (300, 200, 512, 1),
        (1, 1, 512, 1),
    ],
)
def test_tile_counts_with_the_default_overlap(height, width, tile, count):
    plan = plan_tiles(height, width, tile, 96)
    assert plan.count == len(plan.positions) == count
    if (height, width) in RELEASED_COUNTS:
        assert count < RELEASED_COUNTS[(height, width)]


def test_a_4032x3024_photo_needs_at_most_half_the_released_tiles():
    from magicbokeh.pipeline import tile_positions

    released = len(tile_positions(3024, 4032))
    assert released == 165
    plan = plan_tiles(3024, 4032, 512, 96)
    assert plan.count * 2 <= released
    overlaps = {
        512 - (b - a)
        for starts in (plan.rows, plan.cols)
        for a, b in zip(starts, starts[1:], strict=False)
    }
    assert min(overlaps) >= 96  # the even spread turns the spare length into wider overlaps


def test_smaller_than_a_tile_is_one_padded_tile_with_sides_multiple_of_64():
    plan = plan_tiles(300, 200, 512, 64)
    assert (plan.tile_height, plan.tile_width) == (320, 256)
    assert (plan.padded_height, plan.padded_width) == (320, 256)
    assert plan.positions == [(0, 0)]
    assert torch.equal(plan.weight(0, 0), torch.ones(320, 256))


@pytest.mark.parametrize("length", [64, 72, 512, 520, 1000, 1568, 3024, 4032, 5000])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (128, 32), (512, 64), (768, 128)])
def test_starts_are_aligned_evenly_spread_and_overlap_enough(length, tile, overlap):
    length = max(round_up(length, 8), tile)
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(s % 8 == 0 for s in starts)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(tile - g >= overlap for g in gaps)  # every overlap is at least the minimum
    if gaps:
        assert max(gaps) - min(gaps) <= 8  # even spread: no thin border tile
        fewer = len(starts) - 1  # one tile less could not keep the minimum overlap
        assert math.ceil((length - tile) / (fewer - 1 or 1)) > tile - overlap or fewer == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        tile_starts(100, 64, 16)  # not a multiple of 8
    with pytest.raises(ValueError):
        tile_starts(56, 64, 16)  # shorter than a tile
    with pytest.raises(ValueError):
        tile_starts(512, 64, 64)  # overlap as large as the tile
    with pytest.raises(ValueError):
        plan_tiles(100, 100, 96, 16)  # tile not a multiple of 64


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(200, 300, 64, 16), (520, 1000, 128, 32), (1024, 1562, 512, 64), (384, 512, 128, 96)],
)
def test_every_pixel_is_covered_and_weights_sum_to_one(height, width, tile, overlap):
    plan = plan_tiles(height, width, tile, overlap)
    total = torch.zeros(plan.padded_height, plan.padded_width, dtype=torch.float64)
    covered = torch.zeros_like(total, dtype=torch.int32)
    for top, left in plan.positions:
        w = plan.weight(top, left)
        assert w.shape == (plan.tile_height, plan.tile_width)
        assert (w > 0).all() and (w <= 1).all()
        total[top : top + tile, left : left + tile] += w
        covered[top : top + tile, left : left + tile] += 1
    assert (covered >= 1).all()
    if covered.max() <= 2:  # two neighbours' raised-cosine ramps are a partition of unity
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)
    else:  # three tiles overlap somewhere: the pipeline's normalisation makes it 1
        assert (total > 0).all()
    normalised = torch.zeros_like(total)
    for top, left in plan.positions:
        w = plan.weight(top, left).double()
        normalised[top : top + tile, left : left + tile] += (
            w / total[top : top + tile, left : left + tile]
        )
    torch.testing.assert_close(normalised, torch.ones_like(total), atol=1e-9, rtol=0)


def test_profiles_are_raised_cosine_ramps_over_the_whole_overlap():
    starts = [0, 96, 192]
    profiles = blend_profiles(starts, 128)
    first, middle, last = profiles
    assert torch.equal(first[:96], torch.ones(96)) and first[-1] < 1e-3
    assert middle[0] < 1e-3 and middle[-1] < 1e-3 and middle[32:96].eq(1).all()
    assert last[0] < 1e-3 and torch.equal(last[32:], torch.ones(96))
    x = torch.arange(32, dtype=torch.float64)
    expected = torch.sin(math.pi / 2 * (x + 0.5) / 32) ** 2
    torch.testing.assert_close(middle[:32].double(), expected, atol=1e-6, rtol=0)
    # smooth: no step larger than the cosine's steepest slope
    assert (middle[1:] - middle[:-1]).abs().max() <= math.pi / (2 * 32) + 1e-6


def test_grid_is_row_major():
    grid = tile_grid(192, 320, 128, 128, 16)
    assert grid == [(0, 0), (0, 96), (0, 192), (64, 0), (64, 96), (64, 192)]


def test_reflect_pad_mirrors_without_repeating_the_edge_for_any_amount():
    x = torch.arange(3.0).view(1, 1, 1, 3).expand(1, 2, 2, 3)
    out = reflect_pad(x, 3, 10)
    assert out.shape == (1, 2, 3, 10)
    assert out[0, 0, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1]
    assert torch.equal(out[0, :, 2], out[0, :, 0])  # rows: 0, 1, then row 0 again
    single = reflect_pad(torch.full((1, 1, 1, 1), 7.0), 4, 5)
    assert torch.equal(single, torch.full((1, 1, 4, 5), 7.0))
    assert reflect_pad(x, 2, 3) is x
    with pytest.raises(ValueError):
        reflect_pad(x, 1, 3)
