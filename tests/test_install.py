"""convert-official, download and the learned engine from the command line.

The contract command of the learned engine is checked against the released code's outputs
on the tiny random-weight model in ../shared/vectors/official_tiny.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from magicbokeh.cli import main  # noqa: E402
from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.install import BASE_FILES, fetch, install  # noqa: E402

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "official_tiny"
needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir(), reason="../shared/vectors/official_tiny is not present"
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VECTORS.is_dir():
        pytest.skip("../shared/vectors/official_tiny is not present")
    out = tmp_path_factory.mktemp("model") / "tiny"
    code = main(
        [
            "convert-official",
            "--base",
            str(VECTORS / "base"),
            "--lora",
            str(VECTORS / "lora.pkl"),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    return out


@needs_vectors
def test_convert_official_writes_our_format_and_refuses_to_overwrite(
    converted: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (converted / "network" / "config.json").is_file()
    assert (converted / "network" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((converted / "magicbokeh.json").read_text())["network"] == "network"
    capsys.readouterr()
    code = main(
        [
            "convert-official",
            "--base",
            str(VECTORS / "base"),
            "--lora",
            str(VECTORS / "lora.pkl"),
            "-o",
            str(converted),
        ]
    )
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]


def test_convert_official_with_a_missing_base_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "lora.pkl").write_bytes(b"")
    code = main(
        [
            "convert-official",
            "--base",
            str(tmp_path / "nope"),
            "--lora",
            str(tmp_path / "lora.pkl"),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "magicbokeh download" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lora.pkl"]


@needs_vectors
@pytest.mark.parametrize("case", ["plane_512x768_K32"])
def test_released_contract_command_reproduces_the_released_outputs(
    case: str, converted: Path, tmp_path: Path
) -> None:
    name, k = case.rsplit("_K", 1)
    out, raw = tmp_path / "out.png", tmp_path / "raw.npy"
    code = main(
        [
            "render",
            str(VECTORS / "inputs" / "image" / f"{name}.png"),
            "-o",
            str(out),
            "--engine",
            "diffusion",
            "--model",
            str(converted),
            "--depth",
            str(VECTORS / "inputs" / "depth" / f"{name}.npy"),
            "--focus-mask",
            str(VECTORS / "inputs" / "mask" / f"{name}.png"),
            "--aperture",
            k,
            "--released",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--raw-output",
            str(raw),
            "-q",
        ]
    )
    assert code == 0
    expected = np.asarray(Image.open(VECTORS / "expected" / case / "output.png")).astype(int)
    got = np.asarray(Image.open(out)).astype(int)
    assert got.shape == expected.shape
    assert (np.abs(got - expected) <= 1).mean() >= 0.999
    expected_float = np.load(VECTORS / "expected" / case / "output_float.npy")
    np.testing.assert_allclose(np.load(raw).transpose(2, 0, 1), expected_float, atol=1e-4)
    settings = json.loads(Path(f"{out}.json").read_text())
    focus = json.loads((VECTORS / "expected" / case / "focus.json").read_text())
    assert settings["focus_disparity"] == focus["focus_value"]
    assert settings["mode"] == "released" and settings["engine"] == "diffusion"


@needs_vectors
def test_learned_engine_warns_outside_the_trained_range(converted: Path) -> None:
    from magicbokeh.api import render

    image = np.asarray(Image.open(VECTORS / "inputs" / "image" / "plane_512x768.png"))
    disparity = np.load(VECTORS / "inputs" / "depth" / "plane_512x768.npy")
    crop = (slice(0, 64), slice(0, 96))
    result = render(
        image[crop],
        depth=disparity[crop],
        focus=0.5,
        aperture=40,
        engine="diffusion",
        model=converted,
        device="cpu",
    )
    assert any("trained range" in w for w in result.warnings)
    assert result.image.shape == (64, 96, 3) and np.isfinite(result.image).all()


@needs_vectors
def test_install_from_local_folders_and_auto_engine_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(VECTORS / "lora.pkl", release / "lora.pkl")
    home = tmp_path / "home"
    monkeypatch.setenv("MAGICBOKEH_HOME", str(home))
    assert (
        main(
            [
                "download",
                "--base-repo",
                str(VECTORS / "base"),
                "--release-repo",
                str(release),
                "--no-depth",
            ]
        )
        == 0
    )
    assert (home / "magicbokeh" / "network" / "config.json").is_file()
    from magicbokeh.api import select_engine

    assert select_engine("auto")[0] == "diffusion"
    assert (
        main(
            [
                "download",
                "--base-repo",
                str(VECTORS / "base"),
                "--release-repo",
                str(release),
                "--no-depth",
            ]
        )
        == 2
    )


def test_fetch_from_a_local_folder_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "lora.pkl").write_bytes(b"x")
    assert fetch(str(tmp_path), ["lora.pkl"]) == tmp_path
    with pytest.raises(MagicBokehError, match="DAdepth.pth"):
        fetch(str(tmp_path), ["lora.pkl", "DAdepth.pth"])


def test_fetch_from_the_hub_asks_for_exactly_the_needed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        if repo_id == "someone/missing":
            raise OSError("404 Client Error: Repository Not Found\nmore detail")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert fetch("org/sd21", BASE_FILES, cache_dir=tmp_path) == tmp_path
    assert calls[0] == ("org/sd21", {"allow_patterns": list(BASE_FILES), "cache_dir": tmp_path})
    with pytest.raises(MagicBokehError, match="cannot download someone/missing") as error:
        fetch("someone/missing", ["lora.pkl"])
    assert "\n" not in str(error.value)


def test_install_leaves_nothing_behind_when_conversion_fails(tmp_path: Path) -> None:
    def local(source: str, names: object, cache: object) -> Path:
        folder = tmp_path / source
        folder.mkdir(exist_ok=True)
        return folder

    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "lora.pkl").write_bytes(b"not a checkpoint")
    with pytest.raises(MagicBokehError):
        install(tmp_path / "home", base="base", release="release", depth=False, fetcher=local)
    assert list((tmp_path / "home").iterdir()) == []
