"""The network ``train sr`` starts from, built from a Stable Diffusion 2.1-base folder.

- UNet: the base UNet pruned as the paper's "block pruning" does (mid block, every
  ``attn2`` and its ``norm2`` dropped: :func:`~magicbokeh.model.unet.is_pruned_unet_key`);
- ControlNet (defocus injector): :meth:`MagicBokehControlNet.from_unet` of the pruned UNet
  (encoder weights copied, conditioning embedding and the 12 zero convolutions fresh), its
  embedding downsampling by the VAE's factor;
- SR LoRA on the UNet (adapters ``default_encoder``/``default_decoder``) and the VAE-encoder
  LoRA, with the released target recipes (:mod:`magicbokeh.model.lora`), peft's Gaussian
  initialisation (A ~ N(0, 1/r), B = 0);
- bokeh LoRA in the 9 up-block self-attentions (A Kaiming-uniform, B = 0).

Both B factors and the zero convolutions start at zero, so the starting network computes
exactly the pruned base model. The text encoder and tokenizer are not used.
"""

from __future__ import annotations

from pathlib import Path

import torch

from magicbokeh.errors import MagicBokehError

__all__ = ["REQUIRED_BASE_PARTS", "build_initial_network", "check_base_folder", "cond_channels"]

#: Files a base folder must hold (weights: safetensors, or the older .bin).
REQUIRED_BASE_PARTS = (
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
#: SD's ControlNet conditioning embedding (one stride-2 convolution between entries).
SD_COND_CHANNELS = (16, 32, 96, 256)
BASE_HINT = (
    "give the diffusers folder of Stable Diffusion 2.1-base (e.g. a download of "
    "stabilityai/stable-diffusion-2-1-base)"
)


def check_base_folder(base: Path) -> None:
    """Raise MagicBokehError naming every missing part of the base folder."""
    base = Path(base)
    if not base.is_dir():
        raise MagicBokehError(f"base model folder {base} not found; {BASE_HINT}")
    missing = []
    for part in REQUIRED_BASE_PARTS:
        path = base / part
        older = path.with_suffix(".bin") if path.suffix == ".safetensors" else path
        if not path.is_file() and not older.is_file():
            missing.append(part)
    if missing:
        raise MagicBokehError(f"{base} lacks {', '.join(missing)}; {BASE_HINT}") from None


def cond_channels(vae_levels: int) -> tuple[int, ...]:
    """Conditioning-embedding widths that downsample by the VAE's factor 2^(levels−1)."""
    if not 1 <= vae_levels <= len(SD_COND_CHANNELS):
        raise MagicBokehError(
            f"the VAE has {vae_levels} levels; MagicBokeh supports VAEs of 1 to "
            f"{len(SD_COND_CHANNELS)} levels (downscale factor up to 8)"
        )
    return SD_COND_CHANNELS[len(SD_COND_CHANNELS) - vae_levels :]


def _load_part(cls, folder: Path, what: str):
    try:
        return cls.from_pretrained(str(folder), torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MagicBokehError(
            f"cannot load the base {what} from {folder} ({first}); {BASE_HINT}"
        ) from None


def build_initial_network(
    base: Path, *, rank_unet: int = 4, rank_vae: int = 4, rank_bokeh: int = 8, seed: int = 0
):
    """The starting :class:`~magicbokeh.model.network.MagicBokehNetwork` (float32, CPU).

    ``seed`` draws every random initial value (LoRA A factors, the conditioning embedding).
    Raises MagicBokehError for a missing or unsuitable base.
    """
    base = Path(base)
    check_base_folder(base)
    for name, rank in (
        ("--rank-unet", rank_unet),
        ("--rank-vae", rank_vae),
        ("--rank-bokeh", rank_bokeh),
    ):
        if rank < 1:
            raise MagicBokehError(f"{name} must be at least 1, got {rank}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(base, rank_unet, rank_vae, rank_bokeh)


def _build(base: Path, rank_unet: int, rank_vae: int, rank_bokeh: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from magicbokeh.model.controlnet import MagicBokehControlNet
    from magicbokeh.model.lora import unet_lora_target_recipe, vae_lora_target_recipe
    from magicbokeh.model.network import MagicBokehNetwork, read_config
    from magicbokeh.model.official import assign_tensors
    from magicbokeh.model.unet import (
        MagicBokehUNet,
        is_pruned_unet_key,
        unet_kwargs_from_base_config,
    )

    stock_unet = _load_part(UNet2DConditionModel, base / "unet", "UNet")
    vae = _load_part(AutoencoderKL, base / "vae", "VAE")
    scheduler = read_config(base / "scheduler" / "scheduler_config.json")
    unet_state = {k: v for k, v in stock_unet.state_dict().items() if not is_pruned_unet_key(k)}
    unet_kwargs = unet_kwargs_from_base_config(dict(stock_unet.config))
    del stock_unet
    pruned = MagicBokehUNet(**unet_kwargs)
    pruned.load_state_dict(unet_state, strict=True)
    controlnet = MagicBokehControlNet.from_unet(
        pruned,
        conditioning_embedding_out_channels=cond_channels(len(vae.config.block_out_channels)),
    )
    encoder, decoder = unet_lora_target_recipe(pruned)
    config = {
        "unet_config": unet_kwargs,
        "controlnet_config": {
            k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")
        },
        "vae_config": {k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
        "scheduler_config": {k: v for k, v in scheduler.items() if not k.startswith("_")},
        "rank_unet": rank_unet,
        "rank_vae": rank_vae,
        "rank_bokeh": rank_bokeh,
        "unet_lora_encoder_modules": encoder,
        "unet_lora_decoder_modules": decoder,
        "vae_lora_encoder_modules": vae_lora_target_recipe(vae),
    }
    fresh = MagicBokehNetwork(**config)
    fresh_state = fresh.state_dict()
    adapters = {
        k: v
        for k, v in fresh_state.items()
        if ".lora_A." in k or ".lora_B." in k or ".processor." in k
    }

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in adapters.items() if k.startswith(prefix)}

    expected = {k: v for k, v in fresh_state.items()}
    state = {}
    state.update(
        assign_tensors(
            expected, "unet.", [("new LoRA", part("unet."))], pruned.state_dict(), f"{base}/unet"
        )
    )
    state.update(
        assign_tensors(
            expected, "vae.", [("new LoRA", part("vae."))], vae.state_dict(), f"{base}/vae"
        )
    )
    state.update(
        assign_tensors(expected, "controlnet.", [], controlnet.state_dict(), "the new ControlNet")
    )
    return MagicBokehNetwork.from_config_and_state(config, state, source=str(base))
