"""Tiny random-init MagicBokehNetworks for tests: the SD2.1-base layout at toy width.

``vae_levels`` sets the VAE's downscale factor 2^(levels−1): 2 levels (/2) for network tests
on 32-px tiles, 4 levels (/8, so tiles are multiples of 64 as for the real model) for pipeline
tests. The UNet has two levels with focus attention at the full latent resolution.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from magicbokeh.model.lora import unet_lora_target_recipe, vae_lora_target_recipe
from magicbokeh.model.network import MagicBokehNetwork
from magicbokeh.model.unet import MagicBokehUNet

UNET = {
    "sample_size": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": [1, 2],
    "cross_attention_dim": 32,
}
SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


def vae_config(levels: int) -> dict:
    return {
        "block_out_channels": [32] * levels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": 1,
        "latent_channels": 4,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    }


def controlnet_config(vae_levels: int) -> dict:
    """The injector for a VAE of ``vae_levels``: its embedding downsamples by the same factor."""
    return {
        "down_block_types": UNET["down_block_types"],
        "block_out_channels": UNET["block_out_channels"],
        "layers_per_block": 1,
        "attention_head_dim": [1, 2],
        "cross_attention_dim": 32,
        "conditioning_embedding_out_channels": [16] * (vae_levels - 1) + [32],
    }


def tiny_config(vae_levels: int = 2) -> dict:
    """``MagicBokehNetwork`` keyword arguments with the released LoRA target recipe."""
    vae = vae_config(vae_levels)
    encoder, decoder = unet_lora_target_recipe(MagicBokehUNet(**UNET))
    return {
        "unet_config": UNET,
        "controlnet_config": controlnet_config(vae_levels),
        "vae_config": vae,
        "scheduler_config": SCHEDULER,
        "rank_unet": 4,
        "rank_vae": 4,
        "rank_bokeh": 8,
        "unet_lora_encoder_modules": encoder,
        "unet_lora_decoder_modules": decoder,
        "vae_lora_encoder_modules": vae_lora_target_recipe(AutoencoderKL.from_config(vae)),
    }


def tiny_network(vae_levels: int = 2) -> MagicBokehNetwork:
    """A seeded random network in eval mode whose every branch contributes to the output."""
    torch.manual_seed(0)
    net = MagicBokehNetwork(**tiny_config(vae_levels)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in net.named_parameters():
            # LoRA B factors and zero-initialised convs start at zero: give them values.
            if "lora_B" in name or name.endswith("_lora.1.weight") or "controlnet_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return net


def write_tiny_base(folder, vae_levels: int = 4, seed: int = 0):
    """A Stable Diffusion 2.1-base style diffusers folder at toy width (what ``train sr`` reads).

    The UNet is stock (mid block and cross-attention included, pruned on load); VAE, scheduler
    and UNet configs follow SD2.1-base apart from the widths. Returns the folder.
    """
    import json
    from pathlib import Path

    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**UNET, "attention_head_dim": tuple(UNET["attention_head_dim"])})
    unet.save_pretrained(folder / "unet")
    AutoencoderKL.from_config(vae_config(vae_levels)).save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = {"_class_name": "DDPMScheduler", **SCHEDULER}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder
