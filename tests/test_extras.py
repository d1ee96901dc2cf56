"""Each optional dependency made unimportable: one line naming the extra, exit 2, nothing written.

A module is made unimportable with ``sys.modules[name] = None`` (``import name`` then raises
ImportError), so these tests run on a machine that has every extra installed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from magicbokeh.cli import main
from magicbokeh.extras import EXTRAS, LEARNED_ENGINE, MissingExtra, install_hint, require
from magicbokeh.io import save_image

DIFFUSION = EXTRAS["diffusion"]


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` and their already imported submodules unimportable, as if not installed."""
    for name in names:
        for loaded in [n for n in sys.modules if n.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_naming(err: str, module: str, extra: str) -> bool:
    lines = err.strip().splitlines()
    return (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and f"'{module}'" in lines[0]
        and install_hint(extra) in lines[0]
    )


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "in" / "photo.png"
    save_image(path, rng.random((24, 32, 3)).astype(np.float32))
    return path


@pytest.mark.parametrize("module", DIFFUSION)
def test_convert_official_without_a_diffusion_package(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _hide(monkeypatch, module)
    argv = ["convert-official", "--base", str(tmp_path / "sd21"), "--lora", str(tmp_path / "l")]
    code = main([*argv, "-o", str(tmp_path / "out")])
    assert code == 2 and _one_line_naming(capsys.readouterr().err, module, "diffusion")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("module", DIFFUSION)
def test_download_without_a_diffusion_package(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _hide(monkeypatch, module)
    code = main(["download", "--home", str(tmp_path / "home"), "--base-repo", str(tmp_path)])
    assert code == 2 and _one_line_naming(capsys.readouterr().err, module, "diffusion")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("module", LEARNED_ENGINE)
def test_diffusion_engine_without_its_packages(
    module: str,
    photo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    _hide(monkeypatch, module)
    out = tmp_path / "out" / "o.png"
    code = main(["render", str(photo), "-o", str(out), "--engine", "diffusion"])
    assert code == 2 and _one_line_naming(capsys.readouterr().err, module, "diffusion")
    assert not out.parent.exists()


def test_auto_engine_falls_back_to_physical_without_the_extra(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    home = tmp_path / "home"
    (home / "magicbokeh" / "network").mkdir(parents=True)
    (home / "magicbokeh" / "network" / "config.json").write_text("{}")  # "weights installed"
    monkeypatch.setenv("MAGICBOKEH_HOME", str(home))
    _hide(monkeypatch, "diffusers")
    out = tmp_path / "o.png"
    code = main(["render", str(photo), "-o", str(out), "--depth", "heuristic", "--aperture", "4"])
    err = capsys.readouterr().err
    assert code == 0 and out.is_file()
    assert "engine: physical" in err and "'diffusers'" in err and install_hint("diffusion") in err


def test_depth_auto_with_a_depth_model_but_no_transformers(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    home = tmp_path / "home"
    (home / "depth-anything-v2").mkdir(parents=True)
    (home / "depth-anything-v2" / "config.json").write_text("{}")
    monkeypatch.setenv("MAGICBOKEH_HOME", str(home))
    _hide(monkeypatch, "transformers")
    out = tmp_path / "out" / "o.png"
    code = main(["render", str(photo), "-o", str(out), "--engine", "physical", "--depth", "auto"])
    assert code == 2 and _one_line_naming(capsys.readouterr().err, "transformers", "diffusion")
    assert not out.parent.exists()


@pytest.mark.parametrize("flag", ["--depth", "--save-depth", "--save-defocus"])
def test_exr_files_without_openexr(
    flag: str,
    photo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    _hide(monkeypatch, "OpenEXR")
    out = tmp_path / "out" / "o.png"
    argv = ["render", str(photo), "-o", str(out), "--engine", "physical"]
    code = main([*argv, flag, str(tmp_path / "out" / "d.exr")])
    assert code == 2 and _one_line_naming(capsys.readouterr().err, "OpenEXR", "exr")
    assert not out.parent.exists()


# ---------------------------------------------------------------------------- Python API


def _fresh_import(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Import ``module`` anew (the cached one comes back after the test)."""
    for name in [n for n in sys.modules if n == module or n.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module(module)


@pytest.mark.parametrize(
    "hidden,module",
    [
        ("diffusers", "magicbokeh.model.unet"),
        ("diffusers", "magicbokeh.model.controlnet"),
        ("diffusers", "magicbokeh.model.mask_attention"),
        ("peft", "magicbokeh.model.lora"),
        ("safetensors", "magicbokeh.model.network"),
    ],
)
def test_importing_the_learned_engine_without_its_packages(
    hidden: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(hidden)
    _hide(monkeypatch, hidden)
    with pytest.raises(MissingExtra, match=f"'{hidden}'.*magicbokeh\\[diffusion\\]"):
        _fresh_import(monkeypatch, module)


def test_api_render_with_the_diffusion_engine_without_diffusers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import magicbokeh

    _hide(monkeypatch, "diffusers")
    with pytest.raises(MissingExtra, match="'diffusers'.*magicbokeh\\[diffusion\\]"):
        magicbokeh.render(np.zeros((8, 8, 3), np.float32), depth="heuristic", engine="diffusion")


def test_depth_model_and_hub_download_without_their_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from magicbokeh.depth.convert_depth_anything import load_original_model
    from magicbokeh.depth.depth_anything import DepthAnythingEstimator
    from magicbokeh.install import fetch

    _hide(monkeypatch, "transformers", "huggingface_hub")
    with pytest.raises(MissingExtra, match="'transformers'"):
        DepthAnythingEstimator.from_pretrained(tmp_path)
    with pytest.raises(MissingExtra, match="'transformers'"):
        load_original_model(tmp_path / "DAdepth.pth")
    with pytest.raises(MissingExtra, match="'huggingface_hub'.*magicbokeh\\[diffusion\\]"):
        fetch("org/repo", ["lora.pkl"])
    assert _listing(tmp_path) == []


def test_exr_depth_files_without_openexr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from magicbokeh.io import load_depth, save_depth

    _hide(monkeypatch, "OpenEXR")
    with pytest.raises(MissingExtra, match="'OpenEXR'.*magicbokeh\\[exr\\]"):
        save_depth(tmp_path / "d.exr", np.zeros((4, 4), np.float32))
    assert _listing(tmp_path) == []
    (tmp_path / "given.exr").write_bytes(b"v/1\x01")  # an EXR someone gave us
    with pytest.raises(MissingExtra, match="'OpenEXR'.*magicbokeh\\[exr\\]"):
        load_depth(tmp_path / "given.exr")


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_require_names_the_extra_of_each_missing_package(
    extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in EXTRAS[extra]:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(MissingExtra) as error:
                require(extra, "this feature")
        assert str(error.value) == (
            f"this feature needs the optional package '{module}': {install_hint(extra)}"
        )
