"""PyTorch datasets: synthetic bokeh pairs, on-the-fly SR pairs, real EBB!-style pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from magicbokeh.data.datasets import BokehPairs, EBBPairs, SRPairs, collect_images
from magicbokeh.data.store import DatasetStore, read_gray, read_rgb
from magicbokeh.data.synth import SynthSettings, synthesize
from magicbokeh.errors import MagicBokehError
from magicbokeh.io.depth_files import save_depth


def write_photo(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(path)
    return photo


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bokeh")
    fg, bg = root / "fg", root / "bg"
    fg.mkdir()
    y, x = np.mgrid[:40, :40]
    matte = np.clip((15 - np.hypot(y - 20, x - 20)) / 3 + 0.5, 0, 1)
    for i in range(2):
        rgba = np.zeros((40, 40, 4), np.uint8)
        rgba[..., i] = 220
        rgba[..., 3] = (matte * 255).astype(np.uint8)
        Image.fromarray(rgba).save(fg / f"c{i}.png")
    write_photo(bg / "b.png", 80, 100, seed=1)
    synthesize(fg, bg, root / "ds", 3, SynthSettings(size=64, rays=8), progress=False)
    return root / "ds"


def test_bokeh_pairs_items_match_the_files(synth_dataset: Path) -> None:
    dataset = BokehPairs(synth_dataset)
    assert len(dataset) == 3
    records = DatasetStore(synth_dataset).read_manifest()
    item = dataset[2]
    assert item["index"] == 2
    for key in ("lq", "hq", "bokeh"):
        assert item[key].shape == (3, 64, 64) and item[key].dtype == torch.float32
        expected = read_rgb(synth_dataset / records[2]["files"][key])
        np.testing.assert_array_equal(item[key].permute(1, 2, 0).numpy(), expected)
    for key in ("disparity", "mask"):
        assert item[key].shape == (1, 64, 64)
        np.testing.assert_array_equal(
            item[key][0].numpy(), read_gray(synth_dataset / records[2]["files"][key])
        )
    assert float(item["K"]) == pytest.approx(records[2]["K"])
    assert float(item["d_f"]) == pytest.approx(records[2]["d_f"])
    with pytest.raises(IndexError):
        dataset[3]


def test_bokeh_pairs_through_a_dataloader(synth_dataset: Path) -> None:
    loader = DataLoader(BokehPairs(synth_dataset, crop=48, flip=True), batch_size=2, shuffle=True)
    batches = list(loader)
    assert [b["lq"].shape for b in batches] == [(2, 3, 48, 48), (1, 3, 48, 48)]
    assert batches[0]["K"].shape == (2,) and batches[0]["mask"].shape == (2, 1, 48, 48)
    first, second = (BokehPairs(synth_dataset, crop=48, flip=True) for _ in range(2))
    torch.testing.assert_close(first[1]["bokeh"], second[1]["bokeh"])  # seeded per item
    parallel = DataLoader(first, batch_size=3, num_workers=2)
    in_process = DataLoader(second, batch_size=3, num_workers=0)
    torch.testing.assert_close(next(iter(parallel))["lq"], next(iter(in_process))["lq"])


def test_bokeh_pairs_crop_is_the_same_window_for_every_map(synth_dataset: Path) -> None:
    full = BokehPairs(synth_dataset)[0]
    cropped = BokehPairs(synth_dataset, crop=32, seed=5)[0]
    hq = full["hq"].unfold(1, 32, 1).unfold(2, 32, 1)  # 3×33×33×32×32 windows
    match = (hq - cropped["hq"][:, None, None]).abs().sum(dim=(0, 3, 4)) == 0
    y, x = (int(v) for v in torch.nonzero(match)[0])
    for key in ("lq", "bokeh", "disparity", "mask"):
        torch.testing.assert_close(cropped[key], full[key][:, y : y + 32, x : x + 32])


def test_bokeh_pairs_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match="dataset.json"):
        BokehPairs(tmp_path)


def test_sr_pairs_crop_flip_and_seeded_degradation(tmp_path: Path) -> None:
    for i in range(3):
        write_photo(tmp_path / "hr" / f"{i}.png", 72, 90, seed=i)
    write_photo(tmp_path / "hr" / "small.png", 40, 50, seed=9)  # enlarged to the crop
    dataset = SRPairs(tmp_path / "hr", crop=64, seed=3)
    assert len(dataset) == 4
    item = dataset[0]
    assert item["hq"].shape == item["lq"].shape == (3, 64, 64)
    assert float((item["lq"] - item["hq"]).abs().mean()) > 0.005
    again = SRPairs(tmp_path / "hr", crop=64, seed=3)[0]
    torch.testing.assert_close(again["lq"], item["lq"])  # per-item seeded
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["lq"], item["lq"])
    assert dataset[3]["hq"].shape == (3, 64, 64)
    loader = DataLoader(SRPairs(tmp_path / "hr", crop=64), batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["lq"].shape == (4, 3, 64, 64)


def test_sr_pairs_flip_and_crop_come_from_the_photo(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "p.png", 70, 80, seed=4).astype(np.float32) / 255
    flips = set()
    for seed in range(8):
        hq = SRPairs(tmp_path / "p.png", crop=64, seed=seed)[0]["hq"].permute(1, 2, 0).numpy()
        found = False
        for flip in (False, True):
            source = photo[:, ::-1] if flip else photo
            for y in range(70 - 64 + 1):
                for x in range(80 - 64 + 1):
                    if np.array_equal(source[y : y + 64, x : x + 64], hq):
                        found = True
                        flips.add(flip)
        assert found
    assert flips == {False, True}


def test_sr_pairs_file_list_and_unreadable_files(tmp_path: Path, caplog) -> None:
    write_photo(tmp_path / "a" / "x.png", 64, 64, seed=0)
    (tmp_path / "a" / "bad.png").write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("# training images\na/bad.png\n\na/x.png\n")
    files = collect_images(listing)
    assert [f.name for f in files] == ["bad.png", "x.png"]
    item = SRPairs(listing, crop=64)[0]  # bad.png is replaced by the next readable image
    assert item["hq"].shape == (3, 64, 64)
    assert "bad.png" in caplog.text
    with pytest.raises(MagicBokehError, match="does not exist"):
        collect_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MagicBokehError, match="no images"):
        collect_images(tmp_path / "empty")


def make_ebb(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        write_photo(root / "original" / f"{name}.jpg", 48, 64, seed=i)
        write_photo(root / "bokeh" / f"{name}.jpg", 48, 64, seed=100 + i)


def test_ebb_pairs_layout_with_disparity(tmp_path: Path) -> None:
    make_ebb(tmp_path, ["10", "2", "1"])
    for name in ("1", "2", "10"):
        disparity = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 1))
        save_depth(tmp_path / "disparity" / f"{name}.png", disparity)
    dataset = EBBPairs(tmp_path)
    assert dataset.names == ["1", "2", "10"]
    item = dataset[2]
    assert item["name"] == "10"
    assert item["hq"].shape == item["bokeh"].shape == (3, 48, 64)
    assert item["disparity"].shape == (1, 48, 64)  # resized to the image
    assert float(item["disparity"].min()) >= 0 and float(item["disparity"].max()) <= 1
    batch = next(iter(DataLoader(EBBPairs(tmp_path, crop=32, flip=True), batch_size=3)))
    assert batch["hq"].shape == (3, 3, 32, 32) and batch["name"] == ["1", "2", "10"]
    plain = EBBPairs(aif_dir=tmp_path / "original", bokeh_dir=tmp_path / "bokeh")
    assert "disparity" not in plain[0]


def test_ebb_pairs_errors(tmp_path: Path) -> None:
    make_ebb(tmp_path, ["0", "1"])
    (tmp_path / "bokeh" / "1.jpg").unlink()
    with pytest.raises(MagicBokehError, match="no partner.*first: 1"):
        EBBPairs(tmp_path)
    with pytest.raises(MagicBokehError, match="original/"):
        EBBPairs(tmp_path / "bokeh")
    write_photo(tmp_path / "bokeh" / "1.jpg", 40, 64, seed=3)
    with pytest.raises(MagicBokehError, match="pairs must match"):
        EBBPairs(tmp_path)[1]


def test_files_by_stem_and_natural_order(tmp_path: Path) -> None:
    from magicbokeh.data.datasets import files_by_stem, natural_key

    for name in ("10.png", "2.jpg", "b.png", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    found = files_by_stem(tmp_path, (".png", ".jpg"))
    assert sorted(found, key=natural_key) == ["2", "10", "b"]
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(MagicBokehError, match="keep one file per name"):
        files_by_stem(tmp_path, (".png", ".jpg"))
