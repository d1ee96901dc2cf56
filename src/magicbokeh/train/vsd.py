"""OSEDiff's VSD regulariser (variational score distillation) for ``train sr --vsd-weight W``.

Off by default. When on, two stock Stable Diffusion UNets come from the ``--base`` folder
(mid block and cross-attention kept, unlike the pruned MagicBokeh UNet):

- ``unet_fix``: frozen, never changes; stored in the autocast dtype under ``--mixed-precision
  bf16``/``fp16`` (as OSEDiff stores it), in float32 otherwise;
- ``unet_update``: the same frozen weights plus its own LoRA (rank ``--vsd-rank``, OSEDiff's
  ``initialize_unet`` targets: :func:`~magicbokeh.model.lora.stock_unet_lora_targets`, peft's
  Gaussian initialisation, alpha 8), the only tensors of the regulariser that train. They are
  stored in checkpoints under :data:`REGULARISER_PREFIX`; exports leave them out.

The prompt (``--vsd-prompt``) and the negative prompt (``--vsd-negative-prompt``) are encoded
once, when the model is built, with the base folder's CLIP tokenizer and text encoder, which
are then freed.

Per training step, with z the generated latent (the one-step x0, scaled as the UNet sees it,
B×4×h×w, float32) and ᾱ the base scheduler's cumulative alphas:

1. VSD term (:meth:`VSDRegulariser.vsd_loss`): t ~ U{20..979}, x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε;
   without gradients, x0_update from ``unet_update``'s ε under the prompt, x0_fix from
   ``unet_fix``'s ε with classifier-free guidance ε_neg + s·(ε_prompt − ε_neg) (s =
   ``--vsd-cfg``, 7.5; the negative prompt is the unconditional branch); w = mean|z − x0_fix|
   over C, H, W; grad = (x0_update − x0_fix)/w; loss = MSE(z, stopgrad(z − grad)), whose
   gradient with respect to z is 2·grad/N (N = z.numel()): it reaches only the generator.
2. Diffusion term (:meth:`VSDRegulariser.diffusion_loss`): ε-MSE of ``unet_update`` under the
   prompt on z.detach(), t ~ U{0..999}: it reaches only the regulariser's LoRA.

Both come from one forward pass, so one backward pass gives each parameter set exactly its
own gradient, computed with the same ``unet_update`` weights OSEDiff uses (its generator step
and then its regulariser step both see the weights from before the step).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magicbokeh.errors import MagicBokehError
from magicbokeh.train.sr_command import OSEDIFF_NEGATIVE_PROMPT  # OSEDiff's --neg_prompt

__all__ = [
    "OSEDIFF_NEGATIVE_PROMPT",
    "REGULARISER_PREFIX",
    "RegularisedNetwork",
    "VSDRegulariser",
    "check_regulariser_base",
    "encode_prompts",
    "vsd_gradient",
    "vsd_surrogate_loss",
]

#: State-dict prefix of the regulariser in a training model (and in its checkpoints).
REGULARISER_PREFIX = "vsd."
#: OSEDiff's range of VSD timesteps, as fractions of the training steps (20..979 of 1000).
VSD_T_RANGE = (0.02, 0.98)


def _weights_present(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


def check_regulariser_base(base: Path) -> None:
    """Raise MagicBokehError naming what ``base`` lacks for the VSD regulariser.

    Needs a UNet with cross-attention whose ``cross_attention_dim`` matches the text encoder,
    ``text_encoder/`` (config and weights) and ``tokenizer/`` (CLIP vocabulary and merges).
    Reads only small files.
    """
    base = Path(base)
    missing: list[str] = []
    try:
        unet = json.loads((base / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        unet = None
        missing.append("unet/config.json")
    if unet is not None:
        blocks = [*unet.get("down_block_types", ()), *unet.get("up_block_types", ())]
        if not unet.get("cross_attention_dim") or not any("CrossAttn" in b for b in blocks):
            missing.append("a UNet with cross-attention (unet/ has none)")
    text = None
    try:
        text = json.loads((base / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        missing.append("text_encoder/config.json")
    weights = ("model.safetensors", "pytorch_model.bin")
    if not _weights_present(base / "text_encoder", weights):
        missing.append("text_encoder/model.safetensors")
    tokenizer = base / "tokenizer"
    if not (tokenizer / "vocab.json").is_file() or not (tokenizer / "merges.txt").is_file():
        missing.append("tokenizer/ (vocab.json, merges.txt)")
    if missing:
        raise MagicBokehError(
            f"--vsd-weight needs the base's stock UNet, text encoder and tokenizer: {base} "
            f"lacks {', '.join(missing)}; give the full Stable Diffusion 2.1-base folder or "
            "train with --vsd-weight 0"
        )
    width, context = (text or {}).get("hidden_size"), (unet or {}).get("cross_attention_dim")
    if isinstance(context, int) and width != context:
        raise MagicBokehError(
            f"{base}: the text encoder's hidden size {width} does not match the UNet's "
            f"cross_attention_dim {context}; give a consistent Stable Diffusion 2.1-base folder"
        )


def encode_prompts(base: Path, prompts: list[str]) -> torch.Tensor:
    """CLIP embeddings of ``prompts`` (N×L×D float32, L = 77 for SD), as SD pipelines encode
    them (padded to the maximum length); the text encoder is freed before returning."""
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging

    base = Path(base)
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a one-second load needs no progress bar
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(base / "tokenizer"))
        encoder = CLIPTextModel.from_pretrained(
            str(base / "text_encoder"), torch_dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MagicBokehError(
            f"cannot load the base text encoder or tokenizer from {base} ({first}); give the "
            "full Stable Diffusion 2.1-base folder or train with --vsd-weight 0"
        ) from None
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
    ids = tokenizer(
        prompts, max_length=length, padding="max_length", truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        embeds = encoder(ids)[0].float()
    del encoder
    return embeds


def vsd_gradient(z: torch.Tensor, x0_update: torch.Tensor, x0_fix: torch.Tensor) -> torch.Tensor:
    """OSEDiff's VSD gradient (x0_update − x0_fix)/w, w = mean|z − x0_fix| over C, H, W.

    All B×C×H×W; no gradient flows through the result. w is kept ≥ 1e-12 (it is 0 only when
    the frozen model reproduces z exactly).
    """
    with torch.no_grad():
        weight = (z.float() - x0_fix.float()).abs().mean(dim=(1, 2, 3), keepdim=True)
        return (x0_update.float() - x0_fix.float()) / weight.clamp_min(1e-12)


def vsd_surrogate_loss(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """MSE(z, stopgrad(z − grad)): a scalar whose gradient with respect to z is 2·grad/N."""
    z = z.float()
    return F.mse_loss(z, (z - grad).detach())


class VSDRegulariser(nn.Module):
    """``unet_update`` (frozen stock UNet + trainable LoRA), frozen ``unet_fix`` and the two
    prompt embeddings (see the module docstring)."""

    def __init__(
        self,
        unet_update: nn.Module,
        unet_fix: nn.Module,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        cfg: float,
    ) -> None:
        super().__init__()
        self.unet_update = unet_update
        self.unet_fix = unet_fix
        self.cfg = float(cfg)
        # Not persistent: rebuilt from the base folder, never part of a checkpoint.
        self.register_buffer("prompt_embeds", prompt_embeds.float(), persistent=False)
        self.register_buffer("negative_embeds", negative_embeds.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    @classmethod
    def from_base(
        cls,
        base: Path,
        scheduler_config: dict[str, Any],
        *,
        rank: int = 4,
        prompt: str = "",
        negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT,
        cfg: float = 7.5,
        fix_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> VSDRegulariser:
        """Build from a Stable Diffusion 2.1-base folder (float32 ``unet_update``, CPU).

        ``seed`` draws the LoRA's initial A factors (B starts at zero, so ``unet_update``
        starts equal to ``unet_fix``).
        """
        import warnings

        from diffusers import DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig, inject_adapter_in_model

        from magicbokeh.model.lora import LORA_ALPHA, stock_unet_lora_targets

        base = Path(base)
        check_regulariser_base(base)
        try:
            stock = UNet2DConditionModel.from_pretrained(
                str(base / "unet"), torch_dtype=torch.float32
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MagicBokehError(f"cannot load the base UNet from {base} ({first})") from None
        stock.requires_grad_(False)
        unet_fix = copy.deepcopy(stock).eval()
        nn.Module.to(unet_fix, dtype=fix_dtype)  # all of it (SD's UNet keeps no fp32 modules)
        config = LoraConfig(
            r=rank,
            lora_alpha=LORA_ALPHA,
            init_lora_weights="gaussian",
            target_modules=stock_unet_lora_targets(stock),
        )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            torch.manual_seed(seed)
            inject_adapter_in_model(config, stock, adapter_name="vsd")
        embeds = encode_prompts(base, [prompt, negative_prompt])
        with torch.device("cpu"):
            alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod
        return cls(stock, unet_fix, embeds[:1], embeds[1:], alphas, cfg)

    def train(self, mode: bool = True) -> VSDRegulariser:
        super().train(mode)
        self.unet_fix.eval()
        return self

    def lora_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The trainable LoRA tensors of ``unet_update`` (names relative to this module)."""
        return [
            (name, param)
            for name, param in self.named_parameters()
            if name.startswith("unet_update.") and (".lora_A." in name or ".lora_B." in name)
        ]

    # --------------------------------------------------------------------------- diffusion
    def _alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)

    def add_noise(self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε (float32)."""
        alpha_bar = self._alpha_bar(t)
        return alpha_bar.sqrt() * z.float() + (1 - alpha_bar).sqrt() * noise.float()

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t (float32)."""
        alpha_bar = self._alpha_bar(t)
        return (x_t.float() - (1 - alpha_bar).sqrt() * eps.float()) / alpha_bar.sqrt()

    def _draw(self, z: torch.Tensor, low: int, high: int, generator: torch.Generator):
        t = torch.randint(low, high, (z.shape[0],), generator=generator, device=z.device)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=torch.float32)
        return t, noise

    def _embeds(self, which: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return which.expand(batch, -1, -1).to(dtype)

    def vsd_loss(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The VSD surrogate loss of the generated latent ``z`` (B×4×h×w; a scalar)."""
        steps = len(self.alphas_cumprod)
        low, high = (round(fraction * steps) for fraction in VSD_T_RANGE)
        t, noise = self._draw(z, low, high, generator)
        batch = z.shape[0]
        with torch.no_grad():
            x_t = self.add_noise(z.detach(), noise, t)
            prompt = self._embeds(self.prompt_embeds, batch, torch.float32)
            eps_update = self.unet_update(x_t, t, encoder_hidden_states=prompt).sample
            x0_update = self.predict_x0(x_t, eps_update, t)
            dtype = next(self.unet_fix.parameters()).dtype
            both = torch.cat(
                [
                    self._embeds(self.negative_embeds, batch, dtype),
                    self._embeds(self.prompt_embeds, batch, dtype),
                ]
            )
            eps_pair = self.unet_fix(
                torch.cat([x_t, x_t]).to(dtype), torch.cat([t, t]), encoder_hidden_states=both
            ).sample.float()
            eps_negative, eps_prompt = eps_pair.chunk(2)
            eps_fix = eps_negative + self.cfg * (eps_prompt - eps_negative)
            x0_fix = self.predict_x0(x_t, eps_fix, t)
            grad = vsd_gradient(z.detach(), x0_update, x0_fix)
        return vsd_surrogate_loss(z, grad)

    def diffusion_loss(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ε-MSE of ``unet_update`` on the detached latent ``z`` under the prompt (a scalar)."""
        z = z.detach().float()
        t, noise = self._draw(z, 0, len(self.alphas_cumprod), generator)
        x_t = self.add_noise(z, noise, t)
        prompt = self._embeds(self.prompt_embeds, z.shape[0], torch.float32)
        eps = self.unet_update(x_t, t, encoder_hidden_states=prompt).sample
        return F.mse_loss(eps.float(), noise)


class RegularisedNetwork(nn.Module):
    """What ``train sr --vsd-weight`` trains: a MagicBokehNetwork and the regulariser ``vsd``.

    The network's parts are registered here under their own names, so the network's tensors
    keep their state-dict keys (checkpoints of runs with and without the regulariser agree on
    them) and the regulariser's keys start with :data:`REGULARISER_PREFIX`. One ``forward``
    computes the network's output and both regulariser terms, so DDP sees one forward pass.
    """

    def __init__(self, network: nn.Module, regulariser: VSDRegulariser) -> None:
        super().__init__()
        if list(network.parameters(recurse=False)) or list(network.buffers(recurse=False)):
            raise ValueError("the network must keep its tensors in sub-modules")
        for name, child in network.named_children():
            self.add_module(name, child)
        self.vsd = regulariser
        object.__setattr__(self, "network", network)  # its parts are registered above

    def forward(
        self,
        image: torch.Tensor,
        defocus: torch.Tensor,
        focus_mask: torch.Tensor | None,
        latent_noise: torch.Tensor | None = None,
        vsd_generator: torch.Generator | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The network's output; with ``vsd_generator`` a dict of ``image`` and the ``vsd`` and
        ``vsd_diffusion`` terms (random draws from ``vsd_generator``)."""
        if vsd_generator is None:
            return self.network(image, defocus, focus_mask, latent_noise=latent_noise)
        out = self.network(
            image, defocus, focus_mask, return_intermediates=True, latent_noise=latent_noise
        )
        z = out["x0"]
        return {
            "image": out["image"],
            "vsd": self.vsd.vsd_loss(z, vsd_generator),
            "vsd_diffusion": self.vsd.diffusion_loss(z, vsd_generator),
        }

    def train(self, mode: bool = True) -> RegularisedNetwork:
        super().train(mode)
        self.network.training = mode
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Gradient checkpointing in the network and in ``unet_update``'s diffusion pass."""
        self.network.enable_gradient_checkpointing()
        self.vsd.unet_update.enable_gradient_checkpointing()
