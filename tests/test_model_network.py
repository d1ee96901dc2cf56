"""Tiny random MagicBokehNetwork: checkpoint round trip, errors, batching, tile sizes, dtypes."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.torch import load_file, save_file  # noqa: E402

from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.model.mask_attention import FocusMaskAttnProcessor  # noqa: E402
from magicbokeh.model.network import CONFIG_FILE, WEIGHTS_FILE, MagicBokehNetwork  # noqa: E402
from magicbokeh.model.unet import MagicBokehUNet  # noqa: E402
from tiny_models import UNET, tiny_network  # noqa: E402


@pytest.fixture(scope="module")
def network() -> MagicBokehNetwork:
    return tiny_network()


def inputs(batch: int = 1, height: int = 32, width: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=gen) * 2 - 1
    defocus = torch.rand(batch, 1, height, width, generator=gen) * 2 - 1
    mask = torch.rand(batch, 1, height, width, generator=gen) > 0.5
    return image, defocus, mask


def test_save_and_load_round_trip_is_exact(network, tmp_path):
    network.save_pretrained(tmp_path / "net")
    loaded = MagicBokehNetwork.from_pretrained(tmp_path / "net")
    ref_state, new_state = network.state_dict(), loaded.state_dict()
    assert list(ref_state) == list(new_state)
    for key in ref_state:
        assert torch.equal(ref_state[key], new_state[key]), key
    image, defocus, mask = inputs()
    with torch.no_grad():
        assert torch.equal(network(image, defocus, mask), loaded(image, defocus, mask))
    assert json.loads((tmp_path / "net" / CONFIG_FILE).read_text())["rank_bokeh"] == 8


def test_parent_folder_with_network_subfolder_loads(network, tmp_path):
    network.save_pretrained(tmp_path / "network")
    loaded = MagicBokehNetwork.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16


def test_missing_and_incomplete_folders_name_the_file_and_the_fix(network, tmp_path):
    with pytest.raises(MagicBokehError, match="magicbokeh download"):
        MagicBokehNetwork.from_pretrained(tmp_path / "nowhere")
    folder = network.save_pretrained(tmp_path / "net")
    weights = load_file(str(folder / WEIGHTS_FILE))

    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(MagicBokehError, match=f"{WEIGHTS_FILE}.*magicbokeh download"):
        MagicBokehNetwork.from_pretrained(folder)

    dropped = sorted(weights)[5]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(folder / WEIGHTS_FILE))
    with pytest.raises(MagicBokehError, match=f"incomplete.*{dropped}.*magicbokeh download"):
        MagicBokehNetwork.from_pretrained(folder)

    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(MagicBokehError, match="damaged"):
        MagicBokehNetwork.from_pretrained(folder)

    save_file({**weights, "extra.weight": torch.zeros(1)}, str(folder / WEIGHTS_FILE))
    with pytest.raises(MagicBokehError, match="unknown.*extra.weight"):
        MagicBokehNetwork.from_pretrained(folder)

    (folder / CONFIG_FILE).unlink()
    with pytest.raises(MagicBokehError, match=f"{CONFIG_FILE}.*magicbokeh download"):
        MagicBokehNetwork.from_pretrained(folder)


def test_batch_items_are_independent(network):
    image, defocus, mask = inputs(batch=2, seed=3)
    mask[1] = ~mask[1]
    with torch.no_grad():
        together = network(image, defocus, mask, return_intermediates=True)["decoded"]
        alone = [network(image[i : i + 1], defocus[i : i + 1], mask[i : i + 1]) for i in range(2)]
    for i in range(2):
        torch.testing.assert_close(together[i : i + 1].clamp(-1, 1), alone[i], atol=1e-5, rtol=0)


def test_focus_mask_changes_output_and_all_in_focus_equals_no_mask(network):
    image, defocus, mask = inputs(seed=4)
    with torch.no_grad():
        masked = network(image, defocus, mask)
        uniform = network(image, defocus, torch.ones_like(mask))
        unmasked = network(image, defocus, None)
    assert (masked - uniform).abs().max() > 1e-4
    torch.testing.assert_close(uniform, unmasked, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(48, 80), (40, 24)])
def test_any_tile_size_with_masks_from_the_actual_latent_size(network, size):
    image, defocus, mask = inputs(height=size[0], width=size[1], seed=5)
    with torch.no_grad():
        out = network(image, defocus, mask)
    assert out.shape == (1, 3, *size)
    assert out.abs().max() <= 1


def test_rejects_bad_shapes(network):
    image, defocus, mask = inputs()
    with pytest.raises(MagicBokehError):
        network(image[:, :, :30], defocus[:, :, :30], mask[:, :, :30])
    with pytest.raises(MagicBokehError):
        network(image, defocus[:, :, :16], mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_close_to_float32(network, tmp_path, dtype):
    network.save_pretrained(tmp_path / "net")
    low = MagicBokehNetwork.from_pretrained(tmp_path / "net", torch_dtype=dtype)
    image, defocus, mask = inputs(seed=6)
    with torch.no_grad():
        ref = network(image, defocus, mask)
        out = low(image, defocus, mask)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().mean() < 0.05


def test_bokeh_lora_trainability_flag(network):
    processors = [m for m in network.unet.modules() if isinstance(m, FocusMaskAttnProcessor)]
    assert len(processors) == len(network.focus_attention_layers) == 2
    network.requires_grad_(False)
    network.set_bokeh_lora_trainable(True)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and all(".processor.to_" in n for n in trainable)
    assert len(trainable) == 2 * 4 * 2
    network.set_bokeh_lora_trainable(False)
    assert not any(p.requires_grad for p in network.parameters())


def test_controlnet_from_unet_copies_the_encoder():
    from magicbokeh.model.controlnet import MagicBokehControlNet

    torch.manual_seed(2)
    unet = MagicBokehUNet(**UNET)
    controlnet = MagicBokehControlNet.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    unet_state = unet.state_dict()
    copied = [k for k in controlnet.state_dict() if k in unet_state]
    assert copied and all(
        k.startswith(("conv_in", "time_embedding", "down_blocks")) for k in copied
    )
    assert all(torch.equal(controlnet.state_dict()[k], unet_state[k]) for k in copied)
    assert len(controlnet.controlnet_down_blocks) == 4
    z = torch.randn(1, 4, 16, 16)
    cond = controlnet.embed_condition(torch.zeros(1, 3, 32, 32))
    residuals = controlnet(z, 999, cond)
    assert [r.shape[1] for r in residuals] == [32, 32, 32, 64]
    assert all(r.abs().max() == 0 for r in residuals)  # zero convolutions start at zero


def test_unsupported_base_configs_are_refused():
    from magicbokeh.model.unet import unet_kwargs_from_base_config

    with pytest.raises(MagicBokehError, match="class_embed_type"):
        unet_kwargs_from_base_config({**UNET, "class_embed_type": "timestep"})
    assert unet_kwargs_from_base_config({**UNET, "mid_block_type": "UNetMidBlock2DCrossAttn"})


def test_merged_sr_lora_gives_the_same_output_and_guards_saving_and_training(network, tmp_path):
    from magicbokeh.pipeline import MagicBokehPipeline

    network.save_pretrained(tmp_path / "net")
    merged = MagicBokehNetwork.from_pretrained(tmp_path / "net")
    assert merged.merge_sr_lora() > 0 and merged.sr_lora_merged
    assert merged.merge_sr_lora() == 0  # merging twice is a no-op
    image, defocus, mask = inputs(batch=2)
    with torch.no_grad():
        reference = network(image, defocus, mask)
        torch.testing.assert_close(merged(image, defocus, mask), reference, atol=1e-4, rtol=0)
    with pytest.raises(MagicBokehError, match="unmerge_sr_lora"):
        merged.save_pretrained(tmp_path / "merged")
    with pytest.raises(MagicBokehError, match="unmerge_sr_lora"):
        merged.train()
    assert not (tmp_path / "merged").exists()
    merged.unmerge_sr_lora()
    assert not merged.sr_lora_merged
    merged.train()
    merged.eval()
    pipeline = MagicBokehPipeline.from_pretrained(
        tmp_path / "net", torch_dtype=torch.bfloat16, merge_lora=True
    )
    assert pipeline.network.sr_lora_merged and pipeline.network.dtype == torch.bfloat16
