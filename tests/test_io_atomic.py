"""Atomic writes, output-path checks and JSON sidecars."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from magicbokeh.errors import MagicBokehError
from magicbokeh.io import atomic_write, ensure_writable, read_sidecar, sidecar_path, write_sidecar
from magicbokeh.io.atomic import staged_folder


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_ensure_writable_checks_without_leaving_folders_behind(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    assert ensure_writable(target, overwrite=False) == target
    assert _listing(tmp_path) == []  # no folders made and the probe file is gone
    assert ensure_writable(target, overwrite=False, create_folders=True) == target
    assert target.parent.is_dir() and _listing(target.parent) == []


def test_atomic_write_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "new" / "out.txt"
    with atomic_write(target, overwrite=False) as temporary:
        temporary.write_text("done")
    assert target.read_text() == "done" and _listing(target.parent) == ["out.txt"]


def test_ensure_writable_refuses_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"x")
    with pytest.raises(MagicBokehError, match="exists; pass --overwrite"):
        ensure_writable(target, overwrite=False)
    assert ensure_writable(target, overwrite=True) == target


def test_ensure_writable_refuses_directory(tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="is a folder"):
        ensure_writable(tmp_path, overwrite=True)


def test_ensure_writable_refuses_folder_that_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "plain_file"
    blocker.write_bytes(b"x")
    with pytest.raises(MagicBokehError, match="cannot create the output folder"):
        ensure_writable(blocker / "sub" / "out.png", overwrite=False)


def test_ensure_writable_refuses_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        try:
            (folder / "probe").write_bytes(b"x")
        except PermissionError:
            pass
        else:
            pytest.skip("permissions do not restrict this user (running as root)")
        with pytest.raises(MagicBokehError, match="cannot write to the folder"):
            ensure_writable(folder / "out.png", overwrite=False)
    finally:
        folder.chmod(stat.S_IRWXU)


def test_atomic_write_moves_result_into_place(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    with atomic_write(target, overwrite=False) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.suffix == ".png"
        assert temporary != target
        temporary.write_bytes(b"payload")
        assert not target.exists()
    assert target.read_bytes() == b"payload"
    assert _listing(tmp_path) == ["out.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, overwrite=False) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert _listing(tmp_path) == []


def test_atomic_write_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target, overwrite=True) as temporary:
        temporary.write_bytes(b"new")
        raise RuntimeError("fail")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.png"]


def test_atomic_write_refuses_existing_and_overwrites_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")
    with pytest.raises(MagicBokehError, match="--overwrite"), atomic_write(target, overwrite=False):
        pass
    target.chmod(0o640)
    with atomic_write(target, overwrite=True) as temporary:
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _listing(tmp_path) == ["out.txt"]


def test_atomic_write_rechecks_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with (
        pytest.raises(MagicBokehError, match="exists"),
        atomic_write(target, overwrite=False) as temporary,
    ):
        temporary.write_bytes(b"mine")
        target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert _listing(tmp_path) == ["out.txt"]


def test_sidecar_path_appends_json() -> None:
    assert sidecar_path("results/out.png") == Path("results/out.png.json")


def test_sidecar_round_trip(tmp_path: Path) -> None:
    image = tmp_path / "out.png"
    settings = {
        "engine": "physical",
        "K": np.float32(12.5),
        "seed": np.int64(7),
        "focus": (120, 80),
        "d_f": torch.tensor(0.25),
        "weights": np.array([0.5, 1.0]),
        "depth_file": tmp_path / "depth.png",
        "tags": {"b", "a"},
        "not_a_number": float("nan"),
    }
    written = write_sidecar(image, settings, overwrite=False)
    assert written == tmp_path / "out.png.json"
    text = written.read_text()
    assert text.startswith("{\n  ")
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    record = read_sidecar(image)
    assert record == read_sidecar(written)
    assert record["engine"] == "physical"
    assert record["K"] == 12.5 and record["seed"] == 7
    assert record["focus"] == [120, 80]
    assert record["d_f"] == 0.25
    assert record["weights"] == [0.5, 1.0]
    assert record["depth_file"] == str(tmp_path / "depth.png")
    assert record["tags"] == ["a", "b"]
    assert record["not_a_number"] == "nan"
    versions = record["versions"]
    for key in ("magicbokeh", "python", "torch", "numpy", "pillow"):
        assert isinstance(versions[key], str) and versions[key]
    assert record["created"].endswith("+00:00")
    with pytest.raises(MagicBokehError, match="exists"):
        write_sidecar(image, settings, overwrite=False)
    write_sidecar(image, {"engine": "diffusion"}, overwrite=True)
    assert read_sidecar(written)["engine"] == "diffusion"


def test_read_sidecar_errors(tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="does not exist"):
        read_sidecar(tmp_path / "none.png")
    bad = tmp_path / "bad.png.json"
    bad.write_text("{not json")
    with pytest.raises(MagicBokehError, match="not valid JSON"):
        read_sidecar(bad)


# ---------------------------------------------------------------------------- staged folders


def test_staged_folder_moves_a_complete_folder_into_place(tmp_path: Path) -> None:
    with staged_folder(tmp_path / "model") as staging:
        (staging / "a.json").write_text("{}")
        (staging / "sub").mkdir()
        (staging / "sub" / "w.bin").write_bytes(b"w")
    assert _listing(tmp_path) == ["model"]
    assert _tree(tmp_path / "model") == ["a.json", "sub", "sub/w.bin"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_interrupted_staged_folder_leaves_no_half_folder(tmp_path: Path, interruption) -> None:
    with pytest.raises(interruption), staged_folder(tmp_path / "model") as staging:
        (staging / "a.json").write_text("{}")
        raise interruption()
    assert _listing(tmp_path) == []


def test_staged_folder_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with staged_folder(tmp_path / "empty") as staging:  # an empty folder is taken
        (staging / "new").write_text("n")
    assert _listing(tmp_path / "empty") == ["new"]
    with pytest.raises(MagicBokehError, match="overwrite"), staged_folder(tmp_path / "empty"):
        pass
    with staged_folder(tmp_path / "empty", overwrite=True) as staging:
        (staging / "other").write_text("o")
    assert _listing(tmp_path / "empty") == ["other"]  # replaced as a whole
    (tmp_path / "file").write_text("f")
    with pytest.raises(MagicBokehError, match="is a file"), staged_folder(tmp_path / "file"):
        pass
    assert _listing(tmp_path) == ["empty", "file"]


def test_merged_staged_folder_replaces_its_entries_and_keeps_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "network").mkdir(parents=True)
    (folder / "network" / "old.bin").write_bytes(b"old")
    (folder / "depth").mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt), staged_folder(folder, merge=True) as staging:
        (staging / "network").mkdir()
        raise KeyboardInterrupt
    assert _tree(folder) == ["depth", "network", "network/old.bin", "notes.txt"]
    assert _listing(tmp_path) == ["model"]
    with staged_folder(folder, merge=True) as staging:
        (staging / "network").mkdir()
        (staging / "network" / "new.bin").write_bytes(b"new")
        (staging / "magicbokeh.json").write_text("{}")
    assert _tree(folder) == [
        "depth",
        "magicbokeh.json",
        "network",
        "network/new.bin",
        "notes.txt",
    ]
    assert _listing(tmp_path) == ["model"]
