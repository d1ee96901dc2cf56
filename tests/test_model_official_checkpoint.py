"""Reading the released formats (SD2.1-base + lora.pkl): pruning, recipes, checks, conversion."""

from __future__ import annotations

import shutil
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.model.controlnet import (  # noqa: E402
    MagicBokehControlNet,
    controlnet_kwargs_from_config,
)
from magicbokeh.model.lora import unet_lora_target_recipe, vae_lora_target_recipe  # noqa: E402
from magicbokeh.model.network import MagicBokehNetwork, read_config  # noqa: E402
from magicbokeh.model.official import (  # noqa: E402
    convert_official,
    network_from_official,
    read_official_checkpoint,
)
from magicbokeh.model.unet import (  # noqa: E402
    MagicBokehUNet,
    is_pruned_unet_key,
    unet_kwargs_from_base_config,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "official_tiny"
BASE = VECTORS / "base"
PKL = VECTORS / "lora.pkl"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"

pytestmark = [
    pytest.mark.vectors,
    pytest.mark.skipif(not VECTORS.is_dir(), reason=f"test vectors not found at {VECTORS}"),
]


def test_pruned_unet_drops_exactly_the_pruned_keys():
    base = load_file(str(BASE / UNET_WEIGHTS))
    dropped = [k for k in base if is_pruned_unet_key(k)]
    kinds = Counter(
        "mid_block" if k.startswith("mid_block.") else "attn2" if ".attn2." in k else "norm2"
        for k in dropped
    )
    assert len(base) == 686 and len(dropped) == 151
    assert kinds == {"mid_block": 46, "attn2": 75, "norm2": 30}
    resnet_norms = [k for k in base if ".resnets." in k and ".norm2." in k]
    assert all(is_pruned_unet_key(k) == k.startswith("mid_block.") for k in resnet_norms)
    unet = MagicBokehUNet(**unet_kwargs_from_base_config(read_config(BASE / "unet/config.json")))
    assert set(unet.state_dict()) == set(base) - set(dropped)


def test_target_recipes_reproduce_the_checkpoint_lists():
    ckpt = read_official_checkpoint(PKL)
    unet = MagicBokehUNet(**unet_kwargs_from_base_config(read_config(BASE / "unet/config.json")))
    encoder, decoder = unet_lora_target_recipe(unet)
    assert (len(encoder), len(decoder)) == (70, 112)
    assert encoder == ckpt.unet_lora_encoder_modules
    assert decoder == ckpt.unet_lora_decoder_modules
    vae = AutoencoderKL.from_config(read_config(BASE / "vae/config.json"))
    assert vae_lora_target_recipe(vae) == ckpt.vae_lora_encoder_modules


def test_checkpoint_content():
    ckpt = read_official_checkpoint(PKL)
    assert (ckpt.rank_unet, ckpt.rank_vae, ckpt.rank_bokeh) == (4, 4, 8)
    assert len(ckpt.state_dict_unet) == 366
    assert len(ckpt.state_dict_vae) == 62
    assert len(ckpt.processor_state_dict) == 72
    assert len(ckpt.controlnet_state_dict) == 250
    assert ckpt.controlnet_config["conditioning_embedding_out_channels"] == [16, 32, 96, 256]


def test_convert_then_load_gives_the_same_network(tmp_path):
    direct = network_from_official(BASE, PKL)
    out = convert_official(BASE, PKL, tmp_path / "converted")
    assert (out / "magicbokeh.json").is_file()
    loaded = MagicBokehNetwork.from_pretrained(out)
    ref, new = direct.state_dict(), loaded.state_dict()
    assert list(ref) == list(new)
    assert all(torch.equal(ref[k], new[k]) for k in ref)


def test_depth_hook_is_called(tmp_path):
    calls = []

    def converter(src: Path, dst: Path) -> None:
        calls.append((src, dst))
        dst.mkdir()
        (dst / "config.json").write_text("{}")

    convert_official(
        BASE, PKL, tmp_path / "out", depth_pth=tmp_path / "DAdepth.pth", depth_converter=converter
    )
    # The hook writes into the folder being built, which lands at out/ when complete.
    assert [(src, dst.name) for src, dst in calls] == [(tmp_path / "DAdepth.pth", "depth")]
    assert (tmp_path / "out" / "depth" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def write_released_pkl(path: Path, mutate=None) -> None:
    """Re-save the vectors' lora.pkl in the released layout, the ControlNet pickled as
    ``models.controlnet.ControlNetModel`` (through temporary stand-in modules), after ``mutate``."""
    ckpt = read_official_checkpoint(PKL)
    released = type("ControlNetModel", (MagicBokehControlNet,), {"__module__": "models.controlnet"})
    controlnet = MagicBokehControlNet(**controlnet_kwargs_from_config(ckpt.controlnet_config))
    controlnet.load_state_dict(ckpt.controlnet_state_dict)
    controlnet.__class__ = released
    raw = {
        "rank_unet": ckpt.rank_unet,
        "unet_lora_encoder_modules": ckpt.unet_lora_encoder_modules,
        "unet_lora_decoder_modules": ckpt.unet_lora_decoder_modules,
        "state_dict_unet": ckpt.state_dict_unet,
        "rank_vae": ckpt.rank_vae,
        "vae_lora_encoder_modules": ckpt.vae_lora_encoder_modules,
        "state_dict_vae": ckpt.state_dict_vae,
        "controlnet": controlnet,
        "state_dict_attn": ckpt.rank_bokeh,
        "processor_state_dict": ckpt.processor_state_dict,
    }
    if mutate is not None:
        mutate(raw)
    package, module = types.ModuleType("models"), types.ModuleType("models.controlnet")
    module.ControlNetModel = released
    package.controlnet = module
    saved = {name: sys.modules.get(name) for name in ("models", "models.controlnet")}
    sys.modules.update({"models": package, "models.controlnet": module})
    try:
        torch.save(raw, path)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _add_unknown_lora(raw):
    raw["state_dict_unet"]["up_blocks.9.bogus.lora_A.default_decoder.weight"] = torch.zeros(4, 4)


def _reshape_processor(raw):
    key = "up_blocks.2.attentions.1.transformer_blocks.0.attn1.processor.to_v_lora.1.weight"
    raw["processor_state_dict"][key] = torch.zeros(64, 4)


def _drop_lora(raw):
    del raw["state_dict_vae"]["quant_conv.lora_B.default_encoder.weight"]


def _extra_top_level(raw):
    raw["optimizer"] = {}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_add_unknown_lora, r"state_dict_unet.*up_blocks\.9\.bogus"),
        (_reshape_processor, r"to_v_lora\.1\.weight has shape \(64, 4\).*\(64, 8\)"),
        (_drop_lora, r"lacks the tensor quant_conv\.lora_B"),
        (_extra_top_level, r"unknown keys \['optimizer'\]"),
    ],
)
def test_bad_checkpoints_are_reported(tmp_path, mutate, message):
    path = tmp_path / "lora.pkl"
    write_released_pkl(path, mutate)
    with pytest.raises(MagicBokehError, match=message):
        network_from_official(BASE, path)


def test_released_layout_pickle_loads_like_the_original(tmp_path):
    path = tmp_path / "lora.pkl"
    write_released_pkl(path)
    ckpt, ref = read_official_checkpoint(path), read_official_checkpoint(PKL)
    kwargs = controlnet_kwargs_from_config
    assert kwargs(ckpt.controlnet_config) == kwargs(ref.controlnet_config)
    assert list(ckpt.controlnet_state_dict) == list(ref.controlnet_state_dict)
    assert all(
        torch.equal(ckpt.controlnet_state_dict[k], v) for k, v in ref.controlnet_state_dict.items()
    )


def test_base_folder_problems_are_reported(tmp_path):
    base = tmp_path / "base"
    shutil.copytree(BASE, base, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    weights = load_file(str(base / UNET_WEIGHTS))
    save_file({**weights, "extra_block.weight": torch.zeros(2)}, str(base / UNET_WEIGHTS))
    with pytest.raises(MagicBokehError, match="unexpected tensors.*extra_block.weight"):
        network_from_official(base, PKL)
    (base / UNET_WEIGHTS).unlink()
    with pytest.raises(MagicBokehError, match="unet/diffusion_pytorch_model.safetensors.*download"):
        network_from_official(base, PKL)
    shutil.rmtree(base / "vae")
    with pytest.raises(MagicBokehError, match="vae.*magicbokeh download"):
        network_from_official(base, PKL)
