"""Building blocks of the layered renderer: the push-pull fill restricted to the hidden area."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from magicbokeh.optics.blur import _push_pull_fill_whole, push_pull_fill  # noqa: E402


def _planes(height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.rand(1, 1, height, width, generator=gen) > 0.6).double()
    colour = torch.rand(1, 3, height, width, generator=gen, dtype=torch.float64) * weight
    return torch.cat([colour, weight], dim=1)


@pytest.mark.parametrize(
    ("box", "levels"),
    [
        ((20, 31, 40, 47), 3),  # inside
        ((0, 5, 0, 9), 3),  # at the top-left corner
        ((50, 64, 70, 96), 4),  # at the bottom-right corner
        ((30, 31, 2, 3), 2),  # one pixel
        ((0, 64, 0, 96), 3),  # everything hidden
    ],
)
def test_fill_near_the_hidden_area_equals_the_fill_of_the_whole(box, levels) -> None:
    planes = _planes(64, 96, seed=levels)
    hidden = torch.zeros(1, 1, 64, 96, dtype=torch.float64)
    y0, y1, x0, x1 = box
    hidden[..., y0:y1, x0:x1] = torch.rand(1, 1, y1 - y0, x1 - x0, dtype=torch.float64) + 0.1
    fast = push_pull_fill(planes, levels, hidden)
    whole = _push_pull_fill_whole(planes, levels, hidden)
    torch.testing.assert_close(fast, whole, rtol=0, atol=1e-15)
    outside = hidden.expand_as(planes) == 0
    assert torch.equal(fast[outside], planes[outside])


def test_fill_keeps_the_gradient() -> None:
    planes = _planes(32, 32, seed=1).requires_grad_(True)
    hidden = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    hidden[..., 8:12, 8:12] = 1.0
    push_pull_fill(planes, 2, hidden).sum().backward()
    assert planes.grad is not None and bool(torch.isfinite(planes.grad).all())
