"""Focus-aware mask attention: the self-attention processor of the UNet's up blocks.

For tokens h (B×N×C) entering a self-attention layer ``attn`` (whose projections may carry the SR
LoRA), with bokeh-LoRA pairs Δ = B·A on q, k, v, out and scale s = alpha/r (alpha = 1):

- plain branch: O1 = softmax(Q·Kᵀ/√d)·V with Q, K, V = attn.to_q/k/v(h);
- focus branch: O2 = softmax(Q'·K'ᵀ/√d + M)·V' with Q' = Q + s·Δq(h) (same for K', V') and M the
  additive focus bias (0 within a class, −100 between in-focus and out-of-focus tokens; no bias when
  no focus mask is given);
- output: attn.to_out[1](attn.to_out[0](O1) + s·Δout(O2)).

O2 never passes through the base ``to_out``. This is the released computation, here with
``F.scaled_dot_product_attention`` and a per-sample B×1×N×N bias (correct for any batch size and
any token count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from magicbokeh.extras import LEARNED_ENGINE, require

try:
    from diffusers.models.attention_processor import Attention
except (ImportError, RuntimeError):  # diffusers wraps failed lazy imports in RuntimeError
    require("diffusion", "the learned engine", LEARNED_ENGINE)  # one line naming the extra
    raise

from magicbokeh.errors import MagicBokehError

__all__ = [
    "BOKEH_LORA_PROJECTIONS",
    "FocusMaskAttnProcessor",
    "focus_attention_layer_names",
    "install_focus_attention",
]

BOKEH_LORA_PROJECTIONS = ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora")


def _lora_pair(features: int, rank: int) -> nn.Sequential:
    down = nn.Linear(features, rank, bias=False)
    up = nn.Linear(rank, features, bias=False)
    nn.init.kaiming_uniform_(down.weight, a=5**0.5)
    nn.init.zeros_(up.weight)
    return nn.Sequential(down, up)


class FocusMaskAttnProcessor(nn.Module):
    """Self-attention processor with the bokeh LoRA and the focus mask (see module docstring).

    Parameters: ``to_{q,k,v,out}_lora`` = ``Sequential(Linear(C, r), Linear(r, C))`` without bias;
    A has kaiming-uniform init, B is zero. ``lora_scale`` = alpha / r.
    """

    def __init__(self, hidden_size: int, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if rank < 1:
            raise MagicBokehError(f"bokeh LoRA rank must be ≥ 1, got {rank}")
        self.hidden_size = hidden_size
        self.rank = rank
        self.lora_scale = alpha / rank
        self.to_q_lora = _lora_pair(hidden_size, rank)
        self.to_k_lora = _lora_pair(hidden_size, rank)
        self.to_v_lora = _lora_pair(hidden_size, rank)
        self.to_out_lora = _lora_pair(hidden_size, rank)

    def set_trainable(self, trainable: bool) -> None:
        """Switch ``requires_grad`` of the bokeh LoRA (True in bokeh phases, False in SR phases)."""
        for param in self.parameters():
            param.requires_grad_(trainable)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        focus_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # diffusers passes cross_attention_kwargs by the names in this signature.
        return super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, focus_bias
        )

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        focus_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden_states``: B×N×C tokens; ``focus_bias``: B×1×N×N additive logits or None."""
        if encoder_hidden_states is not None or attention_mask is not None:
            raise MagicBokehError("focus-aware attention is self-attention without attention_mask")
        if hidden_states.ndim != 3:
            raise MagicBokehError("focus-aware attention expects B×N×C tokens")
        batch, tokens, _ = hidden_states.shape
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, tokens, heads, -1).transpose(1, 2)

        def merge(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch, tokens, -1)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None):
            if attn.upcast_attention or attn.upcast_softmax:
                out_dtype = q.dtype
                q, k, v = q.float(), k.float(), v.float()
                bias = None if bias is None else bias.float()
                return merge(F.scaled_dot_product_attention(q, k, v, bias, scale=attn.scale)).to(
                    out_dtype
                )
            return merge(F.scaled_dot_product_attention(q, k, v, bias, scale=attn.scale))

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        plain = attend(split(query), split(key), split(value), None)

        s = self.lora_scale
        query = query + s * self.to_q_lora(hidden_states)
        key = key + s * self.to_k_lora(hidden_states)
        value = value + s * self.to_v_lora(hidden_states)
        if focus_bias is not None:
            if focus_bias.shape[-1] != tokens or focus_bias.shape[-2] != tokens:
                raise MagicBokehError(
                    f"focus bias is for {focus_bias.shape[-1]} tokens, the layer has {tokens}"
                )
            focus_bias = focus_bias.to(query.dtype)
        focused = attend(split(query), split(key), split(value), focus_bias)

        out = attn.to_out[0](plain) + s * self.to_out_lora(focused)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def focus_attention_layer_names(unet: nn.Module) -> list[str]:
    """Names of the self-attention layers (``attn1``) in the UNet's up blocks, in module order."""
    return [
        name
        for name, module in unet.named_modules()
        if isinstance(module, Attention)
        and name.startswith("up_blocks.")
        and name.endswith("attn1")
    ]


def install_focus_attention(unet: nn.Module, rank: int, alpha: float = 1.0) -> list[str]:
    """Put a :class:`FocusMaskAttnProcessor` on every up-block ``attn1``; returns the layer names.

    The processor becomes a registered submodule, so its weights appear in the UNet's state dict
    as ``<layer>.processor.to_{q,k,v,out}_lora.{0,1}.weight`` (the released key layout).
    """
    names = focus_attention_layer_names(unet)
    modules = dict(unet.named_modules())
    for name in names:
        layer = modules[name]
        processor = FocusMaskAttnProcessor(layer.inner_dim, rank, alpha)
        ref = next(layer.parameters())
        layer.set_processor(processor.to(device=ref.device, dtype=ref.dtype))
    return names
