"""The defocus injector: a ControlNet copy of the pruned UNet's encoder giving 12 skip residuals.

Built from a stock diffusers ``ControlNetModel`` with the same config, from which the mid block,
``controlnet_mid_block`` and all cross-attention are removed, so its state-dict keys are the stock
ones minus the pruned ones (250 tensors for SD2.1-base). The conditioning embedding
(3→(16, 32, 96, 256)→C0 convolutions, /8 downsampling) is applied **outside** the encoder pass,
as the released inference does: :meth:`embed_condition` maps the defocus map to features that
:meth:`forward` adds once, after ``conv_in(z)``.

Shapes: defocus condition B×3×H×W in [-1, 1] (the one-channel map repeated), embedding
B×C0×H/8×W/8; latent B×4×H/8×W/8; residuals 3×(B×C0×h×w), then per level, as the UNet skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from magicbokeh.extras import LEARNED_ENGINE, require

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.modeling_utils import ModelMixin
except (ImportError, RuntimeError):  # diffusers wraps failed lazy imports in RuntimeError
    require("diffusion", "the learned engine", LEARNED_ENGINE)  # one line naming the extra
    raise

from magicbokeh.errors import MagicBokehError
from magicbokeh.model.unet import MagicBokehUNet, prune_cross_attention, time_embedding

__all__ = ["UNET_SHARED_ARGS", "MagicBokehControlNet", "controlnet_kwargs_from_config"]

#: UNet config entries the injector shares with its UNet (what ``ControlNetModel.from_unet``
#: carries over).
UNET_SHARED_ARGS = (
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
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
)
_CONTROLNET_ARGS = (
    *UNET_SHARED_ARGS,
    "conditioning_channels",
    "conditioning_embedding_out_channels",
)

_REQUIRED_VALUES: dict[str, Any] = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "controlnet_conditioning_channel_order": "rgb",
    "global_pool_conditions": False,
}


def controlnet_kwargs_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of :class:`MagicBokehControlNet` from a diffusers ControlNet config.

    Raises MagicBokehError for features the injector does not support.
    """
    for key, wanted in _REQUIRED_VALUES.items():
        if config.get(key, wanted) != wanted:
            raise MagicBokehError(
                f"controlnet config has {key}={config[key]!r}; MagicBokeh supports only {wanted!r}"
            )
    return {k: config[k] for k in _CONTROLNET_ARGS if k in config}


class MagicBokehControlNet(ModelMixin, ConfigMixin):
    """ControlNet encoder without mid block or cross-attention; returns the 12 skip residuals."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
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
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        stock = ControlNetModel(
            in_channels=in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=tuple(down_block_types),
            mid_block_type="UNetMidBlock2DCrossAttn",
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
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        )
        self.conv_in = stock.conv_in
        self.time_proj = stock.time_proj
        self.time_embedding = stock.time_embedding
        self.controlnet_cond_embedding = stock.controlnet_cond_embedding
        self.down_blocks = stock.down_blocks
        self.controlnet_down_blocks = stock.controlnet_down_blocks
        prune_cross_attention(self)

    @classmethod
    def from_unet(
        cls,
        unet: MagicBokehUNet,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
        conditioning_channels: int = 3,
    ) -> MagicBokehControlNet:
        """A new injector whose encoder copies ``unet``'s weights (embedding and zero convs fresh).

        ``unet`` must carry no LoRA layers (copy before adapters are added, or merge them first).
        """
        cfg = unet.config
        net = cls(
            in_channels=cfg.in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=cfg.flip_sin_to_cos,
            freq_shift=cfg.freq_shift,
            down_block_types=cfg.down_block_types,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            downsample_padding=cfg.downsample_padding,
            act_fn=cfg.act_fn,
            norm_num_groups=cfg.norm_num_groups,
            norm_eps=cfg.norm_eps,
            cross_attention_dim=cfg.cross_attention_dim,
            transformer_layers_per_block=cfg.transformer_layers_per_block,
            attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads,
            use_linear_projection=cfg.use_linear_projection,
            upcast_attention=cfg.upcast_attention,
            resnet_time_scale_shift=cfg.resnet_time_scale_shift,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
        )
        for name in ("conv_in", "time_embedding", "down_blocks"):
            getattr(net, name).load_state_dict(getattr(unet, name).state_dict())
        # torch's own ``to``: diffusers' override warns about fp32-only modules (there are none).
        return nn.Module.to(net, device=unet.device, dtype=unet.dtype)

    def embed_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """Conditioning embedding: B×3×H×W in [-1, 1] → B×C0×H/8×W/8."""
        return self.controlnet_cond_embedding(condition)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        cond_embedding: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> list[torch.Tensor]:
        """The 12 residuals for the UNet skips, each multiplied by ``conditioning_scale``.

        ``cond_embedding`` is the output of :meth:`embed_condition`, added after ``conv_in``.
        """
        emb = time_embedding(self.time_proj, self.time_embedding, timestep, sample)
        sample = self.conv_in(sample) + cond_embedding

        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=None)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if len(skips) != len(self.controlnet_down_blocks):
            raise MagicBokehError("ControlNet skip count does not match its zero convolutions")
        return [
            conv(s) * conditioning_scale
            for s, conv in zip(skips, self.controlnet_down_blocks, strict=True)
        ]


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value
