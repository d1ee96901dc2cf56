"""`magicbokeh synth`: samples, reproducibility, physics of the ground truth, preview, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from magicbokeh.data import command
from magicbokeh.data.scene import (
    BackgroundPlan,
    Cutout,
    ForegroundPlan,
    ScenePlan,
    describe_cutout,
)
from magicbokeh.data.store import SAMPLE_KINDS, DatasetStore, read_gray, read_rgb
from magicbokeh.data.synth import SynthSettings, render_plan, synthesize, write_preview
from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import focus_mask

SETTINGS = SynthSettings(size=64, rays=16, seed=7)


def soft_ellipse(height: int, width: int, softness: float = 6.0) -> np.ndarray:
    """``H×W`` uint8 matte: a centred ellipse with a soft edge."""
    y, x = np.mgrid[:height, :width]
    r = np.hypot((y - height / 2) / (0.45 * height), (x - width / 2) / (0.4 * width))
    return (np.clip((1 - r) * softness + 0.5, 0, 1) * 255).astype(np.uint8)


def small(image: np.ndarray, width: int) -> np.ndarray:
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def make_inputs(root: Path) -> tuple[Path, Path]:
    """Foregrounds: real photos cut out with a synthetic matte, and a soft-edged shape;
    backgrounds: real photos."""
    fg, bg = root / "fg", root / "bg"
    fg.mkdir(parents=True)
    bg.mkdir(parents=True)
    for name in ("astronaut", "chelsea"):
        rgb = small(getattr(photos, name)(), 80)
        rgba = np.dstack([rgb, soft_ellipse(*rgb.shape[:2])])
        Image.fromarray(rgba).save(fg / f"{name}.png")
    shape = np.zeros((50, 40, 4), np.uint8)
    shape[..., :3] = (230, 200, 40)
    shape[..., 3] = soft_ellipse(50, 40, softness=3)
    (fg / "shapes").mkdir()
    Image.fromarray(shape).save(fg / "shapes" / "disk.png")
    for name in ("rocket", "coffee"):
        Image.fromarray(small(getattr(photos, name)(), 120)).save(bg / f"{name}.jpg", quality=95)
    return fg, bg


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "ds"
    synthesize(*inputs, out, 6, SETTINGS, progress=False)
    return out


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "samples").iterdir())}


def records(root: Path) -> dict[int, dict]:
    return DatasetStore(root).read_manifest()


def test_writes_every_file_and_a_complete_record(built: Path) -> None:
    found = records(built)
    assert sorted(found) == list(range(6))
    for index, record in found.items():
        for kind in SAMPLE_KINDS:
            assert (built / record["files"][kind]).is_file()
        assert record["files"]["lq"] == f"samples/{index:06d}_lq.png"
        assert 0 <= record["K"] <= 32 and 0 <= record["d_f"] <= 1
        assert record["focus"]["target"] in ("foreground0", "foreground1", "background")
        assert record["background"] in ("rocket.jpg", "coffee.jpg")
        assert set(record["foregrounds"]) <= {"astronaut.png", "chelsea.png", "shapes/disk.png"}
        plan = record["plan"]
        for f in plan["foregrounds"]:
            assert {"box", "scale", "position", "flip", "disparity"} <= set(f)
        assert "crop" in plan["background"] and "surface" in plan["background"]
        assert {"kernel1", "noise1", "jpeg1", "jpeg2"} <= set(record["degradation"])
        assert record["rays"] == 16 and record["seed"] == 7
        lq, hq = read_rgb(built / record["files"]["lq"]), read_rgb(built / record["files"]["hq"])
        assert lq.shape == hq.shape == (64, 64, 3)  # LQ resized back, as in the paper
        disparity = read_gray(built / record["files"]["disparity"])
        assert disparity.min() == 0 and disparity.max() == 1
    header = json.loads((built / "dataset.json").read_text())
    assert header["settings"]["size"] == 64 and header["count"] == 6
    assert len(header["identity"]) == 64
    assert set(header["sources"]["foregrounds"]) == {
        "astronaut.png",
        "chelsea.png",
        "shapes/disk.png",
    }


def test_16_bit_disparity_and_focus_mask_agree(built: Path) -> None:
    for record in records(built).values():
        with Image.open(built / record["files"]["disparity"]) as image:
            assert image.mode.startswith("I")  # 16-bit grey
        disparity = torch.from_numpy(read_gray(built / record["files"]["disparity"]))
        mask = read_gray(built / record["files"]["mask"])
        expected = focus_mask(disparity[None, None], record["d_f"], record["K"])[0, 0].numpy()
        disagree = np.mean(mask != expected)
        assert disagree < 0.002  # only pixels at the threshold after 16-bit rounding
        assert record["in_focus_fraction"] == pytest.approx(mask.mean(), abs=0.002)


def gradient_energy(image: np.ndarray) -> np.ndarray:
    """``H×(W−1)`` absolute horizontal differences of the grey image."""
    return np.abs(np.diff(image.mean(axis=2), axis=1))


@pytest.mark.parametrize("target", ["foreground0", "background"])
def test_bokeh_is_sharp_where_focused_and_blurred_elsewhere(target: str) -> None:
    """A textured cut-out at disparity 1 in front of a flat photo background at 0."""
    size = 96
    background = small(photos.immunohistochemistry(), 160).astype(np.float32) / 255
    cat = small(photos.chelsea(), 80).astype(np.float32) / 255
    alpha = soft_ellipse(*cat.shape[:2]).astype(np.float32) / 255
    info = describe_cutout("cat.png", alpha)
    box_h = info.box[3] - info.box[1]
    scale = 40 / box_h
    width = round((info.box[2] - info.box[0]) * scale)
    plan = ScenePlan(
        size=size,
        background=BackgroundPlan("cells.jpg", (10, 0, 90), False, "flat", 0.0, 0.0, ()),
        foregrounds=(
            ForegroundPlan("cat.png", info.box, scale, (width, 40), (10, 10), False, 0.9),
        ),
        aperture=20.0,
        focus_target=target,
        focus_draw=0.5,
    )
    sample = render_plan(
        plan, background, [Cutout(cat, alpha)], rays=32, render_seed=1, degrade_seed=2
    )
    assert sample.record["d_f"] == (1.0 if target == "foreground0" else 0.0)
    inside = sample.disparity > 0.999
    inside = cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    outside = cv2.dilate((sample.disparity > 0).astype(np.uint8), np.ones((43, 43), np.uint8)) == 0
    assert inside.sum() > 100 and outside.sum() > 1000
    focused, defocused = (inside, outside) if target == "foreground0" else (outside, inside)
    error = np.abs(sample.bokeh - sample.hq).mean(axis=2)
    assert error[focused].mean() < 0.02  # in focus: the ground truth is the sharp image
    assert error[defocused].mean() > 0.03
    hq_energy = gradient_energy(sample.hq)[defocused[:, 1:]].mean()
    bokeh_energy = gradient_energy(sample.bokeh)[defocused[:, 1:]].mean()
    assert bokeh_energy < 0.5 * hq_energy  # out of focus: blurred (radius 20 px)
    np.testing.assert_array_equal(
        sample.mask > 0.5, np.abs(sample.disparity - sample.record["d_f"]) * 20 / 32 <= 0.1
    )


def test_lq_is_degraded(built: Path) -> None:
    for record in records(built).values():
        lq = read_rgb(built / record["files"]["lq"])
        hq = read_rgb(built / record["files"]["hq"])
        assert np.abs(lq - hq).mean() > 0.01


def test_same_seed_same_bytes_whatever_the_workers(inputs, built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthesize(*inputs, again, 6, SETTINGS, workers=2, progress=False)
    assert file_bytes(again) == file_bytes(built)
    assert records(again) == records(built)
    other = tmp_path / "other"
    synthesize(*inputs, other, 2, SynthSettings(size=64, rays=16, seed=8), progress=False)
    assert file_bytes(other)["000000_hq.png"] != file_bytes(built)["000000_hq.png"]


def test_extending_the_count_keeps_the_first_samples(inputs, built: Path, tmp_path: Path) -> None:
    out = tmp_path / "grow"
    synthesize(*inputs, out, 2, SETTINGS, progress=False)
    report = synthesize(*inputs, out, 4, SETTINGS, progress=False)
    assert (report.made, report.existing) == (2, 2)
    mine, reference = file_bytes(out), file_bytes(built)
    assert all(mine[name] == reference[name] for name in mine)
    assert json.loads((out / "dataset.json").read_text())["count"] == 4


def test_preview_sheet(built: Path, tmp_path: Path) -> None:
    path = write_preview(built, tmp_path / "sheet.png", count=3)
    with Image.open(path) as sheet:
        width, height = sheet.size
    assert width > 4 * 256 and height > 3 * 256  # five columns, three rows


def synth_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magicbokeh")
    command.add_subparser(parser.add_subparsers())
    return parser


def test_command_line(inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fg, bg = inputs
    out, preview = tmp_path / "cli", tmp_path / "preview.png"
    argv = ["synth", "--foregrounds", fg, "--backgrounds", bg, "-n", 2, "-o", out]
    argv += ["--size", 64, "--samples", 8, "--workers", 1, "--seed", 3, "--preview", preview]
    argv += ["--device", "cpu"]
    args = synth_parser().parse_args([str(a) for a in argv])
    assert args.func(args) == 0
    assert preview.is_file() and len(records(out)) == 2
    assert {record["device"] for record in records(out).values()} == {"cpu"}
    assert "2 samples made" in capsys.readouterr().err
    with pytest.raises(MagicBokehError, match="--overwrite"):
        args.func(args)  # the preview exists: kept unless asked
    args = synth_parser().parse_args([str(a) for a in [*argv, "--overwrite"]])
    assert args.func(args) == 0
    assert "0 samples made, 2 already done" in capsys.readouterr().err
    help_text = synth_parser().format_help() + command.RULES
    assert "mattes are never invented" in help_text


def test_command_line_errors_through_the_cli(
    inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from magicbokeh import cli

    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli.main(
        ["synth", "--foregrounds", str(empty), "--backgrounds", str(inputs[1]), "-n", "1"]
        + ["-o", str(tmp_path / "o")]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: foreground folder") and error.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bad_settings(inputs, tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="--size"):
        synthesize(*inputs, tmp_path / "a", 1, SynthSettings(size=8), progress=False)
    with pytest.raises(MagicBokehError, match="at least 1"):
        synthesize(*inputs, tmp_path / "b", 0, SETTINGS, progress=False)
    with pytest.raises(MagicBokehError, match="samples"):
        synthesize(*inputs, tmp_path / "c", 1, SynthSettings(size=64, rays=0), progress=False)
    assert not any(tmp_path.iterdir())
