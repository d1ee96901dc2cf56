"""Depth Anything V2 on transformers: checkpoint conversion, preprocessing and output conventions.

The vector tests reproduce what the original DA-V2 code computes for a tiny random network
(``shared/vectors/depth_anything_tiny``); the others use a random tiny config built here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from transformers import DepthAnythingForDepthEstimation  # noqa: E402

from magicbokeh.depth.convert_depth_anything import (  # noqa: E402
    SIZES,
    build_model,
    convert_checkpoint,
    convert_original_state_dict,
    infer_size,
    load_original_state_dict,
    main,
    make_config,
)
from magicbokeh.depth.depth_anything import (  # noqa: E402
    DepthAnythingEstimator,
    network_size,
    preprocess,
    resize_cubic,
)
from magicbokeh.errors import MagicBokehError  # noqa: E402
from tiny_depth import tiny_config, tiny_model, vector_config, vectors  # noqa: E402

RAW_ATOL = 1e-4  # network output and upsampled depth reach ~6
NORM_ATOL = 2e-5  # min-max normalised disparity in [0, 1]


@pytest.fixture(scope="module")
def vector_estimator() -> DepthAnythingEstimator:
    folder = vectors()
    state_dict = load_original_state_dict(folder / "original.pth")
    return DepthAnythingEstimator(build_model(state_dict, vector_config(folder)))


def read_png(path: Path, dtype: torch.dtype) -> torch.Tensor:
    """8-bit RGB PNG → sRGB ``1×3×H×W`` in [0, 1]."""
    rgb = np.array(Image.open(path).convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dtype) / 255.0


@pytest.fixture(scope="module")
def tiny_estimator() -> DepthAnythingEstimator:
    return DepthAnythingEstimator(tiny_model(), batch_size=2)


# --- preprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((300, 330), (518, 574)),  # the vectors' image: upscaled, long side rounded
        ((518, 518), (518, 518)),
        ((1000, 2000), (518, 1036)),  # shrunk: shorter side to 518
        ((2000, 700), (1484, 518)),
        ((100, 2000), (518, 10360)),
        ((518, 525), (518, 532)),  # 525/14 = 37.5 rounds half to even → 38·14
        ((518, 539), (518, 532)),  # 539/14 = 38.5 → 38·14
        ((518, 530), (518, 532)),
    ],
)
def test_network_size_follows_lower_bound_rule(size, expected) -> None:
    assert network_size(*size) == expected


@pytest.mark.parametrize(("height", "width"), [(31, 45), (90, 60), (20, 20)])
def test_resize_cubic_matches_opencv(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    image = rng.uniform(0.0, 1.0, (37, 53, 3))
    reference = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    ours = resize_cubic(torch.from_numpy(image).permute(2, 0, 1)[None], (height, width))
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), reference, rtol=0, atol=1e-12)


def test_preprocess_reproduces_vector_input_exactly() -> None:
    folder = vectors()
    expected = np.load(folder / "input_tensor.npy")
    pixel_values = preprocess(read_png(folder / "input.png", torch.float64))
    assert pixel_values.shape == expected.shape
    np.testing.assert_array_equal(pixel_values.float().numpy(), expected)


# --- conversion and the vectors ----------------------------------------------------------------


def test_converted_network_reproduces_expected_raw(vector_estimator) -> None:
    folder = vectors()
    pixel_values = torch.from_numpy(np.load(folder / "input_tensor.npy"))
    raw = vector_estimator.predict_raw(pixel_values)
    expected = np.load(folder / "expected_raw.npy")
    assert raw.shape == expected.shape
    np.testing.assert_allclose(raw.numpy(), expected, rtol=0, atol=RAW_ATOL)
    assert (raw == 0).float().mean() > 0.005  # the final ReLU clips part of the map


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_full_inference_reproduces_expected_depth_and_norm(vector_estimator, dtype) -> None:
    folder = vectors()
    image = read_png(folder / "input.png", dtype)
    depth = vector_estimator.disparity(image, normalise=False)
    norm = vector_estimator(image)
    assert depth.shape == norm.shape == (1, 1, 300, 330)
    np.testing.assert_allclose(
        depth[0, 0].numpy(), np.load(folder / "expected_depth.npy"), rtol=0, atol=RAW_ATOL
    )
    np.testing.assert_allclose(
        norm[0, 0].numpy(), np.load(folder / "expected_norm.npy"), rtol=0, atol=NORM_ATOL
    )


def test_converted_folder_round_trips(vector_estimator, tmp_path: Path) -> None:
    folder = vectors()
    out = convert_checkpoint(folder / "original.pth", tmp_path / "da", config=vector_config(folder))
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    reloaded = DepthAnythingEstimator.from_pretrained(out, device="cpu")
    image = read_png(folder / "input.png", torch.float32)
    assert torch.equal(reloaded(image), vector_estimator(image))


def test_original_file_loads_directly_with_config(vector_estimator, tmp_path: Path) -> None:
    folder = vectors()
    state_dict = load_original_state_dict(folder / "original.pth")
    bare = tmp_path / "bare.pth"
    torch.save(state_dict, bare)  # a bare state dict without "model" or "module."
    again = load_original_state_dict(bare)
    assert again.keys() == state_dict.keys()
    assert all(torch.equal(again[k], state_dict[k]) for k in state_dict)
    with pytest.raises(MagicBokehError, match="matches no released"):
        DepthAnythingEstimator.from_pretrained(bare, device="cpu")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda sd: sd.update({"module.depth_head.extra.weight": torch.zeros(3)}), "extra.weight"),
        (
            lambda sd: sd.update({"module.pretrained.norm.weight": torch.zeros(65)}),
            "backbone.layernorm.weight",
        ),
        (lambda sd: sd.pop("module.depth_head.scratch.layer2_rn.weight"), "neck.convs.1.weight"),
    ],
    ids=["unknown-key", "wrong-shape", "missing-key"],
)
def test_tampered_checkpoint_is_refused(tmp_path: Path, tamper, message) -> None:
    folder = vectors()
    checkpoint = torch.load(folder / "original.pth", map_location="cpu", weights_only=True)
    tamper(checkpoint["model"])
    path = tmp_path / "tampered.pth"
    torch.save(checkpoint, path)
    state_dict = load_original_state_dict(path)
    with pytest.raises(MagicBokehError, match=message):
        convert_original_state_dict(state_dict, vector_config(folder))
    assert main([str(path), str(tmp_path / "out"), "--size", "vits"]) == 2
    assert not (tmp_path / "out" / "model.safetensors").exists()


class _Opaque:
    pass


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "object.pth"
    torch.save({"model": {"pretrained.cls_token": torch.zeros(1, 1, 4)}, "extra": _Opaque()}, path)
    with pytest.raises(MagicBokehError, match="plain tensor checkpoint"):
        load_original_state_dict(path)


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", sorted(SIZES))
def test_infer_size_from_shapes(size: str) -> None:
    spec = SIZES[size]
    state_dict = {"pretrained.cls_token": torch.empty(1, 1, spec.hidden_size, device="meta")}
    for i in range(spec.num_layers):
        state_dict[f"pretrained.blocks.{i}.norm1.weight"] = torch.empty(spec.hidden_size)
    assert infer_size(state_dict) == size
    config = make_config(size)
    assert config.backbone_config.out_indices == [i + 1 for i in spec.intermediate_layers]
    assert config.neck_hidden_sizes == list(spec.out_channels)
    assert config.backbone_config.use_swiglu_ffn == (size == "vitg")


# --- loading errors ------------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="does not exist"):
        DepthAnythingEstimator.from_pretrained(tmp_path / "nowhere", device="cpu")
    with pytest.raises(MagicBokehError, match="DAdepth.pth not found"):
        DepthAnythingEstimator.from_pretrained(tmp_path / "DAdepth.pth", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MagicBokehError, match="config.json"):
        DepthAnythingEstimator.from_pretrained(empty, device="cpu")
    tiny_config().save_pretrained(empty)
    with pytest.raises(MagicBokehError, match=r"model\.safetensors.*hf download"):
        DepthAnythingEstimator.from_pretrained(empty, device="cpu")


def test_models_that_are_not_depth_anything_are_refused(tmp_path: Path) -> None:
    from transformers import Dinov2Model

    backbone = Dinov2Model(tiny_config().backbone_config)
    backbone.save_pretrained(tmp_path / "dinov2")
    with pytest.raises(MagicBokehError, match="'dinov2' model, not Depth Anything V2"):
        DepthAnythingEstimator.from_pretrained(tmp_path / "dinov2", device="cpu")
    # A Depth Anything config over another model's weights is refused, not randomly filled.
    tiny_config().save_pretrained(tmp_path / "dinov2")
    with pytest.raises(MagicBokehError, match="lacks .* Depth Anything V2 weights"):
        DepthAnythingEstimator.from_pretrained(tmp_path / "dinov2", device="cpu")


# --- conventions on a random tiny model ----------------------------------------------------------


def test_output_conventions(tiny_estimator) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 40, 56, generator=generator)
    disparity = tiny_estimator(images)
    assert disparity.shape == (2, 1, 40, 56)
    assert disparity.dtype == torch.float32
    assert torch.all(disparity >= 0) and torch.all(disparity <= 1)
    for single in disparity:
        assert single.min() == 0 and single.max() > 1 - 1e-6
    singles = torch.cat([tiny_estimator(images[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(disparity, singles, rtol=0, atol=1e-5)


def test_output_is_the_network_disparity_not_inverted(tiny_estimator) -> None:
    images = torch.rand(1, 3, 50, 36, generator=torch.Generator().manual_seed(2))
    raw = tiny_estimator.predict_raw(preprocess(images))
    assert raw.shape == (1, *network_size(50, 36))
    depth = torch.nn.functional.interpolate(
        raw[:, None], size=(50, 36), mode="bilinear", align_corners=True
    )
    expected = (depth - depth.min()) / (depth.max() - depth.min() + 1e-8)
    torch.testing.assert_close(tiny_estimator(images), expected, rtol=0, atol=1e-6)


def test_chunking_does_not_change_results(tiny_estimator) -> None:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    one_at_a_time = DepthAnythingEstimator(tiny_estimator.model, batch_size=1)
    torch.testing.assert_close(one_at_a_time(images), tiny_estimator(images), rtol=0, atol=1e-5)


def test_bfloat16_model_gives_float32_disparity(tiny_estimator) -> None:
    model = DepthAnythingForDepthEstimation(tiny_config())
    model.load_state_dict(tiny_estimator.model.state_dict())
    estimator = DepthAnythingEstimator(model.to(torch.bfloat16))
    images = torch.rand(1, 3, 30, 40, generator=torch.Generator().manual_seed(4))
    low = estimator(images)
    assert low.dtype == torch.float32 and low.shape == (1, 1, 30, 40)
    reference = tiny_estimator(images)
    assert torch.corrcoef(torch.stack([low.flatten(), reference.flatten()]))[0, 1] > 0.99
    assert (low - reference).abs().max() < 0.1


@pytest.mark.parametrize(
    "images",
    [torch.rand(1, 1, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(0, 3, 8, 8)],
    ids=["one-channel", "uint8", "empty"],
)
def test_bad_images_are_refused(tiny_estimator, images) -> None:
    with pytest.raises(MagicBokehError):
        tiny_estimator(images)


# --- depth auto ----------------------------------------------------------------------------------


def test_depth_auto_uses_an_installed_depth_model(
    tiny_estimator: DepthAnythingEstimator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from magicbokeh.depth.resolve import resolve_depth

    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path))
    rgb = np.random.default_rng(0).uniform(size=(40, 56, 3)).astype(np.float32)
    assert resolve_depth("auto", rgb).source == "heuristic"
    tiny_estimator.model.save_pretrained(tmp_path / "depth-anything-v2")
    resolved = resolve_depth("auto", rgb)
    assert resolved.source == "model:depth-anything-v2" and resolved.warning is None
    expected = tiny_estimator(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy()
    np.testing.assert_allclose(resolved.disparity, expected, atol=1e-6)
    # The degradation-aware model that ships with MagicBokeh is preferred.
    tiny_estimator.model.save_pretrained(tmp_path / "magicbokeh" / "depth")
    assert resolve_depth("auto", rgb).source == "model:magicbokeh/depth"
