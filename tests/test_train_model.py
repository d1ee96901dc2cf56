"""`train sr`, `train bokeh` and `export` on a tiny SD2.1-layout base (CPU, 64 px)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from skimage import data as photos  # noqa: E402

from magicbokeh import cli  # noqa: E402
from magicbokeh.data.synth import SynthSettings, synthesize  # noqa: E402
from magicbokeh.model.network import MagicBokehNetwork  # noqa: E402
from magicbokeh.model.unet import is_pruned_unet_key  # noqa: E402
from magicbokeh.train.logs import read_metrics  # noqa: E402
from magicbokeh.train.model_runs import network_from_run  # noqa: E402
from magicbokeh.train.model_tasks import parameter_parts  # noqa: E402
from magicbokeh.train.run_folder import RunFolder  # noqa: E402
from test_data_synth import make_inputs  # noqa: E402
from tiny_models import write_tiny_base  # noqa: E402

FAST = ["--resolution", "64", "--batch-size", "2", "--lpips-weight", "0", "--num-workers", "0"]
FAST += ["--device", "cpu", "--log-every", "1", "--sample-every", "0", "-q"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    base = write_tiny_base(root / "base")
    photo_dir = root / "photos"
    photo_dir.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(photos, name)())
        image.resize((96, round(96 * image.height / image.width))).save(photo_dir / f"{name}.png")
    fg, bg = make_inputs(root / "synth_inputs")
    bokeh = root / "bokeh"
    synthesize(fg, bg, bokeh, 4, SynthSettings(size=64, rays=4, seed=1), progress=False, workers=1)
    return {"root": root, "base": base, "photos": photo_dir, "bokeh": bokeh}


def main(*args) -> int:
    return cli.main([str(a) for a in args])


def train_sr(data, run, *extra) -> int:
    return main(
        "train", "sr", "--base", data["base"], "--data", data["photos"], "-o", run, *FAST, *extra
    )


def train_bokeh(data, init, run, *extra) -> int:
    return main(
        "train",
        "bokeh",
        "--init",
        init,
        "--bokeh-data",
        data["bokeh"],
        "--sr-data",
        data["photos"],
        "-o",
        run,
        *FAST,
        *extra,
    )


@pytest.fixture(scope="module")
def sr_run(data) -> Path:
    run = data["root"] / "sr_run"
    assert train_sr(data, run, "--steps", "3", "--lr", "1e-3", "--checkpoint-every", "3") == 0
    return run


def state(network) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def moved(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def part_names(network, *parts) -> set[str]:
    groups = parameter_parts(network)
    return {name for part in parts for name, _ in groups[part]}


def init_state(run: Path) -> dict[str, torch.Tensor]:
    return state(MagicBokehNetwork.from_pretrained(RunFolder(run).init_dir))


def ckpt_state(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    return state(network_from_run(RunFolder(run), step)[0])


# ----------------------------------------------------------------------------- stage 1
def test_initial_network_is_the_pruned_base_with_zero_lora_deltas(sr_run, data):
    network = MagicBokehNetwork.from_pretrained(RunFolder(sr_run).init_dir)
    base = load_file(str(data["base"] / "unet" / "diffusion_pytorch_model.safetensors"))
    kept = {k: v for k, v in base.items() if not is_pruned_unet_key(k)}
    assert len(kept) < len(base)
    own = network.unet.state_dict()
    for key, value in kept.items():
        local = (
            key
            if key in own
            else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(own[local], value), key
    for name, value in network.state_dict().items():
        if ".lora_B." in name or name.endswith("_lora.1.weight"):
            assert not value.any(), name
        if (
            name.startswith("controlnet.controlnet_down_blocks")
            or "cond_embedding.conv_out" in name
        ):
            assert not value.any(), name
    config = json.loads((RunFolder(sr_run).config_path).read_text())
    assert config["task"] == "sr" and config["settings"]["lr"] == 1e-3


def test_train_sr_moves_exactly_sr_lora_vae_lora_and_conv_in(sr_run):
    before, after = init_state(sr_run), ckpt_state(sr_run)
    network = MagicBokehNetwork.from_pretrained(RunFolder(sr_run).init_dir)
    expected = part_names(network, "sr_lora", "vae_lora", "conv_in")
    assert any("conv_in.base_layer.weight" in n for n in expected)
    assert moved(before, after) == expected
    records = read_metrics(RunFolder(sr_run).metrics_path)
    assert [(r["step"], r["phase"]) for r in records] == [(1, "sr"), (2, "sr"), (3, "sr")]


# ------------------------------------------------------------------------- stage 2
def test_each_bokeh_and_sr_phase_moves_exactly_its_parts(data, sr_run):
    run = data["root"] / "bokeh_run"
    code = train_bokeh(
        data,
        sr_run,
        run,
        "--cycle",
        "bokeh:2,sr:2",
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--lr-bokeh",
        "1e-3",
        "--lr-sr",
        "1e-3",
    )
    assert code == 0
    network = MagicBokehNetwork.from_pretrained(RunFolder(run).init_dir)
    start, after_bokeh, after_sr = init_state(run), ckpt_state(run, 2), ckpt_state(run, 4)
    assert moved(ckpt_state(sr_run), start) == set()  # --init RUN takes its last checkpoint
    assert moved(start, after_bokeh) == part_names(network, "controlnet", "bokeh_lora")
    assert moved(after_bokeh, after_sr) == part_names(network, "sr_lora", "conv_in")
    records = read_metrics(RunFolder(run).metrics_path)
    assert [r["phase"] for r in records] == ["bokeh", "bokeh", "sr", "sr"]
    optimizers = torch.load(RunFolder(run).checkpoint_dir(4) / "optimizers.pt", weights_only=True)
    assert set(optimizers["optimizers"]) == {"bokeh", "sr"}


def test_joint_ablation_trains_both_parts_on_mixed_batches(data, sr_run):
    run = data["root"] / "joint_run"
    init = RunFolder(sr_run).checkpoint_dir(3)  # a checkpoint folder as --init
    assert train_bokeh(data, init, run, "--joint", "--steps", "2", "--lr-bokeh", "1e-3") == 0
    network = MagicBokehNetwork.from_pretrained(RunFolder(run).init_dir)
    parts = part_names(network, "controlnet", "bokeh_lora", "sr_lora", "conv_in")
    assert moved(init_state(run), ckpt_state(run)) == parts
    record = read_metrics(RunFolder(run).metrics_path)[-1]
    assert record["phase"] == "joint" and {"loss_bokeh", "loss_sr", "lr_bokeh", "lr_sr"} <= set(
        record
    )


def test_no_fama_never_masks_attention(data, sr_run, monkeypatch):
    from magicbokeh.model.unet import MagicBokehUNet

    seen = []
    forward = MagicBokehUNet.forward

    def spy(self, *args, focus_mask=None, **kwargs):
        seen.append(focus_mask)
        return forward(self, *args, focus_mask=focus_mask, **kwargs)

    monkeypatch.setattr(MagicBokehUNet, "forward", spy)
    assert (
        train_bokeh(data, sr_run, data["root"] / "fama", "--cycle", "bokeh:1,sr:1", "--steps", "2")
        == 0
    )
    assert seen[0] is not None and seen[1] is None  # bokeh phase masks, SR phase does not
    seen.clear()
    assert (
        train_bokeh(
            data, sr_run, data["root"] / "nofama", "--no-fama", "--cycle", "bokeh:1", "--steps", "1"
        )
        == 0
    )
    assert seen == [None]


def test_resume_across_a_phase_switch_gives_the_same_weights(data, sr_run):
    common = ["--cycle", "bokeh:1,sr:2", "--checkpoint-every", "2", "--lr-bokeh", "1e-3"]
    whole, split = data["root"] / "whole", data["root"] / "split"
    assert train_bokeh(data, sr_run, whole, "--steps", "4", *common) == 0
    assert train_bokeh(data, sr_run, split, "--steps", "2", *common) == 0
    assert main("train", "bokeh", "-o", split, "--resume", "--steps", "4", "-q") == 0
    first, second = ckpt_state(whole), ckpt_state(split)
    assert moved(first, second) == set()
    losses = [[r["loss"] for r in read_metrics(RunFolder(r).metrics_path)] for r in (whole, split)]
    assert losses[0] == losses[1]


# ---------------------------------------------------------------------------- export
def test_export_gives_a_model_folder_that_render_uses(data, sr_run, tmp_path):
    out = tmp_path / "model"
    assert main("export", sr_run, "-o", out) == 0
    exported = state(MagicBokehNetwork.from_pretrained(out))
    assert moved(ckpt_state(sr_run), exported) == set()
    assert json.loads((out / "training.json").read_text())["step"] == 3
    assert main("export", sr_run, "-o", out) == 2  # exists
    assert main("export", sr_run, "--step", "2", "-o", tmp_path / "m2") == 2  # no such step
    photo = data["photos"] / "coffee.png"
    result = tmp_path / "out.png"
    code = main(
        "render",
        photo,
        "-o",
        result,
        "--model",
        out,
        "--engine",
        "diffusion",
        "--focus-disparity",
        "0.5",
        "--aperture",
        "8",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0 and result.is_file()


# ------------------------------------------------------------------------ bad input
def test_missing_base_parts_are_named(data, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(data["base"] / "unet", partial / "unet")
    assert train_sr(data, tmp_path / "run", "--base", partial) == 2
    err = capsys.readouterr().err
    assert "scheduler/scheduler_config.json" in err and "vae/config.json" in err
    assert "unet/config.json" not in err
    assert not (tmp_path / "run").exists()


def test_empty_and_wrong_kind_data_folders_are_refused(data, sr_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train_sr(data, tmp_path / "r1", "--data", tmp_path / "empty") == 2
    assert "no images found" in capsys.readouterr().err
    assert train_sr(data, tmp_path / "r2", "--data", data["bokeh"]) == 2
    assert "is a `magicbokeh synth` bokeh dataset" in capsys.readouterr().err
    code = main(
        "train",
        "bokeh",
        "--init",
        sr_run,
        "--bokeh-data",
        data["photos"],
        "--sr-data",
        data["photos"],
        "-o",
        tmp_path / "r3",
        *FAST,
    )
    assert code == 2 and "give a folder made by magicbokeh synth" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r3"))


def test_init_must_be_a_model_or_a_model_run(data, tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    assert train_bokeh(data, tmp_path / "junk", tmp_path / "run") == 2
    assert "neither a MagicBokeh model folder" in capsys.readouterr().err
    assert train_bokeh(data, tmp_path / "missing", tmp_path / "run") == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_run_folder_holding_another_run_is_refused(data, sr_run, capsys):
    assert train_sr(data, sr_run, "--steps", "3") == 2
    assert "already holds a `train sr` run" in capsys.readouterr().err
    assert main("train", "bokeh", "-o", sr_run, "--resume") == 2
    assert "resume it with `magicbokeh train sr --resume`" in capsys.readouterr().err
    assert main("train", "sr", "-o", sr_run, "--resume", "--lr", "0.5") == 2
    assert "lr (run: 0.001, now: 0.5)" in capsys.readouterr().err


def test_config_file_gives_the_settings(data, tmp_path):
    config = tmp_path / "sr.yaml"
    config.write_text(
        f"base: {data['base']}\ndata: [{data['photos']}]\nsteps: 1\nresolution: 64\n"
        "batch-size: 1\nlpips-weight: 0\nnum-workers: 0\ndevice: cpu\nquiet: true\n"
        "gradient-checkpointing: true\nseed: 7\n"
    )
    assert main("train", "sr", "--config", config, "-o", tmp_path / "run") == 0
    settings = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]
    assert settings["seed"] == 7 and settings["gradient_checkpointing"] is True
    assert settings["batch_size"] == 1 and settings["data"] == [str(data["photos"])]


def test_gradient_checkpointing_and_bf16_train_the_same_model(data, tmp_path):
    runs = {}
    for name, extra in (("plain", []), ("ckpt", ["--gradient-checkpointing"])):
        runs[name] = tmp_path / name
        assert train_sr(data, runs[name], "--steps", "2", "--lr", "1e-3", *extra) == 0
    first, second = ckpt_state(runs["plain"]), ckpt_state(runs["ckpt"])
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-6)
    assert train_sr(data, tmp_path / "bf16", "--steps", "1", "--mixed-precision", "bf16") == 0
    assert np.isfinite(read_metrics(RunFolder(tmp_path / "bf16").metrics_path)[0]["loss"])


def test_released_export_round_trips_through_convert_official(data, sr_run, tmp_path):
    pkl = tmp_path / "lora.pkl"
    assert main("export", sr_run, "--format", "released", "-o", pkl) == 0
    converted = tmp_path / "converted"
    assert main("convert-official", "--base", data["base"], "--lora", pkl, "-o", converted) == 0
    ours = network_from_run(RunFolder(sr_run))[0].eval()
    theirs = MagicBokehNetwork.from_pretrained(converted).eval()
    assert moved(state(ours), state(theirs)) == set()
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    defocus = torch.rand(1, 1, 64, 64, generator=gen) * 2 - 1
    mask = defocus < 0
    with torch.no_grad():
        assert torch.equal(ours(image, defocus, mask), theirs(image, defocus, mask))


def test_lpips_loss_term_with_given_weights_and_a_clear_error_without(data, tmp_path, capsys):
    from magicbokeh.metrics.lpips import LPIPS
    from magicbokeh.metrics.lpips_weights import LPIPS_ASSETS

    weights = tmp_path / "lpips"
    weights.mkdir()
    torch.manual_seed(0)
    model = LPIPS("vgg")
    backbone, heads = (weights / asset.name for asset in LPIPS_ASSETS["vgg"])
    torch.save({f"features.{k}": v for k, v in model.features.state_dict().items()}, backbone)
    torch.save({f"lin{i}.model.1.weight": h.weight.abs() for i, h in enumerate(model.heads)}, heads)
    args = ["--steps", "1", "--lpips-weight", "2", "--lpips-weights", weights]
    assert train_sr(data, tmp_path / "run", *args) == 0
    record = read_metrics(RunFolder(tmp_path / "run").metrics_path)[0]
    assert record["lpips"] > 0
    assert record["loss"] == pytest.approx(record["l2"] + 2 * record["lpips"], rel=1e-5)
    missing = ["--steps", "1", "--lpips-weight", "2", "--lpips-weights", tmp_path / "none"]
    assert train_sr(data, tmp_path / "run2", *missing) == 2
    assert "magicbokeh download --lpips vgg" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_training_and_validation_losses_fall(data, tmp_path):
    """A short run on four fixed photos (the longer run is benchmarks/train_tiny_demo.py)."""
    run = tmp_path / "run"
    args = ["--steps", "40", "--lr", "3e-3", "--val-data", data["photos"], "--val-every", "40"]
    assert train_sr(data, run, *args, "--val-count", "2", "--checkpoint-every", "40") == 0
    records = read_metrics(RunFolder(run).metrics_path)
    losses = [r["loss"] for r in records if r["split"] == "train"]
    fifth = len(losses) // 5
    first, last = np.mean(losses[:fifth]), np.mean(losses[-fifth:])
    assert last < 0.85 * first, (first, last)
    validation = [r["loss"] for r in records if r["split"] == "val"]
    assert len(validation) == 2 and validation[1] < 0.85 * validation[0], validation
