"""Fast mode: seamless tiling, batched tiles with per-tile focus masks, padding, colour fix,
VAE sampling, dtypes and out-of-memory retries, with tiny random-init networks on small images."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from torch import nn  # noqa: E402

import magicbokeh.pipeline as pipeline_module  # noqa: E402
import magicbokeh.tiling as tiling  # noqa: E402
from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.model.network import MagicBokehNetwork  # noqa: E402
from magicbokeh.pipeline import MagicBokehOutput, MagicBokehPipeline  # noqa: E402
from tiny_models import tiny_network  # noqa: E402

VAE_LEVELS = 4  # VAE /8: tiles are multiples of 64, as for the real model


class PixelNorm(nn.Module):
    """Normalise over the channels of each pixel (keeps a GroupNorm's affine weights)."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(1, keepdim=True)) / (
            x.var(1, keepdim=True, unbiased=False) + self.eps
        ).sqrt()
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


def local_network() -> MagicBokehNetwork:
    """The tiny network made strictly local: GroupNorm (statistics over the whole tile) becomes a
    per-pixel norm and every attention layer adds nothing (its output projection is zero). Its
    output at a pixel then depends only on a neighbourhood, so one tile covering a small image is
    an exact reference and every difference of a tiled render comes from tile edges."""
    net = tiny_network(VAE_LEVELS)
    modules = dict(net.named_modules())
    for name, module in list(modules.items()):
        if isinstance(module, nn.GroupNorm):
            parent, _, attr = name.rpartition(".")
            setattr(modules[parent], attr, PixelNorm(module))
    with torch.no_grad():
        for name, module in net.named_modules():
            in_unet_attention = ".attentions." in name and name.endswith("proj_out")
            if in_unet_attention or (name.startswith("vae.") and name.endswith("to_out.0")):
                module.weight.zero_()
                module.bias.zero_()
    return net


@pytest.fixture(scope="module")
def pipe() -> MagicBokehPipeline:
    return MagicBokehPipeline(tiny_network(VAE_LEVELS))


def scene(height: int, width: int, batch: int = 1):
    """Smooth colour gradients and a left-to-right disparity ramp (sRGB [0, 1], d in [0, 1])."""
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    image = torch.stack(
        [0.5 + 0.3 * torch.sin(2.2 * x + 0.5), 0.2 + 0.6 * y, 0.4 + 0.2 * torch.cos(1.7 * (x + y))]
    )
    disparity = (0.15 + 0.7 * x)[None]
    return image.expand(batch, -1, -1, -1).clone(), disparity.expand(batch, -1, -1, -1).clone()


class IdentityNetwork(nn.Module):
    """Returns its image input: the pipeline must then give back the input exactly."""

    latent_scale = 8

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[int, ...]] = []

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def forward(self, image, defocus, focus_mask, latent_noise=None):
        self.calls.append(tuple(image.shape))
        assert defocus.shape[-2:] == focus_mask.shape[-2:] == image.shape[-2:]
        return image


# ------------------------------------------------------------------------------------ seams
def seam_report(
    out: MagicBokehOutput, reference: MagicBokehOutput, band: int = 4, width: int | None = None
) -> dict:
    """Seam measures of a tiled render against the one-tile reference, with e = out − reference:

    ``near``/``elsewhere``: mean |e| within ``band`` pixels of a tile-edge line / everywhere else;
    ``worst_step``: over all tile-edge lines, the mean |e| step between the two pixel columns
    (rows) on either side of the line, divided by the median of the same step over the columns
    (rows) within 16 pixels of the line. A seam is a step at the line itself: ≫ 1.
    Only the first ``width`` columns are measured.
    """
    height, full_width = out.blended.shape[-2:]
    width = width or full_width
    error = (out.blended - reference.blended)[0, :, :, :width]
    tile_h, tile_w = out.tile_size
    rows = sorted({top for top, _ in out.tile_positions})
    cols = sorted({left for _, left in out.tile_positions})
    row_lines = sorted(
        {r for r in rows if r > 0} | {r + tile_h for r in rows if r + tile_h < height}
    )
    col_lines = sorted(
        {c for c in cols if c > 0} | {c + tile_w for c in cols if c + tile_w < width}
    )
    near = torch.zeros(height, width, dtype=torch.bool)
    for r in row_lines:
        near[r - band : r + band] = True
    for c in col_lines:
        near[:, c - band : c + band] = True
    magnitude = error.abs().mean(0)
    col_steps = (error[:, :, 1:] - error[:, :, :-1]).abs().mean((0, 1))  # [c−1]: c−1 → c
    row_steps = (error[:, 1:] - error[:, :-1]).abs().mean((0, 2))

    def step_ratio(steps: torch.Tensor, line: int, window: int = 16) -> float:
        around = [i for i in range(line - 1 - window, line + window) if abs(i - line + 1) > 1]
        around = [i for i in around if 0 <= i < len(steps)]
        return (steps[line - 1] / steps[around].median()).item()

    ratios = [step_ratio(col_steps, c) for c in col_lines]
    ratios += [step_ratio(row_steps, r) for r in row_lines]
    return {
        "lines": len(row_lines) + len(col_lines),
        "near": magnitude[near].mean().item(),
        "elsewhere": magnitude[~near].mean().item(),
        "worst_step": max(ratios),
    }


@pytest.fixture(scope="module")
def seam_renders():
    """A 320×928 scene: two 512 tiles overlapping by exactly the default minimum (96 px). The
    one-tile reference is 960 wide (reflect-padded), so the last 128 columns are not compared."""
    local = MagicBokehPipeline(local_network())
    image, disparity = scene(320, 928)
    kwargs = {"focus_disparity": 0.5, "aperture": 32, "progress": False, "color_fix": "none"}
    reference = local(image, disparity, tile_size=1024, **kwargs)
    tiled = local(image, disparity, **kwargs)
    return local, image, disparity, kwargs, reference, tiled


def test_tiled_render_has_no_seams(seam_renders):
    *_, reference, tiled = seam_renders
    assert reference.tile_count == 1 and reference.tile_size == (320, 960)
    assert tiled.tile_positions == [(0, 0), (0, 416)] and tiled.tile_size == (320, 512)
    report = seam_report(tiled, reference, width=800)
    assert report["lines"] == 2
    # the tiles differ from the reference (tile-edge effects reach into the overlap), but not
    # more near the tile edges than elsewhere, and nothing steps across a tile-edge line
    assert report["elsewhere"] > 1e-3
    assert report["near"] <= 1.25 * report["elsewhere"]
    assert report["worst_step"] <= 2.0


def test_seam_check_catches_tiles_blended_without_ramps(seam_renders, monkeypatch):
    local, image, disparity, kwargs, reference, _ = seam_renders
    monkeypatch.setattr(
        tiling, "blend_profiles", lambda starts, tile: [torch.ones(tile)] * len(starts)
    )
    report = seam_report(local(image, disparity, **kwargs), reference, width=800)
    assert report["worst_step"] > 2.0
    assert report["near"] > 1.25 * report["elsewhere"]


# ------------------------------------------------------------------------- tiles and batches
def test_fast_is_the_default_with_fewer_tiles_than_released(pipe):
    image, disparity = scene(128, 192)
    out = pipe(image, disparity, 0.5, 32, tile_size=64, progress=False)
    assert out.images.shape == out.blended.shape == (1, 3, 128, 192)
    assert out.tile_size == (64, 64)
    assert out.tile_positions == [(t, left) for t in (0, 32, 64) for left in (0, 40, 88, 128)]
    assert out.tile_count == 12
    assert out.blended.abs().max() <= 1 and out.images.min() >= 0 and out.images.max() <= 1
    expected_defocus = (disparity - 0.5).abs()
    torch.testing.assert_close(out.defocus, expected_defocus, atol=1e-6, rtol=0)
    assert torch.equal(out.focus_mask, ~(expected_defocus > 0.1))


def test_batched_tiles_equal_one_tile_per_call(pipe):
    image, disparity = scene(128, 192, batch=2)
    disparity[1] = disparity[1].flip(-1)  # the second image's masks differ tile by tile
    single = pipe(image, disparity, [0.5, 0.3], 32, tile_size=64, tile_batch_size=1, progress=False)
    batched = pipe(
        image, disparity, [0.5, 0.3], 32, tile_size=64, tile_batch_size=5, progress=False
    )
    assert single.focus_mask[0].any() and not single.focus_mask[0].all()
    assert not torch.equal(single.focus_mask[0], single.focus_mask[1])
    torch.testing.assert_close(batched.blended, single.blended, atol=1e-4, rtol=0)


def test_per_tile_focus_masks_reach_the_attention(pipe, monkeypatch):
    image, disparity = scene(64, 128)
    masked = pipe(image, disparity, 0.5, 32, tile_size=64, progress=False)
    # the same defocus input with an all-in-focus mask (no attention masking) must differ
    network = pipe.network
    original = network.forward

    def all_in_focus(image, defocus, focus_mask, **kwargs):
        return original(image, defocus, torch.ones_like(focus_mask), **kwargs)

    monkeypatch.setattr(network, "forward", all_in_focus)
    unmasked = pipe(image, disparity, 0.5, 32, tile_size=64, progress=False)
    assert (masked.blended - unmasked.blended).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["fast", "released"])
def test_small_images_are_padded_and_cropped(mode):
    identity = MagicBokehPipeline(IdentityNetwork())
    image, disparity = scene(37, 90)
    image = image + 0.2 * torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    image = image.clamp(0, 1)
    out = identity(image, disparity, 0.5, 32, mode=mode, tile_size=None, progress=False)
    assert out.blended.shape == (1, 3, 37, 90)
    torch.testing.assert_close(out.blended, image * 2 - 1, atol=1e-6, rtol=0)
    tile = (512, 512) if mode == "released" else (64, 128)
    assert identity.network.calls == [(1, 3, *tile)]


def test_identity_network_is_reproduced_through_many_overlapping_tiles():
    identity = MagicBokehPipeline(IdentityNetwork())
    image = torch.rand(2, 3, 200, 300, generator=torch.Generator().manual_seed(1))
    disparity = torch.rand(2, 1, 200, 300, generator=torch.Generator().manual_seed(2))
    out = identity(image, disparity, 0.4, 20, tile_size=64, tile_batch_size=7, progress=False)
    assert out.tile_count == 4 * 6
    torch.testing.assert_close(out.blended, image * 2 - 1, atol=1e-5, rtol=0)
    assert max(call[0] for call in identity.network.calls) == 7


# ----------------------------------------------------------------------- colour fix, sampling
def test_colour_fix_choices(pipe):
    image, disparity = scene(64, 64)
    kwargs = {"tile_size": 64, "progress": False}
    none = pipe(image, disparity, 0.5, 32, color_fix="none", **kwargs)
    torch.testing.assert_close(none.images, (none.blended * 0.5 + 0.5).clamp(0, 1))
    wavelet = pipe(image, disparity, 0.5, 32, **kwargs)  # fast default
    adain = pipe(image, disparity, 0.5, 32, color_fix="adain", **kwargs)
    assert not torch.equal(wavelet.images, adain.images)
    assert not torch.equal(wavelet.images, (wavelet.images * 255).round() / 255)  # no truncation
    # the wavelet fix pulls the output's colours towards the input's
    assert (wavelet.images - image).abs().mean() < (none.images - image).abs().mean()


def test_vae_sampling_is_seeded_and_independent_of_the_tile_batch(pipe):
    image, disparity = scene(64, 128)
    kwargs = {"tile_size": 64, "progress": False, "vae_sample": True}
    first = pipe(image, disparity, 0.5, 32, generator=torch.Generator().manual_seed(3), **kwargs)
    again = pipe(
        image,
        disparity,
        0.5,
        32,
        tile_batch_size=1,
        generator=torch.Generator().manual_seed(3),
        **kwargs,
    )
    other = pipe(image, disparity, 0.5, 32, generator=torch.Generator().manual_seed(4), **kwargs)
    mode = pipe(image, disparity, 0.5, 32, tile_size=64, progress=False)
    torch.testing.assert_close(first.blended, again.blended, atol=1e-4, rtol=0)
    assert (first.blended - other.blended).abs().max() > 1e-3
    assert (first.blended - mode.blended).abs().max() > 1e-3


# ------------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_finite_and_close_to_float32(pipe, tmp_path, dtype):
    image, disparity = scene(64, 128)
    ref = pipe(image, disparity, 0.5, 32, tile_size=64, progress=False)
    pipe.save_pretrained(tmp_path / "model")
    loaded = MagicBokehPipeline.from_pretrained(tmp_path / "model", torch_dtype=dtype, device="cpu")
    moved = MagicBokehPipeline.from_pretrained(tmp_path / "model").to("cpu", dtype)
    assert loaded.dtype == moved.dtype == dtype
    for low in (loaded, moved):
        out = low(image, disparity, 0.5, 32, tile_size=64, progress=False)
        assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
        # random weights amplify rounding (x0 ≈ 14.6·(z − ε)); the stated bound: mean |Δ| < 0.05
        assert (out.images - ref.images).abs().mean() < 0.05
    with pytest.raises(MagicBokehError, match="dtype"):
        moved.to(dtype=torch.int8)


# ------------------------------------------------------------------------------ out of memory
def fail_when(monkeypatch, network, too_big, error=None):
    """Make ``network.forward`` raise an out-of-memory error when ``too_big(image)``."""
    original = network.forward
    calls = []

    def forward(image, *args, **kwargs):
        calls.append(tuple(image.shape))
        if too_big(image):
            raise error or torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2 GiB"
            )
        return original(image, *args, **kwargs)

    monkeypatch.setattr(network, "forward", forward)
    return calls


def test_out_of_memory_halves_the_tile_batch_and_gives_the_batch_one_result(pipe, monkeypatch):
    image, disparity = scene(128, 128)
    expected = pipe(image, disparity, 0.5, 32, tile_size=64, tile_batch_size=1, progress=False)
    calls = fail_when(monkeypatch, pipe.network, lambda x: x.shape[0] > 1)
    out = pipe(image, disparity, 0.5, 32, tile_size=64, tile_batch_size=4, progress=False)
    assert [c[0] for c in calls[:3]] == [4, 2, 1]
    assert all(c[0] == 1 for c in calls[3:]) and len(calls) == 2 + out.tile_count
    assert torch.equal(out.blended, expected.blended)
    assert torch.equal(out.images, expected.images)


def test_out_of_memory_falls_back_to_smaller_tiles(pipe, monkeypatch):
    monkeypatch.setattr(pipeline_module, "FALLBACK_TILE_SIZES", (64,))
    image, disparity = scene(128, 192)
    expected = pipe(image, disparity, 0.5, 32, tile_size=64, tile_overlap=32, progress=False)
    calls = fail_when(monkeypatch, pipe.network, lambda x: x.shape[-1] > 64)
    out = pipe(image, disparity, 0.5, 32, tile_size=128, tile_batch_size=2, progress=False)
    assert calls[:2] == [(2, 3, 128, 128), (1, 3, 128, 128)]
    assert out.tile_size == (64, 64) and out.tile_positions == expected.tile_positions
    torch.testing.assert_close(out.blended, expected.blended, atol=1e-4, rtol=0)


def test_out_of_memory_everywhere_is_a_clear_error(monkeypatch):
    identity = MagicBokehPipeline(IdentityNetwork())
    fail_when(
        monkeypatch, identity.network, lambda x: True, RuntimeError("MPS backend out of memory")
    )
    image, disparity = scene(64, 64)
    with pytest.raises(MagicBokehError, match="out of memory.*64×64 tile"):
        identity(image, disparity, 0.5, 32, tile_size=64, progress=False)
    with pytest.raises(MagicBokehError, match="out of memory.*512×512 tile"):
        identity(image, disparity, 0.5, 32, mode="released", progress=False)


def test_other_runtime_errors_are_not_retried(monkeypatch):
    identity = MagicBokehPipeline(IdentityNetwork())
    calls = fail_when(monkeypatch, identity.network, lambda x: True, RuntimeError("shape mismatch"))
    image, disparity = scene(64, 64)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        identity(image, disparity, 0.5, 32, tile_size=64, tile_batch_size=4, progress=False)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "turbo"}, "mode"),
        ({"tile_size": 96}, "multiple of 64"),
        ({"tile_size": 0}, "multiple of 64"),
        ({"tile_overlap": 12}, "tile_overlap"),
        ({"tile_size": 128, "tile_overlap": 72}, "tile_overlap"),
        ({"color_fix": "histogram"}, "colour fix"),
        ({"mode": "released", "tile_size": 768}, "released mode"),
        ({"tile_batch_size": 0}, "tile_batch_size"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    identity = MagicBokehPipeline(IdentityNetwork())
    image, disparity = scene(64, 64)
    with pytest.raises(MagicBokehError, match=match):
        identity(image, disparity, 0.5, 32, progress=False, **kwargs)


@pytest.mark.parametrize("bad", ["aperture", "focus", "disparity"])
def test_non_finite_inputs_are_refused(pipe, bad):
    image, disparity = scene(64, 64)
    aperture, focus = 16.0, 0.5
    if bad == "aperture":
        aperture = float("nan")
    elif bad == "focus":
        focus = float("inf")
    else:
        disparity = disparity.clone()
        disparity[0, 0, 3, 3] = float("nan")
    with pytest.raises(MagicBokehError, match="finite|NaN"):
        pipe(image, disparity, focus, aperture, progress=False)
