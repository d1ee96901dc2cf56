"""Convert original Depth Anything V2 checkpoints to transformers' Depth Anything layout.

Input: a ``torch.save`` file holding ``{"model": state_dict}`` (MagicBokeh's ``DAdepth.pth``, a
DA-V2 ``metric_depth`` training checkpoint) or a bare state dict (``depth_anything_v2_vitl.pth``),
keys optionally prefixed ``module.`` (DDP), in the original layout: ``pretrained.*`` (DINOv2 ViT
encoder) and ``depth_head.*`` (DPT head). Output: a transformers folder (``config.json`` +
``model.safetensors``) that :class:`~magicbokeh.depth.depth_anything.DepthAnythingEstimator` and
``DepthAnythingForDepthEstimation.from_pretrained`` load.

Files are read with ``torch.load(..., weights_only=True)``: only tensors and plain containers are
accepted, never arbitrary pickled classes. A training checkpoint that also pickles an optimizer
state still loads (those are plain dicts and tensors); one that pickles custom objects is refused,
and must be re-saved as a plain state dict where it was made.

Command line:
``python -m magicbokeh.depth.convert_depth_anything DAdepth.pth OUT_DIR [--size vitl]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import require

if TYPE_CHECKING:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation


@dataclass(frozen=True)
class ModelSize:
    """Architecture numbers of one released Depth Anything V2 size."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_layers: tuple[int, int, int, int]
    """0-based encoder blocks feeding the DPT head."""
    features: int
    out_channels: tuple[int, int, int, int]
    swiglu: bool = False


SIZES: dict[str, ModelSize] = {
    "vits": ModelSize(384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": ModelSize(768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": ModelSize(1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "vitg": ModelSize(1536, 40, 24, (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536), swiglu=True),
}

_BLOCK_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.o_proj",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w3": "mlp.down_proj",
}
_FUSION_RENAMES = {
    "out_conv": "projection",
    "resConfUnit1.conv1": "residual_layer1.convolution1",
    "resConfUnit1.conv2": "residual_layer1.convolution2",
    "resConfUnit2.conv1": "residual_layer2.convolution1",
    "resConfUnit2.conv2": "residual_layer2.convolution2",
}
_EMBEDDING_RENAMES = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "pretrained.norm.weight": "backbone.layernorm.weight",
    "pretrained.norm.bias": "backbone.layernorm.bias",
    "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
    "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
    "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
    "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
    "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
    "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
}
_BLOCK = re.compile(r"pretrained\.blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$")
_PROJECT = re.compile(r"depth_head\.projects\.(\d)\.(weight|bias)$")
_RESIZE = re.compile(r"depth_head\.resize_layers\.(\d)\.(weight|bias)$")
_LAYER_RN = re.compile(r"depth_head\.scratch\.layer(\d)_rn\.weight$")
_REFINENET = re.compile(r"depth_head\.scratch\.refinenet(\d)\.(.+)\.(weight|bias)$")


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original-format checkpoint and return its state dict without ``module.`` prefixes.

    Accepts ``{"model": state_dict, ...}`` or a bare state dict. Loaded with
    ``weights_only=True`` on CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise MagicBokehError(
            f"Depth Anything checkpoint {path} not found; pass the .pth file path"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MagicBokehError(
            f"cannot read {path} as a plain tensor checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); re-save it as "
            "torch.save(model.state_dict()) where it was made"
        ) from error
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not state_dict:
        raise MagicBokehError(
            f"{path} holds no state dict (expected {{'model': state_dict}} or a state dict)"
        )
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise MagicBokehError(f"{path}: entry {key!r} is not a tensor; expected a state dict")
        tensors[key.removeprefix("module.")] = value
    return tensors


def infer_size(state_dict: dict[str, torch.Tensor]) -> str:
    """Released size (``vits``/``vitb``/``vitl``/``vitg``) of an original state dict, from shapes.

    Uses the embedding width (``pretrained.cls_token``) and the number of encoder blocks.
    """
    if "pretrained.cls_token" not in state_dict:
        raise MagicBokehError(
            "state dict has no 'pretrained.cls_token'; it is not an original Depth Anything V2 "
            "checkpoint"
        )
    hidden = state_dict["pretrained.cls_token"].shape[-1]
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k))}
    for name, size in SIZES.items():
        if size.hidden_size == hidden and size.num_layers == len(blocks):
            return name
    raise MagicBokehError(
        f"embedding width {hidden} with {len(blocks)} blocks matches no released Depth Anything V2 "
        "size; pass an explicit DepthAnythingConfig"
    )


def make_config(
    size: str, state_dict: dict[str, torch.Tensor] | None = None
) -> DepthAnythingConfig:
    """transformers ``DepthAnythingConfig`` for a released size.

    When ``state_dict`` is given, the DPT head widths (features, out_channels) and the
    pretraining image size are read from it, so checkpoints trained with other head widths
    convert too.
    """
    from transformers import DepthAnythingConfig, Dinov2Config

    if size not in SIZES:
        raise MagicBokehError(f"unknown Depth Anything size {size!r}; use one of {sorted(SIZES)}")
    spec = SIZES[size]
    features, out_channels, image_size, patch = spec.features, spec.out_channels, 518, 14
    if state_dict is not None:
        try:
            out_channels = tuple(
                state_dict[f"depth_head.projects.{j}.weight"].shape[0] for j in range(4)
            )
            features = state_dict["depth_head.scratch.layer1_rn.weight"].shape[0]
            patch = state_dict["pretrained.patch_embed.proj.weight"].shape[-1]
            tokens = state_dict["pretrained.pos_embed"].shape[1] - 1
        except KeyError as error:
            raise MagicBokehError(
                f"state dict lacks {error.args[0]!r}; it is not an original Depth Anything V2 "
                "checkpoint"
            ) from error
        image_size = round(tokens**0.5) * patch
    backbone = Dinov2Config(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        mlp_ratio=4,
        image_size=image_size,
        patch_size=patch,
        layerscale_value=1.0,
        use_swiglu_ffn=spec.swiglu,
        out_indices=[i + 1 for i in spec.intermediate_layers],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=patch,
        reassemble_hidden_size=spec.hidden_size,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(out_channels),
        fusion_hidden_size=features,
        head_hidden_size=32,
        depth_estimation_type="relative",
        max_depth=1,
    )


def _rename(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """transformers keys and tensors for one original key, or ``None`` if the key is unknown."""
    if key in _EMBEDDING_RENAMES:
        return {_EMBEDDING_RENAMES[key]: tensor}
    if m := _BLOCK.match(key):
        index, name, kind = m.groups()
        prefix = f"backbone.encoder.layer.{index}."
        if name == "attn.qkv":
            query, key_, value = tensor.chunk(3, dim=0)
            return {
                f"{prefix}attention.q_proj.{kind}": query,
                f"{prefix}attention.k_proj.{kind}": key_,
                f"{prefix}attention.v_proj.{kind}": value,
            }
        if name == "mlp.w12":
            gate, up = tensor.chunk(2, dim=0)
            return {f"{prefix}mlp.gate_proj.{kind}": gate, f"{prefix}mlp.up_proj.{kind}": up}
        full = f"{name}.{kind}" if kind == "gamma" else name
        if full in _BLOCK_RENAMES:
            suffix = "" if kind == "gamma" else f".{kind}"
            return {f"{prefix}{_BLOCK_RENAMES[full]}{suffix}": tensor}
        return None
    if m := _PROJECT.match(key):
        return {f"neck.reassemble_stage.layers.{m.group(1)}.projection.{m.group(2)}": tensor}
    if m := _RESIZE.match(key):
        return {f"neck.reassemble_stage.layers.{m.group(1)}.resize.{m.group(2)}": tensor}
    if m := _LAYER_RN.match(key):
        return {f"neck.convs.{int(m.group(1)) - 1}.weight": tensor}
    if (m := _REFINENET.match(key)) and m.group(2) in _FUSION_RENAMES:
        layer = 4 - int(m.group(1))
        name = _FUSION_RENAMES[m.group(2)]
        return {f"neck.fusion_stage.layers.{layer}.{name}.{m.group(3)}": tensor}
    return None


def convert_original_state_dict(
    state_dict: dict[str, torch.Tensor], config: DepthAnythingConfig
) -> dict[str, torch.Tensor]:
    """Map an original DA-V2 state dict onto ``DepthAnythingForDepthEstimation(config)``.

    ``module.`` prefixes are removed; ``qkv`` is split in thirds (query, key, value) and the
    SwiGLU ``w12`` in halves (gate, up). Every original key must map, and the result must fill
    every parameter of the transformers model with the right shape; otherwise
    :class:`MagicBokehError` names the offending keys. Returns a new dict of contiguous tensors.
    """
    from transformers import DepthAnythingForDepthEstimation

    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        renamed = _rename(key.removeprefix("module."), tensor)
        if renamed is None:
            unknown.append(key)
        else:
            converted.update({k: v.contiguous() for k, v in renamed.items()})
    if unknown:
        raise MagicBokehError(
            f"unknown keys in the Depth Anything checkpoint: {', '.join(sorted(unknown)[:8])}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
            + "; expected an original DA-V2 state dict (pretrained.*, depth_head.*)"
        )
    with torch.device("meta"):
        expected = DepthAnythingForDepthEstimation(config).state_dict()
    missing = sorted(set(expected) - set(converted))
    extra = sorted(set(converted) - set(expected))
    mismatched = [
        f"{k} {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(converted))
        if converted[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:6])}" + ("…" if len(missing) > 6 else ""))
    if extra:
        problems.append(
            f"not in the model {', '.join(extra[:6])}" + ("…" if len(extra) > 6 else "")
        )
    if mismatched:
        problems.append(f"shape mismatch {'; '.join(mismatched[:6])}")
    if problems:
        raise MagicBokehError(
            "Depth Anything checkpoint does not fit the configuration: "
            + " | ".join(problems)
            + "; check the size (vits/vitb/vitl/vitg) or the config"
        )
    return converted


_HF_BLOCK = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)$")
_HF_FUSED = {  # transformers parameter → (original fused parameter, its position in the fusion)
    "attention.q_proj": ("attn.qkv", 0),
    "attention.k_proj": ("attn.qkv", 1),
    "attention.v_proj": ("attn.qkv", 2),
    "mlp.gate_proj": ("mlp.w12", 0),
    "mlp.up_proj": ("mlp.w12", 1),
}
_HF_REASSEMBLE = re.compile(r"neck\.reassemble_stage\.layers\.(\d)\.(projection|resize)\.(.+)$")
_HF_CONV = re.compile(r"neck\.convs\.(\d)\.weight$")
_HF_FUSION = re.compile(r"neck\.fusion_stage\.layers\.(\d)\.(.+)\.(weight|bias)$")


def _original_block_key(index: str, rest: str) -> str | None:
    """Original key of an unfused encoder-block parameter (``rest`` below ``layer.i.``)."""
    prefix = f"pretrained.blocks.{index}."
    if rest.endswith(".lambda1"):
        inverse = {v: k for k, v in _BLOCK_RENAMES.items()}
        name = inverse.get(rest)
        return None if name is None else prefix + name
    name, _, kind = rest.rpartition(".")
    inverse = {v: k for k, v in _BLOCK_RENAMES.items() if not k.endswith(".gamma")}
    return None if name not in inverse else f"{prefix}{inverse[name]}.{kind}"


def to_original_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_original_state_dict`: transformers keys → original DA-V2 keys.

    Query, key and value are concatenated back into ``attn.qkv`` (in that order), SwiGLU gate
    and up into ``mlp.w12``. Returns a new dict of contiguous CPU tensors without ``module.``
    prefixes; an unknown key raises :class:`MagicBokehError`.
    """
    embeddings = {v: k for k, v in _EMBEDDING_RENAMES.items()}
    fusion = {v: k for k, v in _FUSION_RENAMES.items()}
    original: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        name = None
        if key in embeddings:
            name = embeddings[key]
        elif m := _HF_BLOCK.match(key):
            index, rest = m.groups()
            base, _, kind = rest.rpartition(".")
            if base in _HF_FUSED:
                target, position = _HF_FUSED[base]
                fused.setdefault(f"pretrained.blocks.{index}.{target}.{kind}", {})[position] = (
                    tensor
                )
                continue
            name = _original_block_key(index, rest)
        elif m := _HF_REASSEMBLE.match(key):
            layer, part, rest = m.groups()
            kind = "projects" if part == "projection" else "resize_layers"
            name = f"depth_head.{kind}.{layer}.{rest}"
        elif m := _HF_CONV.match(key):
            name = f"depth_head.scratch.layer{int(m.group(1)) + 1}_rn.weight"
        elif (m := _HF_FUSION.match(key)) and m.group(2) in fusion:
            refinenet = 4 - int(m.group(1))
            name = f"depth_head.scratch.refinenet{refinenet}.{fusion[m.group(2)]}.{m.group(3)}"
        if name is None:
            unknown.append(key)
        else:
            original[name] = tensor.contiguous()
    for name, parts in fused.items():
        original[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0).contiguous()
    if unknown:
        raise MagicBokehError(
            f"cannot map {', '.join(sorted(unknown)[:6])} to the original Depth Anything V2 "
            "layout; only DepthAnythingForDepthEstimation weights can be exported"
        )
    return original


def build_model(
    state_dict: dict[str, torch.Tensor], config: DepthAnythingConfig
) -> DepthAnythingForDepthEstimation:
    """``DepthAnythingForDepthEstimation`` in eval mode with the converted original weights."""
    from transformers import DepthAnythingForDepthEstimation

    converted = convert_original_state_dict(state_dict, config)
    model = DepthAnythingForDepthEstimation(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_original_model(
    path: str | Path, *, size: str | None = None, config: DepthAnythingConfig | None = None
) -> DepthAnythingForDepthEstimation:
    """Load an original-format checkpoint as a transformers model (CPU, float32, eval mode).

    The architecture comes from ``config`` if given, else from ``size`` or the tensor shapes.
    """
    require("diffusion", "the Depth Anything depth model", ("transformers",))
    state_dict = load_original_state_dict(path)
    if config is None:
        config = make_config(size or infer_size(state_dict), state_dict)
    return build_model(state_dict, config)


def convert_checkpoint(
    path: str | Path,
    out_dir: str | Path,
    *,
    size: str | None = None,
    config: DepthAnythingConfig | None = None,
) -> Path:
    """Convert an original checkpoint file into a transformers folder; returns ``out_dir``.

    Writes ``config.json`` and ``model.safetensors`` with ``save_pretrained``. The architecture
    comes from ``config`` if given, else from ``size`` (``vits``/``vitb``/``vitl``/``vitg``) or
    the tensor shapes.
    """
    model = load_original_model(path, size=size, config=config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: convert one checkpoint; errors print one line and return 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="original .pth (e.g. DAdepth.pth)")
    parser.add_argument("out_dir", type=Path, help="transformers folder to write")
    parser.add_argument("--size", choices=sorted(SIZES), help="model size (default: inferred)")
    args = parser.parse_args(argv)
    try:
        out_dir = convert_checkpoint(args.checkpoint, args.out_dir, size=args.size)
    except MagicBokehError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
