"""`train sr --vsd-weight`: OSEDiff's VSD regulariser on the tiny SD2.1-layout base (CPU, 64 px).

The base (``../shared/vectors/official_tiny/base``) has the stock UNet with cross-attention, a
CLIP text encoder and tokenizer, as the regulariser needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from skimage import data as photos  # noqa: E402

from magicbokeh import cli  # noqa: E402
from magicbokeh.model.network import MagicBokehNetwork  # noqa: E402
from magicbokeh.train.logs import read_metrics  # noqa: E402
from magicbokeh.train.model_runs import network_from_run  # noqa: E402
from magicbokeh.train.model_tasks import SRTask, parameter_parts  # noqa: E402
from magicbokeh.train.run_folder import RunFolder  # noqa: E402
from magicbokeh.train.vsd import (  # noqa: E402
    REGULARISER_PREFIX,
    RegularisedNetwork,
    VSDRegulariser,
    vsd_gradient,
    vsd_surrogate_loss,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
BASE = SHARED / "vectors" / "official_tiny" / "base"
FAST = ["--resolution", "64", "--batch-size", "2", "--lpips-weight", "0", "--num-workers", "0"]
FAST += ["--device", "cpu", "--log-every", "1", "--sample-every", "0", "-q", "--lr", "1e-3"]

needs_base = pytest.mark.skipif(
    not (BASE / "text_encoder").is_dir(), reason=f"{BASE} (shared test vectors) is absent"
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vsd_photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(photos, name)())
        image.resize((96, round(96 * image.height / image.width))).save(folder / f"{name}.png")
    return folder


def train_sr(photo_dir, run, *extra, base=BASE) -> int:
    args = ["train", "sr", "--base", base, "--data", photo_dir, "-o", run, *FAST, *extra]
    return cli.main([str(a) for a in args])


class Capture:
    """Keeps the model each SRTask builds and its tensors right after building."""

    def __init__(self, monkeypatch) -> None:
        self.models: list = []
        self.initial: list[dict[str, torch.Tensor]] = []
        load_model = SRTask.load_model

        def spy(task, folder):
            model = load_model(task, folder)
            self.models.append(model)
            self.initial.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return model

        monkeypatch.setattr(SRTask, "load_model", spy)


def network_state(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in network_from_run(RunFolder(run), step)[0].state_dict().items()}


def moved(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# ------------------------------------------------------------------------------- the math
def test_surrogate_loss_gradient_is_the_vsd_gradient():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 3, generator=gen, requires_grad=True)
    x0_update = torch.randn(2, 4, 3, 3, generator=gen)
    x0_fix = torch.randn(2, 4, 3, 3, generator=gen)
    grad = vsd_gradient(z, x0_update, x0_fix)
    for i in range(2):  # w = mean |z − x0_fix| over C, H, W, per item
        weight = (z[i] - x0_fix[i]).abs().mean()
        torch.testing.assert_close(grad[i], (x0_update[i] - x0_fix[i]) / weight)
    assert not grad.requires_grad
    loss = vsd_surrogate_loss(z, grad)
    loss.backward()
    torch.testing.assert_close(z.grad, 2 * grad / z.numel())
    assert float(loss.detach()) == pytest.approx(float(grad.square().mean()))


def test_an_own_clipping_group_is_clipped_apart_from_the_others():
    from magicbokeh.train.task import ParamGroup, Phase
    from magicbokeh.train.trainer import Trainer

    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    phase = Phase(
        "sr",
        {
            "sr": ParamGroup([("a", a), ("b", b)], 1.0),
            "vsd": ParamGroup([("c", c)], 1.0, own_clipping=True),
        },
        ("sr",),
    )
    sets = Trainer._clipping_sets(phase)
    assert [(label, [id(p) for p in params]) for label, params in sets] == [
        ("grad_norm", [id(a), id(b)]),
        ("grad_norm_vsd", [id(c)]),
    ]


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def vsd_run(tmp_path_factory, photo_dir):
    monkeypatch = pytest.MonkeyPatch()
    capture = Capture(monkeypatch)
    run = tmp_path_factory.mktemp("vsd") / "run"
    try:
        code = train_sr(photo_dir, run, "--steps", "2", "--vsd-weight", "1")
    finally:
        monkeypatch.undo()
    assert code == 0
    return run, capture.models[0], capture.initial[0]


@needs_base
def test_vsd_run_logs_its_terms_and_moves_exactly_the_trained_parts(vsd_run):
    run, model, initial = vsd_run
    assert isinstance(model, RegularisedNetwork)
    records = read_metrics(RunFolder(run).metrics_path)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert {"vsd", "vsd_diffusion", "l2", "grad_norm", "grad_norm_vsd"} <= set(record)
        assert {"lr_sr", "lr_vsd"} <= set(record)
        assert record["vsd"] > 0 and record["vsd_diffusion"] > 0
        total = record["l2"] + record["vsd"] + record["vsd_diffusion"]
        assert record["loss"] == pytest.approx(total, rel=1e-5)
    # The network: exactly SR LoRA, VAE LoRA and conv_in move; the regulariser is not in it.
    network = MagicBokehNetwork.from_pretrained(RunFolder(run).init_dir)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    parts = parameter_parts(network)
    expected = {n for part in ("sr_lora", "vae_lora", "conv_in") for n, _ in parts[part]}
    assert moved(start, network_state(run)) == expected
    # The regulariser: its LoRA is in the checkpoint and moved; nothing else of it is stored.
    stored = load_file(str(RunFolder(run).checkpoint_dir(2) / "trainable.safetensors"))
    vsd_keys = {k for k in stored if k.startswith(REGULARISER_PREFIX)}
    lora = {n for n, _ in parameter_parts(model)["vsd_lora"]}
    assert vsd_keys == lora and all(".unet_update." in k for k in lora)
    for module in ("mid_block.", "attn2.to_k", "down_blocks.0.", "up_blocks.3.", "conv_in"):
        assert any(module in k for k in lora), module  # OSEDiff's targets: the whole UNet
    moved_lora = {k for k in lora if not torch.equal(stored[k], initial[k])}
    assert {k for k in lora if ".lora_B." in k} <= moved_lora
    # The stock UNets are bit-identical to the base folder's.
    base = load_file(str(BASE / "unet" / "diffusion_pytorch_model.safetensors"))
    fix = model.vsd.unet_fix.state_dict()
    update = {
        k.replace(".base_layer", ""): v
        for k, v in model.vsd.unet_update.state_dict().items()
        if ".lora_" not in k
    }
    assert set(fix) == set(base) == set(update)
    for key, value in base.items():
        assert torch.equal(fix[key], value), key
        assert torch.equal(update[key], value), key


@needs_base
def test_export_of_a_vsd_run_holds_only_the_network(vsd_run, tmp_path):
    run, _, _ = vsd_run
    out = tmp_path / "model"
    assert cli.main(["export", str(run), "-o", str(out)]) == 0
    exported = MagicBokehNetwork.from_pretrained(out)
    assert not any(k.startswith(REGULARISER_PREFIX) for k in exported.state_dict())
    assert moved(network_state(run), exported.state_dict()) == set()
    pkl = tmp_path / "lora.pkl"
    assert cli.main(["export", str(run), "--format", "released", "-o", str(pkl)]) == 0


@needs_base
def test_resume_with_vsd_gives_the_same_weights(photo_dir, tmp_path):
    common = ["--vsd-weight", "1", "--checkpoint-every", "2"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_sr(photo_dir, whole, "--steps", "4", *common) == 0
    assert train_sr(photo_dir, split, "--steps", "2", *common) == 0
    assert cli.main(["train", "sr", "-o", str(split), "--resume", "--steps", "4", "-q"]) == 0
    first, second = (
        load_file(str(RunFolder(r).checkpoint_dir(4) / "trainable.safetensors"))
        for r in (whole, split)
    )
    assert set(first) == set(second) and any(k.startswith(REGULARISER_PREFIX) for k in first)
    assert moved(first, second) == set()
    keys = ("loss", "vsd", "vsd_diffusion")
    logs = [
        [[r[k] for k in keys] for r in read_metrics(RunFolder(r).metrics_path)]
        for r in (whole, split)
    ]
    assert logs[0] == logs[1]


@needs_base
def test_vsd_with_bf16_and_gradient_checkpointing(photo_dir, tmp_path, monkeypatch):
    capture = Capture(monkeypatch)
    args = ["--steps", "1", "--vsd-weight", "1", "--mixed-precision", "bf16"]
    assert train_sr(photo_dir, tmp_path / "run", *args, "--gradient-checkpointing") == 0
    record = read_metrics(RunFolder(tmp_path / "run").metrics_path)[0]
    assert all(np.isfinite(record[k]) for k in ("loss", "vsd", "vsd_diffusion"))
    regulariser = capture.models[0].vsd
    assert next(regulariser.unet_fix.parameters()).dtype == torch.bfloat16
    assert next(regulariser.unet_update.parameters()).dtype == torch.float32
    assert regulariser.unet_update.is_gradient_checkpointing


@needs_base
def test_default_run_loads_no_regulariser(photo_dir, tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the regulariser was built with --vsd-weight 0")

    monkeypatch.setattr(VSDRegulariser, "from_base", refuse)
    assert train_sr(photo_dir, tmp_path / "run", "--steps", "1") == 0
    record = read_metrics(RunFolder(tmp_path / "run").metrics_path)[0]
    assert "vsd" not in record and "lr" in record
    settings = json.loads(RunFolder(tmp_path / "run").config_path.read_text())["settings"]
    assert settings["vsd_weight"] == 0 and "over-smooth" in settings["vsd_negative_prompt"]


# ------------------------------------------------------------------------------ bad input
@needs_base
def test_a_base_without_text_parts_or_cross_attention_is_refused(photo_dir, tmp_path, capsys):
    partial = tmp_path / "no_text"
    shutil.copytree(BASE, partial, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    assert train_sr(photo_dir, tmp_path / "r1", "--vsd-weight", "1", base=partial) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "text_encoder/config.json" in err and "tokenizer/" in err
    assert "unet" not in err.split("lacks")[1]

    pruned = tmp_path / "pruned"
    shutil.copytree(BASE, pruned)
    config = json.loads((pruned / "unet" / "config.json").read_text())
    config["down_block_types"] = ["DownBlock2D"] * 4
    config["up_block_types"] = ["UpBlock2D"] * 4
    (pruned / "unet" / "config.json").write_text(json.dumps(config))
    assert train_sr(photo_dir, tmp_path / "r2", "--vsd-weight", "1", base=pruned) == 2
    err = capsys.readouterr().err
    assert "a UNet with cross-attention" in err and "text_encoder" not in err.split("lacks")[1]

    assert train_sr(photo_dir, tmp_path / "r3", "--vsd-weight", "-1") == 2
    assert "must not be negative" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("r1", "r2", "r3"))
