"""``magicbokeh eval depth``: layouts, crops, the report, saved predictions and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from magicbokeh import cli  # noqa: E402
from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.eval.depth import evaluate_depth  # noqa: E402
from magicbokeh.eval.depth_data import (  # noqa: E402
    PROTOCOLS,
    benchmark_crop,
    crop_mask,
    find_samples,
    read_sample,
    valid_mask,
)
from magicbokeh.metrics.depth import depth_metrics  # noqa: E402
from tiny_depth import tiny_model  # noqa: E402

NYU = PROTOCOLS["nyu"]
KITTI = PROTOCOLS["kitti"]


def scene_depth(height: int, width: int, far: float) -> np.ndarray:
    """A depth map in metres: a floor ramp from 1 m (bottom) to ``far`` (top), a near box."""
    depth = np.repeat(np.linspace(far, 1.0, height)[:, None], width, axis=1)
    depth[height // 3 : 2 * height // 3, width // 3 : width // 2] = 1.5
    return depth


def write_pair(image: Path, depth_png: Path, depth: np.ndarray, scale: float, seed: int) -> None:
    """An RGB PNG whose brightness follows 1/depth, and its 16-bit ground truth."""
    rng = np.random.default_rng(seed)
    shade = (255 * (1 / depth) / (1 / depth).max())[..., None] * np.array([1.0, 0.8, 0.6])
    rgb = np.clip(shade + rng.normal(0, 8, shade.shape), 0, 255).astype(np.uint8)
    image.parent.mkdir(parents=True, exist_ok=True)
    depth_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image), rgb[..., ::-1])
    cv2.imwrite(str(depth_png), np.round(depth * scale).astype(np.uint16))


def nyu_folder(root: Path, count: int = 3, size: tuple[int, int] = (48, 64)) -> Path:
    for index in range(count):
        scene = root / "test" / f"scene_{index % 2}"
        depth = scene_depth(*size, far=4.0 + index)
        write_pair(
            scene / f"rgb_{index:04d}.png", scene / f"depth_{index:04d}.png", depth, 1000, index
        )
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-da"
    tiny_model().save_pretrained(folder)
    return folder


def run_cli(*argv: str) -> int:
    return cli.main(["eval", "depth", *argv, "-q", "--input-size", "56"])


# --- layouts and protocol constants ---------------------------------------------------------------


def test_nyu_layouts_are_detected(tmp_path: Path) -> None:
    root = nyu_folder(tmp_path / "marigold")
    (root / "test" / "scene_0" / "filled_0000.png").write_bytes(b"ignored")
    layout, samples = find_samples(NYU, root)
    assert layout == "nyu-rgb-depth"
    assert [s.name for s in samples] == [
        "test/scene_0/rgb_0000",
        "test/scene_0/rgb_0002",
        "test/scene_1/rgb_0001",
    ]
    bts = tmp_path / "bts" / "official_splits" / "test" / "kitchen"
    write_pair(bts / "rgb_00045.jpg", bts / "sync_depth_00045.png", scene_depth(48, 64, 5), 1000, 0)
    layout, samples = find_samples(NYU, tmp_path / "bts")
    assert layout == "nyu-sync-depth" and samples[0].depth.name == "sync_depth_00045.png"


def test_kitti_layouts_and_split_file(tmp_path: Path) -> None:
    depth = scene_depth(40, 120, far=60.0)
    raw = tmp_path / "raw"
    drive = "2011_09_26_drive_0002_sync"
    for frame in ("0000000005", "0000000069"):
        write_pair(
            raw / "2011_09_26" / drive / "image_02" / "data" / f"{frame}.png",
            raw / drive / "proj_depth" / "groundtruth" / "image_02" / f"{frame}.png",
            depth,
            256,
            0,
        )
    # A frame without ground truth is not a test pair.
    write_pair(raw / "2011_09_26" / drive / "image_02" / "data" / "x.png", tmp_path / "x.png",
               depth, 256, 0)  # fmt: skip
    layout, samples = find_samples(KITTI, raw)
    assert layout == "kitti-raw"
    assert [s.name for s in samples] == [
        f"2011_09_26/{drive}/image_02/data/0000000005",
        f"2011_09_26/{drive}/image_02/data/0000000069",
    ]
    split = tmp_path / "eigen.txt"
    split.write_text(
        f"2011_09_26/{drive}/image_02/data/0000000069.png "
        f"{drive}/proj_depth/groundtruth/image_02/0000000069.png 721.5377\n"
        f"2011_09_26/{drive}/image_02/data/0000000005.png None 721.5377\n"
    )
    layout, samples = find_samples(KITTI, raw, split)
    assert layout == "split" and len(samples) == 1 and samples[0].name.endswith("0000000069")

    selection = tmp_path / "depth_selection" / "val_selection_cropped"
    stem = f"{drive}_{{}}_0000000005_image_02.png"
    write_pair(
        selection / "image" / stem.format("image"),
        selection / "groundtruth_depth" / stem.format("groundtruth_depth"),
        depth,
        256,
        1,
    )
    layout, samples = find_samples(KITTI, tmp_path / "depth_selection")
    assert layout == "kitti-selection" and len(samples) == 1
    rgb, metres = read_sample(samples[0], KITTI)
    assert rgb.shape == (40, 120, 3)
    np.testing.assert_allclose(metres, np.round(depth * 256) / 256)


def test_eigen_crop_is_exact_on_nyu_frames() -> None:
    mask = crop_mask((480, 640), NYU)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (45, 470, 41, 600)
    assert mask.sum() == 426 * 560


def test_garg_crop_and_benchmark_crop_on_kitti_frames() -> None:
    mask = crop_mask((352, 1216), KITTI)
    rows, cols = np.nonzero(mask)
    # int(0.40810811·352) = 143, int(0.99189189·352) = 349; int(0.03594771·1216) = 43,
    # int(0.96405229·1216) = 1172.
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (143, 349, 43, 1172)
    frame = np.arange(375 * 1242).reshape(375, 1242)
    cropped = benchmark_crop(frame, KITTI)
    assert cropped.shape == (352, 1216)
    assert cropped[0, 0] == frame[23, 13] and cropped[-1, -1] == frame[374, 1228]
    assert benchmark_crop(frame, NYU) is frame


def test_valid_mask_uses_the_open_depth_range() -> None:
    depth = np.full((480, 640), 5.0)
    depth[100, 100], depth[101, 100], depth[102, 100] = 0.0, 10.0, 9.999
    mask = valid_mask(depth, NYU)
    assert not mask[100, 100] and not mask[101, 100] and mask[102, 100]
    assert not mask[0, 0]  # outside the Eigen crop


# --- the benchmark --------------------------------------------------------------------------------


class ExactDisparity:
    """Predicts an affine map of the true disparity of whatever image it is shown (for checking
    the protocol's plumbing: every column must score AbsRel 0)."""

    device = torch.device("cpu")

    def __init__(self, depth: np.ndarray) -> None:
        self.depth = depth

    def disparity(self, images: torch.Tensor, *, normalise: bool = True) -> torch.Tensor:
        assert images.shape[-2:] == self.depth.shape
        return torch.from_numpy(7.0 / self.depth + 0.3).float()[None, None]


def test_a_perfect_prediction_scores_zero_in_every_column(tmp_path: Path) -> None:
    root = nyu_folder(tmp_path / "nyu", count=1)
    _, samples = find_samples(NYU, root)
    _, depth = read_sample(samples[0], NYU)
    result = evaluate_depth({"exact": ExactDisparity(depth)}, samples, NYU)
    columns = result.columns("exact")
    for column in ("clear", "degrade", "average"):
        assert columns[column]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
        assert columns[column]["delta1"] == 1.0


def test_report_and_saved_predictions(tmp_path: Path, model_dir: Path) -> None:
    root = nyu_folder(tmp_path / "nyu")
    predictions = tmp_path / "pred"
    out = tmp_path / "report"
    argv = ["--dataset", "nyu", "--data", str(root), "--model", str(model_dir), "-o", str(out)]
    assert run_cli(*argv, "--save-predictions", str(predictions), "--degrade-seed", "3") == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["model"], r["column"]) for r in report["rows"]] == [
        ("tiny-da", "clear"),
        ("tiny-da", "degrade"),
        ("tiny-da", "average"),
    ]
    assert report["data"]["layout"] == "nyu-rgb-depth" and report["data"]["scored"] == 3
    assert report["protocol"] == "depth" and report["dataset"] == "nyu"
    assert report["conventions"]["max_depth_m"] == 10.0
    assert report["conventions"]["crop"]["name"] == "eigen" and report["data"]["input_size"] == 56
    markdown = (out / "report.md").read_text()
    assert "| tiny-da | Degrade |" in markdown and "AbsRel" in markdown
    per_image = report["models"][0]["per_image"]
    assert len(per_image) == 3
    # Anyone can recompute the metrics from the saved files.
    for record in per_image:
        for column in ("clear", "degrade"):
            aligned = np.load(predictions / column / f"{record['name']}.npy")
            disparity = np.load(predictions / column / f"{record['name']}_disparity.npy")
            assert aligned.dtype == disparity.dtype == np.float32
            assert aligned.shape == disparity.shape == (48, 64)
            _, depth = read_sample(
                next(s for s in find_samples(NYU, root)[1] if s.name == record["name"]), NYU
            )
            mask = valid_mask(depth, NYU)
            again = depth_metrics(aligned, depth, mask)
            assert again["abs_rel"] == pytest.approx(record[column]["abs_rel"], rel=1e-5)
            refit = np.clip(
                record[column]["scale"] * disparity + record[column]["shift"], 0.1, 1000
            )
            np.testing.assert_allclose(1 / refit, aligned, rtol=1e-4)
    mean = np.mean([r["degrade"]["abs_rel"] for r in per_image])
    assert report["rows"][1]["abs_rel"] == pytest.approx(mean)
    assert report["rows"][2]["abs_rel"] == pytest.approx(
        (report["rows"][0]["abs_rel"] + report["rows"][1]["abs_rel"]) / 2
    )
    # The report is not replaced without --overwrite.
    assert run_cli(*argv) == 2


def test_models_compared_in_one_report_see_the_same_degraded_inputs(
    tmp_path: Path, model_dir: Path
) -> None:
    root = nyu_folder(tmp_path / "nyu", count=2)
    out, predictions = tmp_path / "report", tmp_path / "pred"
    model = str(model_dir)
    argv = ["--dataset", "nyu", "--data", str(root), "-o", str(out)]
    assert run_cli(*argv, "--model", model, "--model", model, "--save-predictions",
                   str(predictions)) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    first, second = report["models"]
    assert (first["label"], second["label"]) == ("tiny-da", "tiny-da#2")
    assert first["per_image"] == second["per_image"]
    assert (predictions / "tiny-da" / "degrade" / "test" / "scene_0" / "rgb_0000.npy").is_file()
    assert (predictions / "tiny-da-2" / "clear" / "test" / "scene_1" / "rgb_0001.npy").is_file()
    # Another seed degrades differently.
    assert run_cli(*argv, "--model", model, "--degrade-seed", "9", "--overwrite") == 0
    other = json.loads((out / "report.json").read_text())["models"][0]["per_image"]
    assert other[0]["clear"] == first["per_image"][0]["clear"]
    assert other[0]["degrade"] != first["per_image"][0]["degrade"]


# --- bad input ------------------------------------------------------------------------------------


def test_unreadable_files_and_empty_ground_truth_are_skipped_with_a_count(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    root = nyu_folder(tmp_path / "nyu", count=3)
    scene = root / "test" / "scene_0"
    (scene / "rgb_0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cv2.imwrite(str(scene / "depth_0000.png"), np.zeros((48, 64), np.uint16))
    out = tmp_path / "report"
    argv = ["eval", "depth", "--dataset", "nyu", "--data", str(root), "--model", str(model_dir)]
    assert cli.main([*argv, "-o", str(out), "--input-size", "56"]) == 0
    assert "skipping 1 unreadable test pairs" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["scored"] == 1
    reasons = {item["name"]: item["reason"] for item in report["data"]["skipped"]}
    assert set(reasons) == {"test/scene_0/rgb_0000", "test/scene_0/rgb_0002"}
    assert "no valid pixels" in reasons["test/scene_0/rgb_0000"]
    assert "cannot be read" in reasons["test/scene_0/rgb_0002"]
    assert "Skipped:" in (out / "report.md").read_text()


def test_size_mismatch_is_an_error_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = nyu_folder(tmp_path / "nyu", count=2)
    cv2.imwrite(str(root / "test" / "scene_1" / "depth_0001.png"), np.ones((40, 64), np.uint16))
    out = tmp_path / "report"
    missing_model = tmp_path / "no-model"  # never loaded: the pairs are checked first
    argv = ["--dataset", "nyu", "--data", str(root), "--model", str(missing_model)]
    assert run_cli(*argv, "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "is 64×48 but its ground truth" in err and "64×40" in err
    assert not out.exists()


def test_empty_dataset_and_no_pairs_are_errors(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    argv = ["--dataset", "kitti", "--model", str(model_dir), "-o", str(tmp_path / "r")]
    assert run_cli(*argv, "--data", str(tmp_path / "empty")) == 2
    assert "no KITTI image/depth pairs found" in capsys.readouterr().err
    assert run_cli(*argv, "--data", str(tmp_path / "nowhere")) == 2
    only_bad = nyu_folder(tmp_path / "bad", count=1)
    (only_bad / "test" / "scene_0" / "depth_0000.png").write_bytes(b"not a png")
    argv[1] = "nyu"
    assert run_cli(*argv, "--data", str(only_bad)) == 2
    assert "none of the 1 test pairs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_model_that_is_not_depth_anything_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path / "dinov2"
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    Dinov2Model(config).save_pretrained(folder)
    root = nyu_folder(tmp_path / "nyu", count=1)
    out = tmp_path / "report"
    assert run_cli("--dataset", "nyu", "--data", str(root), "--model", str(folder),
                   "-o", str(out)) == 2  # fmt: skip
    assert "not Depth Anything V2" in capsys.readouterr().err
    assert not out.exists()


def test_ground_truth_must_be_16_bit(tmp_path: Path) -> None:
    root = nyu_folder(tmp_path / "nyu", count=1)
    cv2.imwrite(str(root / "test" / "scene_0" / "depth_0000.png"), np.ones((48, 64), np.uint8))
    _, samples = find_samples(NYU, root)
    with pytest.raises(MagicBokehError, match="16-bit PNG"):
        read_sample(samples[0], NYU)
