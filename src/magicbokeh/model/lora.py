"""The SR LoRA adapters (peft) on the pruned UNet and the VAE encoder, and their target recipes.

UNet: adapters ``default_encoder`` (modules of the down path and ``conv_in``) and
``default_decoder`` (up path and ``conv_out``), both active. VAE: adapter ``default_encoder``.
Every adapter is ``LoraConfig(r, init_lora_weights="gaussian")`` with peft's default
``lora_alpha`` = 8, so the LoRA delta is B(A(x))·8/r. For convolutions A copies the base kernel,
stride and padding and B is 1×1.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import nn

from magicbokeh.extras import LEARNED_ENGINE, require

try:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
except (ImportError, RuntimeError):  # diffusers wraps failed lazy imports in RuntimeError
    require("diffusion", "the learned engine", LEARNED_ENGINE)  # one line naming the extra
    raise

from magicbokeh.errors import MagicBokehError

__all__ = [
    "LORA_ALPHA",
    "activate_adapters",
    "UNET_ADAPTERS",
    "VAE_ADAPTER",
    "add_unet_sr_lora",
    "add_vae_encoder_lora",
    "stock_unet_lora_targets",
    "unet_lora_target_recipe",
    "vae_lora_target_recipe",
]

LORA_ALPHA = 8
UNET_ADAPTERS = ("default_encoder", "default_decoder")
VAE_ADAPTER = "default_encoder"

_UNET_PATTERNS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv_out",
    "proj_out",
    "proj_in",
    "ff.net.2",
    "ff.net.0.proj",
)
_VAE_PATTERNS = (
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv",
    "conv_out",
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
)


def unet_lora_target_recipe(unet: nn.Module) -> tuple[list[str], list[str]]:
    """(encoder, decoder) module lists of the SR LoRA recipe for a UNet without adapters.

    Weight parameters whose name has none of "bias"/"norm" and contains one of the patterns go
    to the encoder list when the name contains ``down_blocks`` or ``conv_in``, to the decoder list
    when it contains ``up_blocks`` or ``conv_out``. Entries are module paths.
    """
    encoder: list[str] = []
    decoder: list[str] = []
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or ".processor." in name:
            continue
        if not any(pattern in name for pattern in _UNET_PATTERNS):
            continue
        module = name.removesuffix(".weight")
        if "down_blocks" in name or "conv_in" in name:
            encoder.append(module)
        elif "up_blocks" in name or "conv_out" in name:
            decoder.append(module)
    return encoder, decoder


def stock_unet_lora_targets(unet: nn.Module) -> list[str]:
    """Every module OSEDiff's ``initialize_unet`` recipe adapts in a stock SD UNet.

    Weight parameters whose name has none of "bias"/"norm" and contains one of the patterns of
    :func:`unet_lora_target_recipe`, wherever they are (down, up and mid blocks, cross-attention
    included); OSEDiff splits them into three adapters of equal rank, which adapt the same
    modules as one. Entries are module paths.
    """
    targets = []
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        if any(pattern in name for pattern in _UNET_PATTERNS):
            targets.append(name.removesuffix(".weight"))
    return targets


def vae_lora_target_recipe(vae: nn.Module) -> list[str]:
    """Module list of the VAE-encoder LoRA recipe, one entry per pattern checked (so with repeats).

    For each weight parameter whose name has none of "bias"/"norm", and for each pattern: an
    entry when the name contains the pattern and "encoder", or when it is the ``quant_conv``
    (not ``post_quant_conv``). The released list keeps the repeats; peft uses the unique names.
    """
    targets: list[str] = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        module = name.removesuffix(".weight")
        is_quant_conv = "quant_conv" in name and "post_quant_conv" not in name
        for pattern in _VAE_PATTERNS:
            if (pattern in name and "encoder" in name) or is_quant_conv:
                targets.append(module)
    return targets


def _check_targets(model: nn.Module, targets: Sequence[str], what: str) -> list[str]:
    modules = dict(model.named_modules())
    unique = list(dict.fromkeys(targets))
    for name in unique:
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise MagicBokehError(
                f"{what} LoRA target '{name}' is not a Linear/Conv2d layer of the model; "
                "the checkpoint does not match this network"
            )
    return unique


def add_unet_sr_lora(
    unet: nn.Module, rank: int, encoder_modules: Sequence[str], decoder_modules: Sequence[str]
) -> None:
    """Inject the SR LoRA adapters into ``unet`` (in place) and activate both."""
    adapters = {
        UNET_ADAPTERS[0]: _check_targets(unet, encoder_modules, "UNet encoder"),
        UNET_ADAPTERS[1]: _check_targets(unet, decoder_modules, "UNet decoder"),
    }
    for adapter, targets in adapters.items():
        if targets:
            config = LoraConfig(
                r=rank, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian", target_modules=targets
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(config, unet, adapter_name=adapter)
    activate_adapters(unet, [name for name, targets in adapters.items() if targets])


def add_vae_encoder_lora(vae: nn.Module, rank: int, modules: Sequence[str]) -> None:
    """Inject the VAE-encoder LoRA adapter into ``vae`` (in place) and activate it."""
    targets = _check_targets(vae, modules, "VAE encoder")
    if not targets:
        return
    config = LoraConfig(
        r=rank, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian", target_modules=targets
    )
    inject_adapter_in_model(config, vae, adapter_name=VAE_ADAPTER)
    activate_adapters(vae, [VAE_ADAPTER])


def activate_adapters(model: nn.Module, adapters: Sequence[str]) -> None:
    """Make ``adapters`` the active LoRA adapters of every peft layer in ``model``."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(list(adapters))
