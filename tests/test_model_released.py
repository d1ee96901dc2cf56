"""Writing the released lora.pkl layout, and reading it back through convert-official."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.torch import save_file  # noqa: E402

from magicbokeh.cli import main  # noqa: E402
from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.model.network import MagicBokehNetwork  # noqa: E402
from magicbokeh.model.official import (  # noqa: E402
    network_from_official,
    read_official_checkpoint,
)
from magicbokeh.model.released import (  # noqa: E402
    released_checkpoint,
    save_released_checkpoint,
)
from tiny_models import SCHEDULER, UNET, tiny_network  # noqa: E402

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "official_tiny"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def write_base_folder(net: MagicBokehNetwork, folder: Path) -> Path:
    """An SD2.1-layout base folder holding ``net``'s frozen base weights (no LoRA, no bokeh)."""

    def base_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k.replace(".base_layer.", "."): v.contiguous()
            for k, v in state.items()
            if "lora_" not in k and ".processor." not in k
        }

    configs = {
        "unet": dict(UNET),
        "vae": dict(net.config.vae_config),
        "scheduler": dict(SCHEDULER),
    }
    for part, config in configs.items():
        (folder / part).mkdir(parents=True)
        name = "scheduler_config.json" if part == "scheduler" else "config.json"
        (folder / part / name).write_text(json.dumps(config))
    save_file(base_weights(net.unet.state_dict()), str(folder / "unet" / WEIGHTS))
    save_file(base_weights(net.vae.state_dict()), str(folder / "vae" / WEIGHTS))
    return folder


def assert_same_state(a: MagicBokehNetwork, b: MagicBokehNetwork) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_through_the_released_layout_is_exact(tmp_path):
    net = tiny_network()
    base = write_base_folder(net, tmp_path / "base")
    path = save_released_checkpoint(net, tmp_path / "lora.pkl")
    assert_same_state(net, network_from_official(base, path))


def test_file_holds_only_plain_data_and_the_keys_the_released_loader_reads(tmp_path):
    net = tiny_network()
    path = save_released_checkpoint(net, tmp_path / "lora.pkl")
    raw = torch.load(path, weights_only=True)
    unet_state = net.unet.state_dict()
    # The released loader copies every UNet parameter named "lora" or "conv_in" (its bokeh
    # processors are not registered modules), and every VAE parameter named "lora".
    wanted_unet = {
        k for k in unet_state if ("lora" in k or "conv_in" in k) and ".processor." not in k
    }
    assert set(raw["state_dict_unet"]) == wanted_unet
    assert {"conv_in.base_layer.weight", "conv_in.base_layer.bias"} <= wanted_unet
    assert set(raw["state_dict_vae"]) == {k for k in net.vae.state_dict() if "lora" in k}
    assert set(raw["processor_state_dict"]) == {k for k in unet_state if ".processor." in k}
    assert set(raw["controlnet"]) == set(net.controlnet.state_dict())
    assert raw["state_dict_attn"] == net.config.rank_bokeh
    assert raw["vae_lora_encoder_modules"] == list(net.config.vae_lora_encoder_modules)


def test_without_its_config_the_controlnet_is_the_one_from_unet_builds(tmp_path):
    net = tiny_network()
    base = write_base_folder(net, tmp_path / "base")
    checkpoint = released_checkpoint(net)
    del checkpoint["controlnet_config"]
    torch.save(checkpoint, tmp_path / "lora.pkl")
    assert read_official_checkpoint(tmp_path / "lora.pkl").controlnet_config is None
    assert_same_state(net, network_from_official(base, tmp_path / "lora.pkl"))


def test_merged_network_and_existing_file_are_refused(tmp_path):
    net = tiny_network()
    target = tmp_path / "lora.pkl"
    target.write_bytes(b"mine")
    with pytest.raises(MagicBokehError, match="exists"):
        save_released_checkpoint(net, target)
    assert target.read_bytes() == b"mine"
    net.merge_sr_lora()
    with pytest.raises(MagicBokehError, match="merged"):
        released_checkpoint(net)


@pytest.mark.vectors
@pytest.mark.skipif(not VECTORS.is_dir(), reason=f"test vectors not found at {VECTORS}")
def test_vectors_checkpoint_survives_export_and_convert_official(tmp_path):
    base, pkl = VECTORS / "base", VECTORS / "lora.pkl"
    direct = network_from_official(base, pkl)
    exported = save_released_checkpoint(direct, tmp_path / "lora.pkl")
    original, ours = read_official_checkpoint(pkl), read_official_checkpoint(exported)
    for field in ("state_dict_unet", "state_dict_vae", "processor_state_dict"):
        assert set(getattr(ours, field)) == set(getattr(original, field))
    assert set(ours.controlnet_state_dict) == set(original.controlnet_state_dict)
    assert main(["convert-official", "--base", str(base), "--lora", str(exported),
                 "-o", str(tmp_path / "converted")]) == 0  # fmt: skip
    assert_same_state(direct, MagicBokehNetwork.from_pretrained(tmp_path / "converted"))
