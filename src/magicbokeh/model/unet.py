"""The pruned denoising UNet of MagicBokeh: SD2.1-base without mid block and cross-attention.

Built from a stock diffusers ``UNet2DConditionModel`` with the same config, from which the mid
block and every transformer block's ``attn2``/``norm2`` (cross-attention and its norm) are
removed. There is no text conditioning at all. The skips after the last down block go straight
into the first up block. State-dict keys are the stock SD keys minus the pruned ones, so SD2.1-base
weights load after dropping exactly :func:`is_pruned_unet_key` keys.

Shapes: ``sample`` B×C_in×h×w latent (h, w any size; 64×64 for a 512 tile), ``timestep`` a scalar
or a B-vector of diffusion steps, output B×C_out×h×w.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magicbokeh.extras import LEARNED_ENGINE, require

try:
    from diffusers import UNet2DConditionModel
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.modeling_utils import ModelMixin
except (ImportError, RuntimeError):  # diffusers wraps failed lazy imports in RuntimeError
    require("diffusion", "the learned engine", LEARNED_ENGINE)  # one line naming the extra
    raise

from magicbokeh.errors import MagicBokehError

__all__ = [
    "MagicBokehUNet",
    "focus_attention_bias",
    "is_pruned_unet_key",
    "prune_cross_attention",
    "time_embedding",
    "unet_kwargs_from_base_config",
]

_PRUNED_KEY = re.compile(r"^mid_block\.|\.attn2\.|\.transformer_blocks\.\d+\.norm2\.")

# Base-config entries that would change the computation of the kept parts, with the value
# MagicBokeh's network supports.
_REQUIRED_BASE_VALUES: dict[str, Any] = {
    "center_input_sample": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "time_embedding_type": "positional",
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "attention_type": "default",
    "num_class_embeds": None,
}

_UNET_ARGS = (
    "sample_size",
    "in_channels",
    "out_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "upcast_attention",
    "resnet_time_scale_shift",
    "conv_in_kernel",
    "conv_out_kernel",
    "dropout",
)

FOCUS_LOGIT_PENALTY = -100.0


def is_pruned_unet_key(key: str) -> bool:
    """True for SD UNet state-dict keys that the pruned UNet does not have.

    These are ``mid_block.*``, ``*.attn2.*`` and ``*.transformer_blocks.<i>.norm2.*`` (the
    LayerNorm in front of cross-attention; resnet ``norm2`` is kept).
    """
    return _PRUNED_KEY.search(key) is not None


def unet_kwargs_from_base_config(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of :class:`MagicBokehUNet` from an SD ``unet/config.json`` dict.

    Raises MagicBokehError when the config uses a feature the pruned network does not support.
    """
    for key, wanted in _REQUIRED_BASE_VALUES.items():
        value = config.get(key, wanted)
        if value != wanted and not (isinstance(wanted, float) and value == wanted):
            raise MagicBokehError(
                f"unet config has {key}={value!r}; MagicBokeh supports only {key}={wanted!r} "
                "(an SD2.1-base style UNet)"
            )
    return {k: config[k] for k in _UNET_ARGS if k in config}


def prune_cross_attention(module: nn.Module) -> None:
    """Remove ``attn2`` and ``norm2`` from every ``BasicTransformerBlock`` inside ``module``."""
    for block in module.modules():
        if isinstance(block, BasicTransformerBlock):
            block.attn2 = None
            block.norm2 = None


def time_embedding(
    time_proj: nn.Module, time_mlp: nn.Module, timestep: torch.Tensor | int, sample: torch.Tensor
) -> torch.Tensor:
    """Sinusoidal projection of ``timestep``, then the MLP, as diffusers computes it: B×C_emb."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.int64, device=sample.device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(sample.device)
    timestep = timestep.expand(sample.shape[0])
    t_emb = time_proj(timestep).to(dtype=sample.dtype)
    return time_mlp(t_emb, None)


def focus_attention_bias(
    focus_mask: torch.Tensor, size: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """Additive attention logits that keep in-focus and out-of-focus tokens apart.

    ``focus_mask``: B×1×H×W, true/1 where in focus, at any resolution. It is resampled to
    ``size`` = (h, w) tokens by nearest neighbour (``F.interpolate(mode='nearest')``, which picks
    pixel (⌊i·H/h⌋, ⌊j·W/w⌋)). Returns B×1×N×N (N = h·w): 0 between tokens of the same class,
    −100 between tokens of different classes (applied after the 1/√d scaling).
    """
    mask = F.interpolate(focus_mask.float(), size=size, mode="nearest").flatten(1) > 0.5
    same = mask[:, :, None] == mask[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=focus_mask.device)
    penalty = torch.full((), FOCUS_LOGIT_PENALTY, dtype=dtype, device=focus_mask.device)
    return torch.where(same, zero, penalty)[:, None]


class MagicBokehUNet(ModelMixin, ConfigMixin):
    """SD-style UNet with no mid block and no cross-attention (MagicBokeh's "block pruning").

    The constructor takes the stock ``UNet2DConditionModel`` arguments listed in ``_UNET_ARGS``
    (``cross_attention_dim`` only sizes the removed layers). Submodules and state-dict keys are
    those of the stock model: ``conv_in``, ``time_embedding``, ``down_blocks``, ``up_blocks``,
    ``conv_norm_out``, ``conv_out``.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types: Sequence[str] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        transformer_layers_per_block: int | Sequence[int] = 1,
        attention_head_dim: int | Sequence[int] = (5, 10, 20, 20),
        num_attention_heads: int | Sequence[int] | None = None,
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stock = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            attention_head_dim=_as_tuple(attention_head_dim),
            num_attention_heads=_as_tuple(num_attention_heads),
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            conv_in_kernel=conv_in_kernel,
            conv_out_kernel=conv_out_kernel,
            dropout=dropout,
            mid_block_type=None,
        )
        self.conv_in = stock.conv_in
        self.time_proj = stock.time_proj
        self.time_embedding = stock.time_embedding
        self.down_blocks = stock.down_blocks
        self.up_blocks = stock.up_blocks
        self.conv_norm_out = stock.conv_norm_out
        self.conv_act = stock.conv_act
        self.conv_out = stock.conv_out
        self.num_upsamplers = stock.num_upsamplers
        prune_cross_attention(self)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        focus_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise ε for ``sample`` at ``timestep``.

        ``down_block_additional_residuals``: the ControlNet's 12 residuals, added to the 12 skips.
        ``focus_mask``: B×1×H×W (1 = in focus, any resolution) for the focus-aware attention
        processors of the up blocks; None means no masking (all tokens one class).
        """
        overall_up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(dim % overall_up_factor != 0 for dim in sample.shape[-2:])

        emb = time_embedding(self.time_proj, self.time_embedding, timestep, sample)
        sample = self.conv_in(sample)

        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=None)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res

        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise MagicBokehError(
                    f"got {len(down_block_additional_residuals)} ControlNet residuals for "
                    f"{len(skips)} UNet skips; use a ControlNet built for this UNet"
                )
            skips = tuple(
                s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)
            )

        biases: dict[tuple[int, int], torch.Tensor] = {}
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            is_final = i == len(self.up_blocks) - 1
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            if not is_final and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                kwargs = None
                if focus_mask is not None:
                    size = (int(res[-1].shape[-2]), int(res[-1].shape[-1]))
                    if size not in biases:
                        biases[size] = focus_attention_bias(focus_mask, size, sample.dtype)
                    kwargs = {"focus_bias": biases[size]}
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=None,
                    cross_attention_kwargs=kwargs,
                    upsample_size=upsample_size,
                )
            else:
                sample = block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    upsample_size=upsample_size,
                )

        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        return self.conv_out(sample)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value
