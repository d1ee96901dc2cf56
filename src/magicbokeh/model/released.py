"""Write a network in the released ``lora.pkl`` layout, for the released inference script.

The file is a ``torch.save`` dict with the keys the released ``model_test.load_ckpt`` reads:

- ``rank_unet``, ``unet_lora_encoder_modules``, ``unet_lora_decoder_modules`` and
  ``state_dict_unet``: every UNet parameter whose name contains ``lora`` or ``conv_in`` under
  the peft-wrapped names (``<module>.lora_A.default_encoder.weight``, ...,
  ``conv_in.base_layer.weight``/``bias``), without the focus-attention processors;
- ``rank_vae``, ``vae_lora_encoder_modules`` (with the recipe's repeats, as stored in the
  network's config) and ``state_dict_vae``: the VAE-encoder LoRA tensors;
- ``state_dict_attn``: the bokeh-LoRA rank (an int, despite the name) and
  ``processor_state_dict``: ``<layer>.processor.to_{q,k,v,out}_lora.{0,1}.weight``;
- ``controlnet``: the injector's **state dict** (the stock ControlNet keys minus the pruned
  ones), never a pickled module, plus ``controlnet_config`` (plain values), which the released
  loader ignores and :mod:`magicbokeh.model.official` uses.

The file holds only tensors, ints, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it. The released script assigns ``model["controlnet"]`` as a module;
to read this file it needs that one line to load the state dict into the ControlNet it built
with ``ControlNetModel.from_unet`` instead (see docs/checkpoints.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import atomic_write
from magicbokeh.model.network import MagicBokehNetwork, jsonable

__all__ = ["released_checkpoint", "save_released_checkpoint"]


def _tensors(state: dict[str, torch.Tensor], keep) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu().clone() for k, v in state.items() if keep(k)}


def released_checkpoint(network: MagicBokehNetwork) -> dict[str, Any]:
    """The released ``lora.pkl`` dict of ``network`` (tensors on the CPU, in their own dtype).

    Raises MagicBokehError for a network whose SR LoRA is merged (the LoRA factors would no
    longer be separate) or that carries no LoRA adapters.
    """
    if network.sr_lora_merged:
        raise MagicBokehError(
            "the SR LoRA is merged for inference; call unmerge_sr_lora() before exporting"
        )
    config = network.config
    unet_state = network.unet.state_dict()
    state_dict_unet = _tensors(
        unet_state, lambda k: ("lora" in k or "conv_in" in k) and ".processor." not in k
    )
    if not any("lora_A" in k for k in state_dict_unet):
        raise MagicBokehError("the network has no SR LoRA adapters to export")
    return {
        "rank_unet": int(config.rank_unet),
        "unet_lora_encoder_modules": list(config.unet_lora_encoder_modules),
        "unet_lora_decoder_modules": list(config.unet_lora_decoder_modules),
        "state_dict_unet": state_dict_unet,
        "rank_vae": int(config.rank_vae),
        "vae_lora_encoder_modules": list(config.vae_lora_encoder_modules),
        "state_dict_vae": _tensors(network.vae.state_dict(), lambda k: "lora" in k),
        "controlnet": _tensors(network.controlnet.state_dict(), lambda k: True),
        "controlnet_config": jsonable(dict(config.controlnet_config)),
        "state_dict_attn": int(config.rank_bokeh),
        "processor_state_dict": _tensors(unet_state, lambda k: ".processor." in k),
    }


def save_released_checkpoint(
    network: MagicBokehNetwork, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write :func:`released_checkpoint` of ``network`` to ``path`` atomically; returns the path.

    An existing file is kept (MagicBokehError) unless ``overwrite``.
    """
    path = Path(path)
    checkpoint = released_checkpoint(network)
    with atomic_write(path, overwrite=overwrite) as tmp:
        torch.save(checkpoint, tmp)
    return path
