"""Batch rendering: folders in, same relative names out, resume, bad files, process split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicbokeh.batch import BatchItem, plan_batch, process_share
from magicbokeh.cli import main

PHYSICAL = ("--engine", "physical", "--aperture", "6", "--depth", "heuristic")


@pytest.fixture(autouse=True)
def no_installed_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "no-models"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """``in/`` with a.png, b.jpg, sub/c.png (small textured photos) and a damaged bad.jpg."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        pixels = (rng.uniform(0.0, 1.0, (40, 56, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a real jpeg")
    return folder


def run_cli(*args: object) -> int:
    return main(["render", *(str(a) for a in args)])


def outputs(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_folder_renders_same_names_reports_bad_file_and_resumes(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert run_cli(photos, "-o", out, *PHYSICAL) == 1
    captured = capsys.readouterr()
    assert outputs(out) == {"a.png", "a.png.json", "b.jpg", "b.jpg.json"}  # not recursive
    assert "bad.jpg" in captured.err and "Traceback" not in captured.err
    assert "2 rendered, 0 skipped" in captured.out and "1 failed" in captured.out
    assert Image.open(out / "b.jpg").format == "JPEG"
    settings = json.loads((out / "a.png.json").read_text())
    assert settings["focus"] == {"kind": "auto"} and settings["aperture_K"] == 6.0
    assert settings["input"] == str((photos / "a.png").resolve())

    first = (out / "a.png").stat().st_mtime_ns
    (photos / "bad.jpg").unlink()
    assert run_cli(photos, "-o", out, "--recursive", *PHYSICAL) == 0
    assert "1 rendered, 2 skipped" in capsys.readouterr().out
    assert (out / "sub" / "c.png").is_file() and (out / "sub" / "c.png.json").is_file()
    assert (out / "a.png").stat().st_mtime_ns == first

    assert run_cli(photos, "-o", out, "--recursive", "--overwrite", *PHYSICAL) == 0
    assert "3 rendered, 0 skipped" in capsys.readouterr().out
    assert (out / "a.png").stat().st_mtime_ns != first


def test_outputs_differ_from_inputs_and_follow_the_given_focus(
    photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = run_cli(
        photos / "a.png", photos / "sub" / "c.png", "-o", out, "--focus", "10,10", "--format",
        "tif", *PHYSICAL,
    )  # fmt: skip
    assert code == 0
    assert outputs(out) == {"a.tif", "a.tif.json", "c.tif", "c.tif.json"}
    rendered = np.asarray(Image.open(out / "a.tif"), dtype=np.float32)
    original = np.asarray(Image.open(photos / "a.png"), dtype=np.float32)
    assert rendered.shape == original.shape and np.abs(rendered - original).mean() > 1.0
    assert json.loads((out / "c.tif.json").read_text())["focus"] == {
        "kind": "point",
        "x": 10.0,
        "y": 10.0,
    }


def test_unfinished_output_without_sidecar_is_not_replaced(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's own file")
    assert run_cli(photos / "a.png", photos / "b.jpg", "-o", out, *PHYSICAL) == 1
    assert (out / "a.png").read_bytes() == b"the user's own file"
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "b.jpg.json").is_file()


def test_output_folder_inside_the_input_folder_is_not_read_back(photos: Path) -> None:
    (photos / "bad.jpg").unlink()
    (photos / ".hidden.png").write_bytes((photos / "a.png").read_bytes())
    out = photos / "rendered"
    assert run_cli(photos, "-o", out, "--recursive", *PHYSICAL) == 0
    assert run_cli(photos, "-o", out, "--recursive", *PHYSICAL) == 0
    assert outputs(out) == {
        f"{n}{s}" for n in ("a.png", "b.jpg", "sub/c.png") for s in ("", ".json")
    }


def test_single_photo_into_an_existing_folder(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(photos / "b.jpg", "-o", out, *PHYSICAL) == 0
    assert outputs(out) == {"b.jpg", "b.jpg.json"}


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--save-depth", "d.npy"), "--save-depth"),
        (("--chromatic", "1,2"), "--chromatic"),
        (("--format", "png"), "both be written"),
        (("--released",), "--released"),
    ],
)
def test_bad_options_stop_before_any_work(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple, words: str
) -> None:
    (photos / "a.jpg").write_bytes((photos / "b.jpg").read_bytes())  # a.png and a.jpg → a.png
    out = tmp_path / "out"
    assert run_cli(photos, "-o", out, *PHYSICAL, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err
    assert not out.exists()


def test_output_that_would_replace_an_input_is_refused(photos: Path) -> None:
    with pytest.raises(Exception, match="would replace the input"):
        plan_batch([photos], photos, recursive=False)


def test_process_share_matches_accelerates_split() -> None:
    items = [BatchItem(Path(f"{i}.png"), Path(f"out/{i}.png")) for i in range(5)]
    shares = [process_share(items, rank, 2) for rank in range(2)]
    assert [len(s) for s in shares] == [3, 2]  # split_between_processes: first gets the extra
    assert shares[0] + shares[1] == items
    assert [len(process_share(items, r, 8)) for r in range(8)] == [1] * 5 + [0] * 3


def test_processes_render_disjoint_shares(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """What ``accelerate launch --num_processes 2`` sets up: each rank renders its share."""
    (photos / "bad.jpg").unlink()
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        before = outputs(out) if out.exists() else set()
        assert run_cli(photos, "-o", out, "--recursive", *PHYSICAL) == 0
        done.append(outputs(out) - before)
        assert f"process {rank + 1}/2" in capsys.readouterr().out
    assert done[0] == {"a.png", "a.png.json", "b.jpg", "b.jpg.json"}
    assert done[1] == {"sub/c.png", "sub/c.png.json"}
