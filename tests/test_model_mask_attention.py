"""Focus-aware mask attention equals a direct transcription of its formula, any batch and size."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.models.attention_processor import Attention  # noqa: E402

from magicbokeh.model.mask_attention import FocusMaskAttnProcessor  # noqa: E402
from magicbokeh.model.unet import focus_attention_bias  # noqa: E402


def reference(attn, proc, h, in_focus):
    """baddbmm + softmax per sample: O1 plain, O2 with LoRA'd q/k/v and a −100 cross-class mask."""
    outs = []
    s = proc.lora_scale
    for b in range(h.shape[0]):
        x = h[b]
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        q2 = q + s * proc.to_q_lora(x)
        k2 = k + s * proc.to_k_lora(x)
        v2 = v + s * proc.to_v_lora(x)
        m = in_focus[b].float()
        mask = torch.where((m[None, :] - m[:, None]) != 0, -100.0, 0.0)

        def attend(q, k, v, bias, heads=attn.heads):
            qh = q.view(-1, heads, q.shape[-1] // heads).transpose(0, 1)
            kh = k.view(-1, heads, k.shape[-1] // heads).transpose(0, 1)
            vh = v.view(-1, heads, v.shape[-1] // heads).transpose(0, 1)
            scores = torch.baddbmm(
                bias.expand(heads, -1, -1), qh, kh.transpose(1, 2), beta=1, alpha=attn.scale
            )
            return (scores.softmax(-1) @ vh).transpose(0, 1).reshape(q.shape)

        o1 = attend(q, k, v, torch.zeros_like(mask))
        o2 = attend(q2, k2, v2, mask)
        outs.append(attn.to_out[0](o1) + s * proc.to_out_lora(o2))
    return torch.stack(outs)


@pytest.fixture
def layer():
    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=2, dim_head=32, bias=False, out_bias=True)
    proc = FocusMaskAttnProcessor(64, rank=8)
    with torch.no_grad():
        for seq in (proc.to_q_lora, proc.to_k_lora, proc.to_v_lora, proc.to_out_lora):
            seq[1].weight.normal_(0, 0.5)
    attn.set_processor(proc)
    return attn, proc


@pytest.mark.parametrize("grid", [(8, 8), (6, 10)])
def test_matches_formula_for_batches_and_non_square_grids(layer, grid):
    attn, proc = layer
    gen = torch.Generator().manual_seed(1)
    batch, n = 3, grid[0] * grid[1]
    h = torch.randn(batch, n, 64, generator=gen)
    pixel_mask = torch.rand(batch, 1, grid[0] * 8, grid[1] * 8, generator=gen) > 0.4
    bias = focus_attention_bias(pixel_mask, grid, torch.float32)
    assert bias.shape == (batch, 1, n, n)
    in_focus = pixel_mask[:, 0, ::8, ::8].reshape(batch, n)
    with torch.no_grad():
        ours = attn(h, focus_bias=bias)
        ref = reference(attn, proc, h, in_focus)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_bias_samples_nearest_top_left_pixels():
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[0, 0, 0, 0] = True  # sampled by an 8×8 grid (stride 2) and a 4×4 grid (stride 4)
    mask[0, 0, 1, 1] = True  # never sampled
    for size in [(8, 8), (4, 4)]:
        bias = focus_attention_bias(mask, size, torch.float32)[0, 0]
        assert bias[0, 1] == -100 and bias[1, 2] == 0 and bias[0, 0] == 0
        assert (bias != 0).sum() == 2 * (size[0] * size[1] - 1)


def test_out_lora_alone_carries_the_focus_branch(layer):
    attn, proc = layer
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(1, 16, 64, generator=gen)
    with torch.no_grad():
        proc.to_out_lora[1].weight.zero_()
        q, k, v = (
            x.view(1, 16, 2, 32).transpose(1, 2) for x in (attn.to_q(h), attn.to_k(h), attn.to_v(h))
        )
        o1 = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        plain = attn.to_out[0](o1.transpose(1, 2).reshape(1, 16, 64))
        torch.testing.assert_close(attn(h), plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(layer, dtype):
    attn, proc = layer
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 16, 64, generator=gen)
    mask = torch.rand(2, 1, 4, 4, generator=gen) > 0.5
    with torch.no_grad():
        ref = attn(h, focus_bias=focus_attention_bias(mask, (4, 4), torch.float32))
        attn.to(dtype)
        out = attn(h.to(dtype), focus_bias=focus_attention_bias(mask, (4, 4), dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
