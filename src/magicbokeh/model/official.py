"""Read the released MagicBokeh formats and convert them to this package's network folder.

Released inputs: an SD2.1-base diffusers folder (``unet/``, ``vae/``, ``scheduler/``; the text
encoder is not needed) and ``lora.pkl``, a ``torch.save`` dict with the keys ``rank_unet``,
``unet_lora_encoder_modules``, ``unet_lora_decoder_modules``, ``state_dict_unet``, ``rank_vae``,
``vae_lora_encoder_modules``, ``state_dict_vae``, ``controlnet`` (a pickled ControlNet module),
``state_dict_attn`` (the bokeh LoRA rank, an int) and ``processor_state_dict``.

``lora.pkl`` is read with the allow-list unpickler of :mod:`magicbokeh.model.safe_unpickle`.
Its ``controlnet`` is either the released pickled module or, in files written by
:mod:`magicbokeh.model.released`, a state dict with an optional ``controlnet_config``; without
that config the ControlNet is the one ``ControlNetModel.from_unet`` builds from the base UNet
(conditioning channels read from the state dict's shapes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import ensure_folder_writable, staged_folder
from magicbokeh.model.controlnet import UNET_SHARED_ARGS, controlnet_kwargs_from_config
from magicbokeh.model.network import (
    DOWNLOAD_HINT,
    NETWORK_SUBFOLDER,
    MagicBokehNetwork,
    read_config,
    read_weights,
)
from magicbokeh.model.safe_unpickle import (
    load_untrusted_torch_file,
    pickled_module_config,
    pickled_module_state_dict,
)
from magicbokeh.model.unet import is_pruned_unet_key, unet_kwargs_from_base_config

__all__ = [
    "DepthConverter",
    "OfficialCheckpoint",
    "assign_tensors",
    "controlnet_config_from_unet",
    "convert_official",
    "network_from_official",
    "read_official_checkpoint",
]

DepthConverter = Callable[[Path, Path], Any]
"""``converter(depth_pth, out_folder)``: converts ``DAdepth.pth`` into ``out_folder``."""

_WEIGHTS = "diffusion_pytorch_model.safetensors"
_REQUIRED_PKL_KEYS = (
    "rank_unet",
    "unet_lora_encoder_modules",
    "unet_lora_decoder_modules",
    "state_dict_unet",
    "rank_vae",
    "vae_lora_encoder_modules",
    "state_dict_vae",
    "controlnet",
    "state_dict_attn",
    "processor_state_dict",
)
# Keys of OSEDiff-style savers that carry nothing MagicBokeh reads.
_IGNORED_PKL_KEYS = ("unet_lora_others_modules",)
_OPTIONAL_PKL_KEYS = ("controlnet_config",)
_COND_EMBEDDING = "controlnet_cond_embedding."


@dataclass
class OfficialCheckpoint:
    """The content of a released ``lora.pkl``, as plain data."""

    rank_unet: int
    rank_vae: int
    rank_bokeh: int
    unet_lora_encoder_modules: list[str]
    unet_lora_decoder_modules: list[str]
    vae_lora_encoder_modules: list[str]
    state_dict_unet: dict[str, torch.Tensor]
    state_dict_vae: dict[str, torch.Tensor]
    processor_state_dict: dict[str, torch.Tensor]
    controlnet_config: dict[str, Any] | None
    """The ControlNet's diffusers config; None when the file stores only its state dict."""
    controlnet_state_dict: dict[str, torch.Tensor]


def _int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MagicBokehError(f"{path}: '{key}' must be a positive int, got {value!r}")
    return value


def _names(value: Any, key: str, path: Path) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise MagicBokehError(f"{path}: '{key}' must be a list of module names")
    return list(value)


def _tensors(value: Any, key: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise MagicBokehError(f"{path}: '{key}' must map names to tensors")
    return {k: v.detach().clone() for k, v in value.items()}


def read_official_checkpoint(lora_pkl: str | Path) -> OfficialCheckpoint:
    """Read a released ``lora.pkl`` safely (no code from the file runs) and validate its layout."""
    path = Path(lora_pkl)
    raw = load_untrusted_torch_file(path)
    if not isinstance(raw, dict):
        raise MagicBokehError(f"{path} does not hold a dict; it is not a MagicBokeh lora.pkl")
    missing = [k for k in _REQUIRED_PKL_KEYS if k not in raw]
    if missing:
        raise MagicBokehError(f"{path} lacks the keys {missing}; it is not a MagicBokeh lora.pkl")
    known = _REQUIRED_PKL_KEYS + _IGNORED_PKL_KEYS + _OPTIONAL_PKL_KEYS
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise MagicBokehError(f"{path} has unknown keys {unknown}; cannot tell what they hold")
    return OfficialCheckpoint(
        rank_unet=_int(raw["rank_unet"], "rank_unet", path),
        rank_vae=_int(raw["rank_vae"], "rank_vae", path),
        rank_bokeh=_int(raw["state_dict_attn"], "state_dict_attn", path),
        unet_lora_encoder_modules=_names(
            raw["unet_lora_encoder_modules"], "unet_lora_encoder_modules", path
        ),
        unet_lora_decoder_modules=_names(
            raw["unet_lora_decoder_modules"], "unet_lora_decoder_modules", path
        ),
        vae_lora_encoder_modules=_names(
            raw["vae_lora_encoder_modules"], "vae_lora_encoder_modules", path
        ),
        state_dict_unet=_tensors(raw["state_dict_unet"], "state_dict_unet", path),
        state_dict_vae=_tensors(raw["state_dict_vae"], "state_dict_vae", path),
        processor_state_dict=_tensors(raw["processor_state_dict"], "processor_state_dict", path),
        **_controlnet(raw, path),
    )


def _controlnet(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``controlnet_config`` and ``controlnet_state_dict`` from a pickled module or a state dict."""
    controlnet = raw["controlnet"]
    config = raw.get("controlnet_config")
    if config is not None and not isinstance(config, dict):
        raise MagicBokehError(f"{path}: 'controlnet_config' must be a dict of settings")
    if isinstance(controlnet, dict):
        return {
            "controlnet_config": config,
            "controlnet_state_dict": _tensors(controlnet, "controlnet", path),
        }
    return {
        "controlnet_config": config or pickled_module_config(controlnet),
        "controlnet_state_dict": pickled_module_state_dict(controlnet),
    }


def controlnet_config_from_unet(
    unet_config: dict[str, Any], state: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The config ``ControlNetModel.from_unet`` gives for ``unet_config``, with the conditioning
    channels of the embedding in ``state`` (a ControlNet state dict)."""
    try:
        conv_in = state[_COND_EMBEDDING + "conv_in.weight"]
        blocks = sorted(
            int(k[len(_COND_EMBEDDING + "blocks.") :].split(".")[0])
            for k in state
            if k.startswith(_COND_EMBEDDING + "blocks.") and k.endswith(".weight")
        )
        outs = [int(conv_in.shape[0])] + [
            int(state[f"{_COND_EMBEDDING}blocks.{i}.weight"].shape[0]) for i in blocks[1::2]
        ]
    except (KeyError, IndexError, ValueError):
        raise MagicBokehError(
            "the checkpoint's ControlNet has no conditioning embedding; it is not a MagicBokeh "
            "injector"
        ) from None
    config = {k: v for k, v in unet_config.items() if k in UNET_SHARED_ARGS}
    config["conditioning_channels"] = int(conv_in.shape[1])
    config["conditioning_embedding_out_channels"] = outs
    return config


def _base_part(base_dir: Path, part: str, config_name: str) -> tuple[dict[str, Any], Path]:
    folder = base_dir / part
    if not folder.is_dir():
        raise MagicBokehError(
            f"{folder} not found: the Stable Diffusion 2.1-base folder needs '{part}/'; "
            f"{DOWNLOAD_HINT}"
        )
    return read_config(folder / config_name), folder


def assign_tensors(
    expected: dict[str, torch.Tensor],
    prefix: str,
    sources: list[tuple[str, dict[str, torch.Tensor]]],
    base: dict[str, torch.Tensor],
    base_name: str,
) -> dict[str, torch.Tensor]:
    """Fill the ``prefix`` part of ``expected`` from checkpoint dicts, then from ``base`` weights.

    A key found in a checkpoint dict wins; otherwise the peft ``.base_layer.`` infix is removed
    and the base weight is used. Unused checkpoint or base keys, missing keys and shape
    mismatches raise MagicBokehError naming them.
    """
    out: dict[str, torch.Tensor] = {}
    used = {name: set() for name, _ in sources}
    used_base: set[str] = set()
    for key, ref in expected.items():
        if not key.startswith(prefix):
            continue
        local = key[len(prefix) :]
        tensor = None
        origin = ""
        for name, source in sources:
            if local in source:
                tensor, origin = source[local], name
                used[name].add(local)
                used_base.add(local.replace(".base_layer.", "."))
                break
        if tensor is None:
            base_key = local.replace(".base_layer.", ".")
            if base_key not in base:
                raise MagicBokehError(
                    f"{base_name} lacks the tensor {base_key}; the base folder is incomplete or "
                    f"not SD2.1-base; {DOWNLOAD_HINT}"
                )
            tensor, origin = base[base_key], base_name
            used_base.add(base_key)
        if tuple(tensor.shape) != tuple(ref.shape):
            raise MagicBokehError(
                f"{origin}: tensor {local} has shape {tuple(tensor.shape)}, "
                f"the network needs {tuple(ref.shape)}"
            )
        out[key] = tensor
    for name, source in sources:
        extra = sorted(set(source) - used[name])
        if extra:
            raise MagicBokehError(
                f"{name} has {len(extra)} tensors the network does not have "
                f"(e.g. {', '.join(extra[:3])}); the checkpoint does not match this base model"
            )
    extra_base = sorted(set(base) - used_base)
    if extra_base:
        raise MagicBokehError(
            f"{base_name} has {len(extra_base)} unexpected tensors (e.g. "
            f"{', '.join(extra_base[:3])}); it is not an SD2.1-base style model"
        )
    return out


def network_from_official(
    base_dir: str | Path,
    lora_pkl: str | Path,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> MagicBokehNetwork:
    """Assemble the network from the SD2.1-base folder and the released ``lora.pkl``.

    The base UNet loses exactly the pruned tensors (``mid_block.*``, ``*.attn2.*``,
    ``transformer_blocks.*.norm2.*``); anything else that does not fit raises MagicBokehError.
    """
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise MagicBokehError(f"base model folder {base_dir} not found; {DOWNLOAD_HINT}")
    unet_cfg, unet_dir = _base_part(base_dir, "unet", "config.json")
    vae_cfg, vae_dir = _base_part(base_dir, "vae", "config.json")
    sched_cfg, _ = _base_part(base_dir, "scheduler", "scheduler_config.json")
    ckpt = read_official_checkpoint(lora_pkl)
    pkl = Path(lora_pkl).name

    unet_kwargs = unet_kwargs_from_base_config(unet_cfg)
    controlnet_cfg = ckpt.controlnet_config or controlnet_config_from_unet(
        unet_kwargs, ckpt.controlnet_state_dict
    )
    config = {
        "unet_config": unet_kwargs,
        "controlnet_config": controlnet_kwargs_from_config(controlnet_cfg),
        "vae_config": {k: v for k, v in vae_cfg.items() if not k.startswith("_")},
        "scheduler_config": {k: v for k, v in sched_cfg.items() if not k.startswith("_")},
        "rank_unet": ckpt.rank_unet,
        "rank_vae": ckpt.rank_vae,
        "rank_bokeh": ckpt.rank_bokeh,
        "unet_lora_encoder_modules": ckpt.unet_lora_encoder_modules,
        "unet_lora_decoder_modules": ckpt.unet_lora_decoder_modules,
        "vae_lora_encoder_modules": ckpt.vae_lora_encoder_modules,
    }
    with torch.device("meta"):
        skeleton = MagicBokehNetwork(**config)
    expected = skeleton.state_dict()

    unet_base = {
        k: v for k, v in read_weights(unet_dir / _WEIGHTS).items() if not is_pruned_unet_key(k)
    }
    vae_base = read_weights(vae_dir / _WEIGHTS)
    state: dict[str, torch.Tensor] = {}
    state.update(
        assign_tensors(
            expected,
            "unet.",
            [
                (f"{pkl}[state_dict_unet]", ckpt.state_dict_unet),
                (f"{pkl}[processor_state_dict]", ckpt.processor_state_dict),
            ],
            unet_base,
            str(unet_dir / _WEIGHTS),
        )
    )
    state.update(
        assign_tensors(
            expected,
            "vae.",
            [(f"{pkl}[state_dict_vae]", ckpt.state_dict_vae)],
            vae_base,
            str(vae_dir / _WEIGHTS),
        )
    )
    state.update(
        assign_tensors(
            expected, "controlnet.", [], ckpt.controlnet_state_dict, f"{pkl}[controlnet]"
        )
    )
    return MagicBokehNetwork.from_config_and_state(
        config, state, torch_dtype=torch_dtype, device=device, source=pkl
    )


def convert_official(
    base_dir: str | Path,
    lora_pkl: str | Path,
    out_dir: str | Path,
    depth_pth: str | Path | None = None,
    depth_converter: DepthConverter | None = None,
    torch_dtype: torch.dtype | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Convert the released weights into ``out_dir`` (this package's format) and return it.

    Writes ``out_dir/network/`` (:meth:`MagicBokehNetwork.save_pretrained`) and
    ``out_dir/magicbokeh.json`` (what the folder holds). With ``depth_pth`` (``DAdepth.pth``) the
    ``depth_converter(depth_pth, folder / "depth")`` hook converts the depth model into the
    folder being built (it lands as ``out_dir/depth``); without a hook,
    ``magicbokeh.depth.convert_depth_anything.convert_checkpoint`` is used.
    ``torch_dtype`` sets the stored precision (default float32).

    The folder is built under a temporary name beside ``out_dir`` and moved into place when
    complete (:func:`magicbokeh.io.atomic.staged_folder`): an error or an interruption leaves
    no half folder. An existing non-empty ``out_dir`` is replaced only with ``overwrite``.
    """
    out_dir = ensure_folder_writable(out_dir, overwrite=overwrite)
    net = network_from_official(base_dir, lora_pkl, torch_dtype=torch_dtype)
    with staged_folder(out_dir, overwrite=overwrite) as staging:
        net.save_pretrained(staging / NETWORK_SUBFOLDER)
        manifest: dict[str, Any] = {
            "format": "magicbokeh",
            "version": 1,
            "network": NETWORK_SUBFOLDER,
        }
        if depth_pth is not None:
            if depth_converter is None:
                depth_converter = _default_depth_converter()
            depth_converter(Path(depth_pth), staging / "depth")
            manifest["depth"] = "depth"
        (staging / "magicbokeh.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _default_depth_converter() -> DepthConverter:
    from magicbokeh.depth.convert_depth_anything import convert_checkpoint

    return convert_checkpoint
