"""The learned engine in evaluation, with a tiny random-init model: one pass, two-stage SR then
physical bokeh, and pure SR; eval feeds the pipeline what ``render`` would (depth file, focus
from the mask, K) and scores its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch  # noqa: E402

from eval_data import bokeh_set, sr_set  # noqa: E402
from magicbokeh.api import load_pipeline  # noqa: E402
from magicbokeh.cli import main  # noqa: E402
from magicbokeh.io import load_image  # noqa: E402
from magicbokeh.pipeline import MagicBokehPipeline  # noqa: E402
from tiny_models import tiny_network  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    MagicBokehPipeline(tiny_network(vae_levels=4)).save_pretrained(folder)
    return folder


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_one_pass_scores_what_render_produces(model: Path, tmp_path: Path) -> None:
    data = bokeh_set(tmp_path / "data", n=1, size=(64, 64))
    out = tmp_path / "r"
    args = ["eval", "bokeh", "--data", str(data), "-o", str(out), "--engine", "diffusion"]
    args += ["--model", str(model), "--device", "cpu", "--aperture", "12", "--metrics", "psnr"]
    assert main([*args, "--save-outputs", "--tile-size", "64", "-q"]) == 0
    image = report(out)["images"][0]
    assert image["time"]["bokeh"] > 0 and image["focus_disparity"] == 1.0  # the subject's
    pipe = load_pipeline(model, torch.device("cpu"), "fp32")
    rgb = torch.from_numpy(load_image(data / "input" / "0.png").rgb).permute(2, 0, 1)[None]
    disparity = torch.from_numpy(np.load(data / "depth" / "0.npy"))[None, None]
    direct = pipe(rgb, disparity, 1.0, 12, tile_size=64, progress=False).images[0]
    saved = load_image(out / "outputs" / "0.png").rgb
    expected = np.rint(direct.permute(1, 2, 0).numpy() * 255) / 255
    assert np.abs(expected - saved).max() <= 1e-6


def test_two_stage_and_pure_sr_with_the_learned_engine(model: Path, tmp_path: Path) -> None:
    data = bokeh_set(tmp_path / "data", n=1, size=(64, 64))
    out = tmp_path / "two"
    args = ["eval", "bokeh", "--data", str(data), "-o", str(out), "--engine", "diffusion+physical"]
    args += ["--model", str(model), "--device", "cpu", "--depth", "auto", "--metrics", "psnr"]
    args += ["--tile-size", "64", "-q"]
    assert main(args) == 0
    image = report(out)["images"][0]
    assert {"sr", "depth", "bokeh", "total"} == set(image["time"])
    assert image["depth_source"] in ("heuristic", "depth model")
    sr = sr_set(tmp_path / "sr", n=1, size=(64, 64), scale=2)
    args = ["eval", "sr", "--data", str(sr), "-o", str(tmp_path / "sr_r"), "--method", "diffusion"]
    assert (
        main([*args, "--model", str(model), "--device", "cpu", "--metrics", "psnr,ssim", "-q"]) == 0
    )
    result = report(tmp_path / "sr_r")
    assert result["method"] == "diffusion" and np.isfinite(result["means"]["psnr"])


def test_missing_weights_name_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "home"))
    data = sr_set(tmp_path / "sr", n=1)
    assert main(["eval", "sr", "--data", str(data), "-o", str(tmp_path / "r"), "-q"]) == 2
    assert "magicbokeh download" in capsys.readouterr().err
    args = [
        "eval",
        "bokeh",
        "--data",
        str(bokeh_set(tmp_path / "b", n=1)),
        "-o",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--engine", "diffusion+physical", "--model", str(tmp_path / "no")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
