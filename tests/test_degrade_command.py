"""``magicbokeh degrade``: folders, mirrored names, per-image seeds, skips, refusals, manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicbokeh.degrade import command
from magicbokeh.errors import MagicBokehError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magicbokeh")
    command.add_subparser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(["degrade", *argv, "-q"])
    return args.func(args)


def _write_photo(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coarse).resize(size, Image.BICUBIC).save(path)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _write_photo(root / "a.png", (96, 64), 0)
    _write_photo(root / "sub" / "b.jpg", (64, 80), 1)
    _write_photo(root / "sub" / "c.webp", (72, 72), 2)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_degrades_a_folder_mirroring_names(photos: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    assert _run(str(photos), "-o", str(out), "--seed", "5") == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png",
        "sub/b.png",
        "sub/c.png",
    ]
    assert Image.open(out / "a.png").size == (24, 16)
    assert Image.open(out / "sub" / "b.png").size == (16, 20)
    assert "broken.jpg" in caplog.text

    manifest = json.loads((out / command.MANIFEST_NAME).read_text())
    assert manifest["settings"]["scale"] == 4 and manifest["settings"]["seed"] == 5
    assert manifest["settings"]["config"]["jpeg_range"] == [30, 95]
    assert {"magicbokeh", "torch", "numpy", "pillow"} <= set(manifest["versions"])
    assert [r["output"] for r in manifest["images"]] == ["a.png", "sub/b.png", "sub/c.png"]
    assert len(manifest["skipped"]) == 1 and "broken.jpg" in manifest["skipped"][0]["input"]
    record = manifest["images"][0]
    assert record["lq_size"] == {"width": 24, "height": 16}
    assert {"kernel1", "resize1", "noise1", "jpeg1", "final_sinc", "jpeg2"} <= set(record["params"])
    assert record["seed"] == command.image_seed(5, "a.png")


def test_existing_outputs_are_refused_before_any_work(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(str(photos), "-o", str(out))
    first = _pixels(out / "a.png")
    (out / "a.png").write_bytes(b"sentinel")
    with pytest.raises(MagicBokehError, match="--overwrite"):
        _run(str(photos), "-o", str(out))
    assert (out / "a.png").read_bytes() == b"sentinel"
    assert _run(str(photos), "-o", str(out), "--overwrite") == 0
    np.testing.assert_array_equal(_pixels(out / "a.png"), first)  # same seed, same image


def test_results_do_not_depend_on_order_or_company(photos: Path, tmp_path: Path) -> None:
    _run(str(photos), "-o", str(tmp_path / "all"))
    _run(str(photos / "a.png"), "-o", str(tmp_path / "one"))
    np.testing.assert_array_equal(
        _pixels(tmp_path / "all" / "a.png"), _pixels(tmp_path / "one" / "a.png")
    )
    _run(str(photos), "-o", str(tmp_path / "other"), "--seed", "1")
    assert not np.array_equal(
        _pixels(tmp_path / "all" / "a.png"), _pixels(tmp_path / "other" / "a.png")
    )


def test_resize_back_and_scale(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(str(photos / "sub"), "-o", str(out), "--resize-back", "--scale", "2")
    assert Image.open(out / "b.png").size == (64, 80)
    manifest = json.loads((out / command.MANIFEST_NAME).read_text())
    assert manifest["settings"]["resize_back"] is True and manifest["settings"]["scale"] == 2


def test_bad_requests_are_user_errors(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="does not exist"):
        _run(str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MagicBokehError, match="no images"):
        _run(str(empty), "-o", str(tmp_path / "out"))
    with pytest.raises(MagicBokehError, match="none of the 1 inputs"):
        _run(str(photos / "sub" / "broken.jpg"), "-o", str(tmp_path / "out"))
    assert not (tmp_path / "out" / command.MANIFEST_NAME).exists()
    _write_photo(tmp_path / "x" / "a.jpg", (64, 64), 3)
    with pytest.raises(MagicBokehError, match="both be written"):
        _run(str(photos / "a.png"), str(tmp_path / "x" / "a.jpg"), "-o", str(tmp_path / "out"))


def test_image_seed_depends_on_seed_and_name() -> None:
    assert command.image_seed(0, "a.png") == command.image_seed(0, "a.png")
    assert command.image_seed(0, "a.png") != command.image_seed(1, "a.png")
    assert command.image_seed(0, "a.png") != command.image_seed(0, "b.png")
    assert 0 <= command.image_seed(123, "sub/c.png") < 2**63
