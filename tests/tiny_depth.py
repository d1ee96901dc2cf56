"""Tiny Depth Anything V2 networks for tests: a random 4-layer model and the vectors' config.

``tiny_model()`` is a seeded random ``DepthAnythingForDepthEstimation`` whose output varies
with the image (weights ×0.15, a positive output bias keeps it above the final ReLU).
``vector_config(folder)`` is the transformers config equivalent to
``shared/vectors/depth_anything_tiny/config.json`` (non-standard tiny widths).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "depth_anything_tiny"


def vectors() -> Path:
    """The vectors folder, or skip the test when it is absent."""
    if not (VECTORS / "original.pth").is_file():
        pytest.skip(f"Depth Anything test vectors not found at {VECTORS}")
    return VECTORS


def vector_config(folder: Path) -> DepthAnythingConfig:
    """transformers config equivalent to the vectors' config.json (non-standard tiny widths)."""
    spec = json.loads((folder / "config.json").read_text())
    encoder, head = spec["encoder"], spec["head"]
    backbone = Dinov2Config(
        hidden_size=encoder["embed_dim"],
        num_hidden_layers=encoder["depth"],
        num_attention_heads=encoder["num_heads"],
        mlp_ratio=encoder["mlp_ratio"],
        image_size=encoder["pretrain_img_size"],
        patch_size=encoder["patch_size"],
        layer_norm_eps=encoder["layer_norm_eps"],
        layerscale_value=encoder["layer_scale_init"],
        out_indices=[i + 1 for i in encoder["intermediate_layer_indices"]],
        apply_layernorm=encoder["intermediate_outputs_normed"],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=encoder["patch_size"],
        reassemble_hidden_size=encoder["embed_dim"],
        reassemble_factors=head["reassemble_factors"],
        neck_hidden_sizes=head["out_channels"],
        fusion_hidden_size=head["features"],
        head_hidden_size=head["head_hidden"],
        depth_estimation_type="relative",
        max_depth=1,
    )


def tiny_config() -> DepthAnythingConfig:
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=518,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )


def tiny_model(seed: int = 0) -> DepthAnythingForDepthEstimation:
    """A seeded random tiny model in eval mode."""
    model = DepthAnythingForDepthEstimation(tiny_config())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15)
        model.head.conv3.bias.fill_(5.0)
    return model.eval()
