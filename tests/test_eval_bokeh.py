"""``magicbokeh eval bokeh`` end to end on tiny folders: report layout, metrics, engines,
two-stage timing, resume, and every bad input the contract names."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_data import K_TRUE, bokeh_set, install_random_lpips
from magicbokeh.cli import main
from magicbokeh.eval import engines
from magicbokeh.eval.run import STATE_DIR
from magicbokeh.io import load_image
from magicbokeh.metrics.psnr_ssim import psnr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bokeh_set(tmp_path_factory.mktemp("bokeh") / "data", n=2)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model home with (random) LPIPS AlexNet weights."""
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "home"))
    install_random_lpips(tmp_path / "home")
    return tmp_path / "home"


def evaluate(data: Path, out: Path, *extra: str) -> int:
    """``eval bokeh`` (K = 4 unless given: small blurs render fastest)."""
    k = () if {"--aperture", "--fit-aperture"} & set(extra) else ("--aperture", "4")
    return main(["eval", "bokeh", "--data", str(data), "-o", str(out), "-q", *k, *extra])


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_report_folder_layout_and_values(data: Path, tmp_path: Path, home: Path) -> None:
    out = tmp_path / "r"
    args = ("--aperture", "3", "--metrics", "lpips,psnr,ssim", "--save-outputs")
    assert evaluate(data, out, *args) == 0
    result = report(out)
    assert result["metrics"] == ["psnr", "ssim", "lpips"] and result["count"] == 2
    assert [i["stem"] for i in result["images"]] == ["0", "1"]
    for image in result["images"]:
        assert {"psnr", "ssim", "lpips"} <= set(image) and image["aperture_K"] == 3.0
        assert image["time"]["bokeh"] > 0 and image["depth_source"] == "file"
        saved = load_image(out / "outputs" / f"{image['stem']}.png").rgb
        target = load_image(data / "target" / f"{image['stem']}.png").rgb
        # anyone can recompute the metrics from the saved outputs
        again = psnr(
            torch.from_numpy(saved).permute(2, 0, 1)[None],
            torch.from_numpy(target).permute(2, 0, 1)[None],
        ).item()
        assert again == pytest.approx(image["psnr"], abs=1e-9)
    means = result["means"]
    assert means["psnr"] == pytest.approx(np.mean([i["psnr"] for i in result["images"]]))
    assert means["time"]["total"] > 0
    md = (out / "report.md").read_text()
    assert "| Method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | Time (s) ↓ |" in md
    assert "8-bit RGB" in md and "focal-region masks" in md
    page = (out / "gallery.html").read_text()
    pictures = re.findall(r'src="([^"]+)"', page)
    assert len(pictures) == 2 * 9
    assert all((out / html.unescape(p)).is_file() for p in pictures)
    assert not (out / STATE_DIR).exists()


def test_known_settings_reproduce_the_target_exactly_and_fit_finds_k(
    data: Path, tmp_path: Path, home: Path
) -> None:
    assert (
        evaluate(data, tmp_path / "a", "--aperture", str(K_TRUE), "--metrics", "psnr,ssim,lpips")
        == 0
    )
    means = report(tmp_path / "a")["means"]
    assert means["psnr"] == "inf" and means["ssim"] == pytest.approx(1.0) and means["lpips"] == 0
    assert (
        evaluate(data, tmp_path / "b", "--fit-aperture", "--metrics", "psnr", "--limit", "1") == 0
    )
    result = report(tmp_path / "b")
    assert [i["aperture_K"] for i in result["images"]] == [K_TRUE]
    assert all(i["aperture_fitted"] for i in result["images"])


def test_other_methods_outputs_are_scored_as_they_are(data: Path, tmp_path: Path) -> None:
    outputs = tmp_path / "theirs"
    shutil.copytree(data / "target", outputs)
    assert (
        evaluate(data, tmp_path / "r", "--engine", f"outputs:{outputs}", "--metrics", "psnr,ssim")
        == 0
    )
    result = report(tmp_path / "r")
    assert result["method"] == "outputs:theirs"
    assert all(i["psnr"] == "inf" and i["time"] is None for i in result["images"])


def test_unavailable_metrics_are_marked_and_said_once(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "empty-home"))
    code = main(
        [
            "eval",
            "bokeh",
            "--data",
            str(data),
            "-o",
            str(tmp_path / "r"),
            "--limit",
            "2",
            "--metrics",
            "psnr,lpips,dists,musiq",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("install magicbokeh[eval]") == 1 and "dists, musiq" in err
    assert err.count("magicbokeh download --lpips alex") == 1
    result = report(tmp_path / "r")
    assert result["means"]["dists"] == "not available: install magicbokeh[eval]"
    assert result["images"][0]["musiq"] == "not available: install magicbokeh[eval]"
    assert "not available: install magicbokeh[eval]" in (tmp_path / "r" / "report.md").read_text()


def test_two_stage_baseline_reports_each_stage(tmp_path: Path) -> None:
    data = bokeh_set(tmp_path / "small", n=1, size=(48, 72), scale=2)
    assert evaluate(data, tmp_path / "r", "--engine", "lanczos+physical", "--metrics", "psnr") == 0
    result = report(tmp_path / "r")
    assert result["stages"] == ["sr", "bokeh"]
    for image in result["images"]:
        assert set(image["time"]) == {"sr", "bokeh", "total"}
        assert image["time"]["total"] == pytest.approx(image["time"]["sr"] + image["time"]["bokeh"])
    assert "Time per stage" in (tmp_path / "r" / "report.md").read_text()
    # the one-pass physical engine on the same data upsamples with Lanczos too: same outputs
    assert evaluate(data, tmp_path / "one", "--metrics", "psnr") == 0
    one = report(tmp_path / "one")
    assert [i["psnr"] for i in one["images"]] == [i["psnr"] for i in result["images"]]


def test_interrupted_run_resumes_without_recomputing(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r"
    args = ("--metrics", "psnr,ssim", "--batch-size", "1")
    seen: list[str] = []
    original = engines.OnePassEngine.run

    def interrupted(self, items):
        if len(seen) == 1:
            raise KeyboardInterrupt
        seen.extend(i.stem for i in items)
        return original(self, items)

    monkeypatch.setattr(engines.OnePassEngine, "run", interrupted)
    assert evaluate(data, out, *args) == 130
    assert (out / STATE_DIR).is_dir() and not (out / "report.json").exists()
    monkeypatch.setattr(
        engines.OnePassEngine,
        "run",
        lambda self, items: (seen.extend(i.stem for i in items), original(self, items))[1],
    )
    assert evaluate(data, out, "--aperture", "8", *args) == 2  # other settings are refused
    assert evaluate(data, out, *args) == 0
    assert seen == ["0", "1"]
    assert evaluate(data, tmp_path / "whole", *args) == 0
    resumed, whole = report(out), report(tmp_path / "whole")
    assert [i["psnr"] for i in resumed["images"]] == [i["psnr"] for i in whole["images"]]
    assert evaluate(data, out, *args) == 2  # a finished report is kept
    assert evaluate(data, out, *args, "--overwrite") == 0


def test_resume_scores_again_what_was_scored_before_a_metric_became_available(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "home"))
    original = engines.OnePassEngine.run
    calls: list[int] = []

    def interrupted(self, items):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, items)

    monkeypatch.setattr(engines.OnePassEngine, "run", interrupted)
    args = ("--metrics", "psnr,lpips", "--batch-size", "1")
    assert evaluate(data, tmp_path / "r", *args) == 130  # first image scored without LPIPS
    monkeypatch.setattr(engines.OnePassEngine, "run", original)
    install_random_lpips(tmp_path / "home")
    assert evaluate(data, tmp_path / "r", *args) == 0
    assert all(isinstance(i["lpips"], float) for i in report(tmp_path / "r")["images"])


def test_degrade_on_the_fly_equals_make_ebb400lq(tmp_path: Path) -> None:
    ebb = bokeh_set(tmp_path / "ebb", n=3, size=(40, 40), ebb=True, depth=False)
    assert (
        main(
            [
                "make-ebb400lq",
                "--ebb",
                str(ebb),
                "-o",
                str(tmp_path / "lq"),
                "--seed",
                "5",
                "--count",
                "2",
                "-q",
            ]
        )
        == 0
    )
    built = tmp_path / "lq"
    manifest = json.loads((built / "manifest.json").read_text())
    chosen = (built / "list.txt").read_text().split()
    assert [i["stem"] for i in manifest["images"]] == chosen and len(chosen) == 2
    assert sorted(p.name for p in built.iterdir()) == [
        "focus",
        "input",
        "list.txt",
        "manifest.json",
        "target",
    ]
    common = ("--metrics", "psnr", "--focus", "auto", "--depth", "auto")
    assert evaluate(built, tmp_path / "a", *common) == 0
    assert evaluate(ebb, tmp_path / "b", "--degrade", "--seed", "5", *common) == 0
    a = {i["stem"]: i["psnr"] for i in report(tmp_path / "a")["images"]}
    b = {i["stem"]: i["psnr"] for i in report(tmp_path / "b")["images"]}
    assert a == {s: b[s] for s in chosen}
    assert report(tmp_path / "b")["settings"]["degrade"] == {
        "seed": 5,
        "scale": 4,
        "resize_back": True,
    }


# ---------------------------------------------------------------------------- bad input
def test_unmatched_names_are_listed_and_skipped_only_when_allowed(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = shutil.copytree(data, tmp_path / "data")
    (copy / "target" / "1.png").unlink()
    (copy / "depth" / "1.npy").unlink()
    (copy / "focus" / "1.png").unlink()
    shutil.copy(copy / "target" / "0.png", copy / "target" / "9.png")
    assert evaluate(copy, tmp_path / "r", "--metrics", "psnr") == 2
    err = capsys.readouterr().err
    assert "input/ lacks 1 (9)" in err and "target/ lacks 1 (1)" in err and "--allow-missing" in err
    assert not (tmp_path / "r").exists()
    assert evaluate(copy, tmp_path / "r", "--metrics", "psnr", "--allow-missing") == 0
    result = report(tmp_path / "r")
    assert [i["stem"] for i in result["images"]] == ["0"]
    assert result["unmatched"]["input/"] == ["9"]


def test_pairs_of_different_sizes_are_refused_or_resized(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = shutil.copytree(data, tmp_path / "data")
    from magicbokeh.io import save_image

    save_image(copy / "target" / "1.png", np.zeros((48, 70, 3)), overwrite=True)
    assert evaluate(copy, tmp_path / "r", "--metrics", "psnr") == 2
    err = capsys.readouterr().err
    assert "pair 1:" in err and "70×48" in err and "--resize-target" in err
    assert not (tmp_path / "r").exists()
    assert evaluate(copy, tmp_path / "r", "--metrics", "psnr", "--resize-target") == 0
    assert report(tmp_path / "r")["settings"]["resize_target"] is True


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", (), "no complete pairs"),
        ("nothing", (), "not a bokeh evaluation folder"),
        (
            "data",
            ("--metrics", "psnr,sharpness"),
            "unknown metric 'sharpness': choose from psnr, ssim",
        ),
        ("data", ("--engine", "outputs:{tmp}/missing"), "does not exist"),
        ("data", ("--engine", "outputs:{tmp}/partial"), "1 pairs have no output"),
        ("data", ("--engine", "magic"), "unknown engine"),
        ("nomasks", ("--focus", "masks"), "--focus masks needs"),
        ("data", ("--size", "10x10"), "--size must be WxH"),
        ("data", ("--depth", "{tmp}/nodepth"), "neither 'auto' nor a folder"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, setup: str, args, message: str
) -> None:
    folder = {"data": data, "empty": tmp_path / "empty", "nothing": tmp_path / "nothing"}.get(setup)
    if setup == "empty":
        (folder / "input").mkdir(parents=True)
        (folder / "target").mkdir()
    elif setup == "nothing":
        folder.mkdir()
    elif setup == "nomasks":
        folder = shutil.copytree(data, tmp_path / "nomasks", ignore=shutil.ignore_patterns("focus"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(data / "target" / "0.png", partial / "0.png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert evaluate(folder, tmp_path / "r", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_eval_help_lists_the_protocols(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("bokeh", "sr", "compare"))


def test_psnr_infinity_survives_json(tmp_path: Path, data: Path) -> None:
    assert (
        evaluate(
            data, tmp_path / "r", "--aperture", str(K_TRUE), "--metrics", "psnr", "--limit", "1"
        )
        == 0
    )
    assert math.isinf(float(report(tmp_path / "r")["images"][0]["psnr"]))
