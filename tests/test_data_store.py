"""Dataset folder: resume, torn manifest lines, identity, disk full, and bad inputs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicbokeh.data import synth as synth_module
from magicbokeh.data.store import SAMPLE_KINDS, DatasetStore
from magicbokeh.data.synth import SynthSettings, synthesize
from magicbokeh.errors import MagicBokehError

SETTINGS = SynthSettings(size=64, rays=8, seed=1)


def disk_matte(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    r = np.hypot((y - height / 2) / (0.45 * height), (x - width / 2) / (0.45 * width))
    return (np.clip((1 - r) * 5 + 0.5, 0, 1) * 255).astype(np.uint8)


def make_inputs(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    fg, bg = root / "fg", root / "bg"
    fg.mkdir(parents=True)
    bg.mkdir(parents=True)
    for i, colour in enumerate([(220, 40, 30), (30, 60, 220)]):
        rgba = np.zeros((40, 36, 4), np.uint8)
        rgba[..., :3] = colour
        rgba[..., :3] += rng.integers(0, 30, (40, 36, 3), dtype=np.uint8)
        rgba[..., 3] = disk_matte(40, 36)
        Image.fromarray(rgba).save(fg / f"shape{i}.png")
    for i in range(2):
        texture = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        big = Image.fromarray(texture).resize((96, 72), Image.BICUBIC)
        big.save(bg / f"bg{i}.png")
    return fg, bg


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    return make_inputs(tmp_path / "in")


def sample_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "samples").iterdir())}


def stray_files(out: Path) -> list[str]:
    """Temporary files left behind (atomic writes use hidden names)."""
    return [p.name for p in out.rglob(".*") if p.name != ".lock"]


@pytest.fixture()
def reference(inputs, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "reference"
    synthesize(*inputs, out, 4, SETTINGS, progress=False)
    return sample_files(out)


def test_resume_after_an_interruption_repairs_and_completes(inputs, reference, tmp_path) -> None:
    out = tmp_path / "out"
    synthesize(*inputs, out, 2, SETTINGS, progress=False)
    # Simulate a run killed mid-way: sample 2 half written, the manifest line torn.
    (out / "samples" / "000002_lq.png").write_bytes(b"partial")
    manifest = out / "manifest.jsonl"
    with open(manifest, "ab") as handle:
        handle.write(b'{"index": 2, "files": {"lq"')
    records = DatasetStore(out).read_manifest()
    assert sorted(records) == [0, 1]  # the torn line does not count
    report = synthesize(*inputs, out, 4, SETTINGS, progress=False)
    assert (report.made, report.existing) == (2, 2)
    lines = manifest.read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2, 3]  # no duplicate
    assert sample_files(out) == reference
    assert not stray_files(out)


def test_record_with_missing_files_is_made_again(inputs, reference, tmp_path) -> None:
    out = tmp_path / "out"
    synthesize(*inputs, out, 4, SETTINGS, progress=False)
    (out / "samples" / "000001_mask.png").unlink()
    assert not DatasetStore(out).has_files(1)
    report = synthesize(*inputs, out, 4, SETTINGS, progress=False)
    assert report.made == 1
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == [0, 1, 2, 3]
    assert sample_files(out) == reference


def test_folder_with_another_dataset_is_refused(inputs, tmp_path) -> None:
    out = tmp_path / "out"
    synthesize(*inputs, out, 1, SETTINGS, progress=False)
    before = sample_files(out)
    with pytest.raises(MagicBokehError, match="other settings.*seed"):
        synthesize(*inputs, out, 1, SynthSettings(size=64, rays=8, seed=2), progress=False)
    # Same settings, other inputs: a changed background file changes the identity.
    Image.new("RGB", (80, 80), (10, 200, 10)).save(inputs[1] / "bg1.png")
    with pytest.raises(MagicBokehError, match=r"different dataset \(sources.backgrounds differ"):
        synthesize(*inputs, out, 1, SETTINGS, progress=False)
    assert sample_files(out) == before
    other = tmp_path / "not_a_dataset"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MagicBokehError, match="not empty"):
        synthesize(*inputs, other, 1, SETTINGS, progress=False)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def failing_fsync(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make the ``after``-th and every later fsync fail with ENOSPC (disk full)."""
    real, calls = os.fsync, {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("after", [1 + 5 + 1 + 2, 1 + 5 + 5])  # mid-sample; at the manifest line
def test_disk_full_leaves_no_partial_sample_and_resumes(
    inputs, reference, tmp_path, monkeypatch, after: int
) -> None:
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        failing_fsync(patch, after)  # header, sample 0 (5 files + manifest), then sample 1 fails
        with pytest.raises(MagicBokehError, match="no space left.*run the same command again"):
            synthesize(*inputs, out, 4, SETTINGS, progress=False)
    records = DatasetStore(out).read_manifest()
    assert sorted(records) == [0]
    assert (out / "manifest.jsonl").read_bytes().endswith(b"\n")
    assert not stray_files(out)
    for path in (out / "samples").iterdir():  # no partial sample; complete leftovers only
        assert not path.name.startswith("000001_") or path.read_bytes() == reference[path.name]
    if after < 1 + 5 + 5:
        assert not any(p.name.startswith("000001_") for p in (out / "samples").iterdir())
    report = synthesize(*inputs, out, 4, SETTINGS, progress=False)
    assert (report.made, report.existing) == (3, 1)
    assert sample_files(out) == reference


def test_foreground_without_alpha_is_an_error_naming_it(inputs, tmp_path) -> None:
    fg, bg = inputs
    Image.new("RGB", (30, 30), (200, 0, 0)).save(fg / "flat.jpg")
    with pytest.raises(MagicBokehError, match=r"flat\.jpg has no alpha channel"):
        synthesize(fg, bg, tmp_path / "o", 1, SETTINGS, progress=False)
    (fg / "flat.jpg").unlink()
    Image.new("RGBA", (30, 30), (200, 0, 0, 255)).save(fg / "opaque.png")
    with pytest.raises(MagicBokehError, match=r"opaque\.png .*opaque everywhere"):
        synthesize(fg, bg, tmp_path / "o", 1, SETTINGS, progress=False)
    assert not (tmp_path / "o").exists()


def test_empty_or_missing_folders_are_errors(inputs, tmp_path) -> None:
    fg, bg = inputs
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(MagicBokehError, match="foreground folder .* holds no images"):
        synthesize(empty, bg, tmp_path / "o", 1, SETTINGS, progress=False)
    with pytest.raises(MagicBokehError, match="background folder .* holds no images"):
        synthesize(fg, empty, tmp_path / "o", 1, SETTINGS, progress=False)
    with pytest.raises(MagicBokehError, match="does not exist"):
        synthesize(fg, tmp_path / "nowhere", tmp_path / "o", 1, SETTINGS, progress=False)
    assert not (tmp_path / "o").exists()


def test_unreadable_files_are_skipped_counted_and_logged(inputs, tmp_path, caplog) -> None:
    fg, bg = inputs
    (fg / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (bg / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    report = synthesize(fg, bg, tmp_path / "o", 2, SETTINGS, progress=False)
    assert report.made == 2
    assert sorted(Path(s["file"]).name for s in report.skipped_sources) == [
        "broken.png",
        "truncated.jpg",
    ]
    assert "broken.png" in caplog.text and "truncated.jpg" in caplog.text
    header = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert len(header["skipped"]) == 2
    assert "broken.png" not in header["sources"]["foregrounds"]


def test_all_unreadable_is_an_error(inputs, tmp_path) -> None:
    fg, _ = inputs
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"nope")
    with pytest.raises(MagicBokehError, match="none of the 1 background images"):
        synthesize(fg, bad, tmp_path / "o", 1, SETTINGS, progress=False)


def test_source_lost_mid_run_fails_that_sample_and_the_run_goes_on(
    inputs, tmp_path, monkeypatch
) -> None:
    real = synth_module.load_image

    def flaky(path, **kwargs):
        if Path(path).name == "shape0.png":
            raise MagicBokehError(f"image {path} cannot be decoded (damaged)")
        return real(path, **kwargs)

    out = tmp_path / "o"
    synthesize(*inputs, out, 1, SETTINGS, progress=False)  # scan sees every file intact
    monkeypatch.setattr(synth_module, "load_image", flaky)
    report = synthesize(*inputs, out, 6, SETTINGS, progress=False)
    uses_shape0 = {
        i for i, r in DatasetStore(out).read_manifest().items() if "shape0.png" in r["foregrounds"]
    }
    assert report.failed and all("damaged" in reason for _, reason in report.failed)
    assert report.made + len(report.failed) == 5
    assert uses_shape0 <= {0}  # only the sample made before the file "broke"
    monkeypatch.undo()
    again = synthesize(*inputs, out, 6, SETTINGS, progress=False)
    assert again.made == len(report.failed) and not again.failed


def test_store_refuses_a_second_writer(tmp_path) -> None:
    store = DatasetStore(tmp_path / "o")
    with store.lock(), pytest.raises(MagicBokehError, match="another run"), store.lock():
        pass


def test_sample_kinds_are_the_documented_files() -> None:
    assert SAMPLE_KINDS == ("lq", "hq", "bokeh", "disparity", "mask")
    store = DatasetStore("x")
    assert store.files(123)["disparity"] == "samples/000123_disparity.png"
