"""Training memory of MagicBokeh at full size (SD2.1-base widths), 512², batch 4.

No GPU is needed: the full-size network and the LPIPS-VGG loss are built on PyTorch's *meta*
device (shapes without data), and one training forward pass per configuration is run with a
``saved_tensors_hooks`` counter that adds up the bytes autograd keeps for the backward pass
(each storage once, parameters excluded). With gradient checkpointing the count is the tensors
kept outside the checkpointed blocks, the blocks' inputs, and the largest block's own saved
tensors (recomputed one block at a time during the backward pass).

bf16 autocast keeps most activations in bf16 but some in float32; the ratio bf16/fp32 of saved
bytes is measured on the tiny test network on the CPU (real tensors, CPU autocast) and applied
to the full-size counts. The same counter run on real tensors and on meta tensors of the tiny
network gives the same bytes (printed as a check).

Persistent memory: float32 weights of everything, float32 gradients of the phase's trainable
parameters, AdamW's two float32 moments of every parameter some phase has trained so far
(each phase keeps its own optimizer state). Not counted: the CUDA context (≈0.5 GiB), the
allocator's fragmentation, temporary buffers of single operations, data loading.

The VSD regulariser (``train sr --vsd-weight``) adds, on top of stage 1: the stock UNet twice
(``unet_update`` in float32, ``unet_fix`` in bf16 under bf16 autocast), the LoRA's float32
gradients and AdamW moments, and the activations of ``unet_update``'s diffusion-loss pass (the
VSD pass runs without gradients and keeps nothing for the backward pass).

Run: ``python benchmarks/train_memory.py`` (a minute on a 2-core CPU).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_learned import CONTROLNET, SCHEDULER, UNET, VAE  # noqa: E402  (SD2.1-base sizes)
from magicbokeh.metrics.lpips import LPIPS  # noqa: E402
from magicbokeh.model.lora import (  # noqa: E402
    LORA_ALPHA,
    stock_unet_lora_targets,
    unet_lora_target_recipe,
    vae_lora_target_recipe,
)
from magicbokeh.model.network import MagicBokehNetwork  # noqa: E402
from magicbokeh.model.unet import MagicBokehUNet  # noqa: E402
from magicbokeh.train.model_tasks import parameter_parts  # noqa: E402

GIB = 2**30
#: Tile side of the tiny-network measurement (large enough that activations, not weight
#: copies, dominate the saved bytes).
RATIO_SIZE = 256
#: (name, trainable parts, parts whose optimizer state exists, inputs are bokeh items)
CONFIGS = (
    (
        "train sr (stage 1)",
        ("sr_lora", "conv_in", "vae_lora"),
        ("sr_lora", "conv_in", "vae_lora"),
        False,
    ),
    (
        "train bokeh, bokeh phase",
        ("controlnet", "bokeh_lora"),
        ("controlnet", "bokeh_lora", "sr_lora", "conv_in"),
        True,
    ),
    (
        "train bokeh, SR phase",
        ("sr_lora", "conv_in"),
        ("controlnet", "bokeh_lora", "sr_lora", "conv_in"),
        False,
    ),
)


def full_network() -> MagicBokehNetwork:
    with torch.device("meta"):
        unet = MagicBokehUNet(**UNET)
        encoder, decoder = unet_lora_target_recipe(unet)
        vae_targets = vae_lora_target_recipe(AutoencoderKL(**VAE))
        return MagicBokehNetwork(
            unet_config=UNET,
            controlnet_config=CONTROLNET,
            vae_config=VAE,
            scheduler_config=SCHEDULER,
            unet_lora_encoder_modules=encoder,
            unet_lora_decoder_modules=decoder,
            vae_lora_encoder_modules=vae_targets,
        )


class SavedBytes:
    """Counts the storages autograd saves (once each), parameters excluded."""

    def __init__(self, modules) -> None:
        self.params = {self.key(p) for m in modules for p in m.parameters()}
        self.saved: dict[int, int] = {}
        self.largest_block = 0

    @staticmethod
    def key(tensor: torch.Tensor) -> int:
        storage = tensor.untyped_storage()
        return storage.data_ptr() if tensor.device.type != "meta" else storage._cdata

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = self.key(tensor)
        if key not in self.params:
            self.saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def checkpointed(self, module, *args):
        """Stand-in for the checkpoint function: keep the inputs, measure the block alone."""
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.requires_grad:
                self.saved.setdefault(self.key(arg), arg.untyped_storage().nbytes())
        inner = SavedBytes([])
        inner.params = self.params
        with inner.hooks():
            out = module(*args)
        self.largest_block = max(self.largest_block, inner.total)
        return out

    @property
    def total(self) -> int:
        return sum(self.saved.values()) + self.largest_block


class _FusedAttention(torch.autograd.Function):
    """Attention that keeps what fused GPU kernels keep: q, k, v, the output, the log-sum-exp
    (and the bias), not the N×N attention matrix that the meta device's reference path keeps."""

    @staticmethod
    def forward(ctx, query, key, value, bias):
        out = torch.empty_like(query)
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        saved = (query, key, value, out, logsumexp) + ((bias,) if bias is not None else ())
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the count needs no backward pass
        raise NotImplementedError


@contextlib.contextmanager
def fused_attention():
    """Route ``F.scaled_dot_product_attention`` through :class:`_FusedAttention` (meta only)."""
    original = torch.nn.functional.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, *args, **kwargs):
        return _FusedAttention.apply(query, key, value, attn_mask)

    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def activation_bytes(network, lpips, trainable, bokeh, checkpointing, size, batch, device) -> int:
    parts = parameter_parts(network)
    for _, param in network.named_parameters():
        param.requires_grad_(False)
    for part in trainable:
        for _, param in parts[part]:
            param.requires_grad_(True)
    counter = SavedBytes([network, lpips])
    with contextlib.suppress(ValueError):
        network.disable_gradient_checkpointing()
    if checkpointing:
        network._set_gradient_checkpointing(True, counter.checkpointed)
    image = torch.zeros(batch, 3, size, size, device=device)
    defocus = torch.zeros(batch, 1, size, size, device=device)
    mask = torch.ones(batch, 1, size, size, device=device) if bokeh else None
    fused = fused_attention() if device == "meta" else contextlib.nullcontext()
    with counter.hooks(), fused:
        out = network(image, defocus, mask)
        loss = (out - image).square().mean() + 2 * lpips(out, image).mean()
    assert loss.requires_grad
    return counter.total


def tiny_ratio() -> tuple[float, int, int]:
    """bf16/fp32 saved-bytes ratio of the tiny network on the CPU, and the meta-count check."""
    from tiny_models import tiny_network

    network = tiny_network(vae_levels=4).train()
    lpips = LPIPS("vgg")
    fp32 = activation_bytes(
        network, lpips, ("sr_lora", "conv_in", "vae_lora"), False, False, RATIO_SIZE, 2, "cpu"
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = activation_bytes(
            network, lpips, ("sr_lora", "conv_in", "vae_lora"), False, False, RATIO_SIZE, 2, "cpu"
        )
    meta = activation_bytes(
        network.to("meta"),
        lpips.to("meta"),
        ("sr_lora", "conv_in", "vae_lora"),
        False,
        False,
        RATIO_SIZE,
        2,
        "meta",
    )
    return bf16 / fp32, fp32, meta


def main() -> float:
    """Print the stage table; returns the bf16/fp32 ratio."""
    ratio, tiny_fp32, tiny_meta = tiny_ratio()
    print(f"tiny network, {RATIO_SIZE}², batch 2: saved fp32 bytes on CPU {tiny_fp32}, ", end="")
    print(f"on meta {tiny_meta}")
    print(f"bf16/fp32 saved-bytes ratio (tiny network, CPU autocast): {ratio:.3f}\n")
    network = full_network()
    with torch.device("meta"):
        lpips = LPIPS("vgg")
    parts = parameter_parts(network)
    counts = {name: sum(p.numel() for _, p in params) for name, params in parts.items()}
    total = sum(counts.values())
    print("parameters (M): " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in counts.items()))
    lpips_count = sum(p.numel() for p in lpips.parameters())
    print(f"total {total / 1e6:.2f} M; LPIPS-VGG {lpips_count / 1e6:.2f} M\n")
    weights = (total + lpips_count) * 4
    columns = (
        "configuration",
        "trainable (M)",
        "weights + grads + AdamW (GiB)",
        "activations fp32, no GC",
        "bf16, no GC",
        "bf16, GC",
        "total bf16 no GC",
        "total bf16 GC",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for name, trainable, stateful, bokeh in CONFIGS:
        train_params = sum(counts[p] for p in trainable)
        state = weights + 4 * train_params + 8 * sum(counts[p] for p in stateful)
        plain = activation_bytes(network, lpips, trainable, bokeh, False, 512, 4, "meta")
        ckpt = activation_bytes(network, lpips, trainable, bokeh, True, 512, 4, "meta")
        print(
            f"| {name} | {train_params / 1e6:.1f} | {state / GIB:.1f} | {plain / GIB:.1f} | "
            f"{plain * ratio / GIB:.1f} | {ckpt * ratio / GIB:.1f} | "
            f"{(state + plain * ratio) / GIB:.1f} | {(state + ckpt * ratio) / GIB:.1f} |"
        )
    return ratio


def vsd_memory(ratio: float) -> None:
    """The VSD regulariser's additions to stage 1 (512², batch 4 → 64² latents)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET)
        config = LoraConfig(
            r=4, lora_alpha=LORA_ALPHA, target_modules=stock_unet_lora_targets(unet)
        )
        inject_adapter_in_model(config, unet, adapter_name="vsd")
    lora = [p for n, p in unet.named_parameters() if ".lora_" in n]
    stock = sum(p.numel() for p in unet.parameters()) - sum(p.numel() for p in lora)
    lora_count = sum(p.numel() for p in lora)
    persistent = stock * 4 + stock * 2 + lora_count * (4 + 4 + 8)
    print(f"\nVSD: stock UNet {stock / 1e6:.1f} M, regulariser LoRA {lora_count / 1e6:.2f} M")
    print(
        f"persistent (unet_update fp32, unet_fix bf16, LoRA grads + AdamW): {persistent / GIB:.1f}"
    )
    unet.requires_grad_(False)
    for param in lora:
        param.requires_grad_(True)
    counts = []
    for checkpointing in (False, True):
        counter = SavedBytes([unet])
        with contextlib.suppress(ValueError):
            unet.disable_gradient_checkpointing()
        if checkpointing:
            unet._set_gradient_checkpointing(True, counter.checkpointed)
        latents = torch.zeros(4, 4, 64, 64, device="meta")
        text = torch.zeros(4, 77, 1024, device="meta")
        steps = torch.zeros(4, dtype=torch.long, device="meta")
        with counter.hooks(), fused_attention():
            eps = unet(latents, steps, encoder_hidden_states=text).sample
            loss = (eps - latents).square().mean()
        assert loss.requires_grad
        counts.append(counter.total)
    plain, ckpt = counts
    print(
        f"diffusion-loss activations: fp32 no GC {plain / GIB:.1f}, bf16 no GC "
        f"{plain * ratio / GIB:.1f}, bf16 GC {ckpt * ratio / GIB:.1f} GiB"
    )


if __name__ == "__main__":
    vsd_memory(main())
