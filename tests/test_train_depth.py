"""`train depth` and its exports on a tiny Depth Anything V2 teacher (CPU, 28-px crops)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from skimage import data as photos  # noqa: E402

from magicbokeh import cli  # noqa: E402
from magicbokeh.depth.convert_depth_anything import (  # noqa: E402
    convert_original_state_dict,
    load_original_state_dict,
)
from magicbokeh.depth.depth_anything import DepthAnythingEstimator  # noqa: E402
from magicbokeh.train.depth_task import student_from_run  # noqa: E402
from magicbokeh.train.logs import read_metrics  # noqa: E402
from magicbokeh.train.run_folder import RunFolder  # noqa: E402
from tiny_depth import tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--resolution", "28", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]
FAST += ["--log-every", "1", "--sample-every", "0", "--val-every", "0", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("depth_train")
    teacher = root / "teacher"
    tiny_model().save_pretrained(teacher)
    folder = root / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(photos, name)())
        image.resize((48, round(48 * image.height / image.width))).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return {"root": root, "teacher": teacher, "photos": folder}


def train(data, run, *extra) -> int:
    argv = ["train", "depth", "--teacher", data["teacher"], "--data", data["photos"], "-o", run]
    return cli.main([str(a) for a in [*argv, *FAST, *extra]])


@pytest.fixture(scope="module")
def run(data) -> Path:
    folder = data["root"] / "run"
    extra = ["--val-data", data["photos"], "--val-every", "2", "--val-count", "2"]
    extra += ["--sample-every", "2", "--steps", "2", "--checkpoint-every", "2"]
    assert train(data, folder, *extra) == 0
    return folder


def student_state(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in student_from_run(RunFolder(run), step)[0].state_dict().items()}


def test_run_trains_the_student_and_logs_both_gaps(run, data) -> None:
    folder = RunFolder(run)
    assert folder.read_run()["task"] == "depth"
    source = json.loads((folder.init_dir / "source.json").read_text())
    assert source["feature_layers"] == [0, 1, 2, 3] and source["images"] == 4
    assert [Path(s["file"]).name for s in source["skipped"]] == ["broken.jpg"]
    stored = load_file(str(folder.checkpoint()[1] / "trainable.safetensors"))
    assert stored and all(key.startswith("student.") for key in stored)
    teacher = tiny_model().state_dict()
    student = student_state(run)
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)
    records = read_metrics(folder.metrics_path)
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2]
    assert {"feature", "output", "lr_encoder", "lr_head"} <= set(train_records[0])
    validation = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in validation] == [0, 2]
    assert validation[0]["output"] == pytest.approx(validation[0]["teacher_output"])
    assert (folder.samples_dir / "step-2.png").is_file()


def test_resume_gives_the_same_student(data, tmp_path) -> None:
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert train(data, whole, "--steps", "2") == 0
    assert train(data, halves, "--steps", "1") == 0
    assert train(data, halves, "--steps", "2", "--resume") == 0
    one_go, resumed = student_state(whole), student_state(halves)
    assert all(torch.equal(one_go[k], resumed[k]) for k in one_go)


def test_frozen_parts_stay_out_of_checkpoints(data, tmp_path, capsys) -> None:
    assert train(data, tmp_path / "encoder", "--steps", "1", "--freeze-head") == 0
    keys = load_file(str(RunFolder(tmp_path / "encoder").checkpoint()[1] / "trainable.safetensors"))
    assert keys and all(k.startswith("student.backbone.") for k in keys)
    assert train(data, tmp_path / "head", "--steps", "1", "--freeze-encoder") == 0
    keys = load_file(str(RunFolder(tmp_path / "head").checkpoint()[1] / "trainable.safetensors"))
    assert keys and not any(k.startswith("student.backbone.") for k in keys)
    assert train(data, tmp_path / "none", "--freeze-head", "--freeze-encoder") == 2
    assert "nothing to train" in capsys.readouterr().err


def test_exports_load_and_depth_auto_finds_the_student(run, tmp_path, monkeypatch) -> None:
    from magicbokeh.depth.resolve import resolve_depth

    student, _ = student_from_run(RunFolder(run))
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "home"))
    tiny_model().save_pretrained(tmp_path / "home" / "depth-anything-v2")
    installed = tmp_path / "home" / "magicbokeh" / "depth"
    assert cli.main(["export", str(run), "-o", str(installed)]) == 0  # transformers by default
    rgb = np.random.default_rng(0).uniform(size=(30, 42, 3)).astype(np.float32)
    resolved = resolve_depth("auto", rgb)
    assert resolved.source == "model:magicbokeh/depth"
    expected = DepthAnythingEstimator(student)(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    np.testing.assert_allclose(resolved.disparity, expected[0, 0].numpy(), atol=1e-6)

    pth = tmp_path / "DAdepth.pth"
    assert cli.main(["export", str(run), "-o", str(pth), "--format", "original"]) == 0
    checkpoint = torch.load(pth, map_location="cpu", weights_only=True)
    assert all(key.startswith("module.") for key in checkpoint["model"])
    converted = convert_original_state_dict(load_original_state_dict(pth), student.config)
    state = student.state_dict()
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)
    assert cli.main(["export", str(run), "-o", str(pth), "--format", "original"]) == 2
    assert cli.main(["export", str(run), "-o", str(tmp_path / "m"), "--format", "magicbokeh"]) == 2


def test_a_teacher_that_is_not_depth_anything_is_refused(data, tmp_path, capsys) -> None:
    from transformers import Dinov2Config, Dinov2Model

    other = tmp_path / "dinov2"
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    Dinov2Model(config).save_pretrained(other)
    argv = ["train", "depth", "--teacher", str(other), "--data", str(data["photos"])]
    assert cli.main([*argv, "-o", str(tmp_path / "run"), *FAST]) == 2
    assert "not Depth Anything V2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resolution", "30"], "multiple of 14"),
        (["--feature-layers", "0,9"], "feature-layers"),
        (["--output-weight", "0", "--feature-weight", "0"], "one must be > 0"),
    ],
)
def test_bad_settings_are_refused(data, tmp_path, capsys, extra, message) -> None:
    assert train(data, tmp_path / "run", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_empty_and_unreadable_image_folders_are_refused(data, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["train", "depth", "--teacher", str(data["teacher"]), "-o", str(tmp_path / "run")]
    assert cli.main([*argv, "--data", str(empty), *FAST]) == 2
    assert "no images found" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(data["photos"] / "broken.jpg", bad / "broken.jpg")
    assert cli.main([*argv, "--data", str(bad), *FAST]) == 2
    assert "none of the 1 images of --data can be read" in capsys.readouterr().err
