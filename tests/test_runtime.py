"""Finding installed models in the model home."""

from __future__ import annotations

from pathlib import Path

import pytest

from magicbokeh.api import select_engine
from magicbokeh.runtime import DEPTH_MODEL_DIRS, DIFFUSION_MODEL_DIR, installed_model


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path))
    return tmp_path


def test_a_depth_model_alone_is_not_an_installed_diffusion_model(home: Path) -> None:
    depth = home / DEPTH_MODEL_DIRS[0]
    depth.mkdir(parents=True)
    (depth / "config.json").write_text("{}")
    assert installed_model(DEPTH_MODEL_DIRS[0]) == depth
    assert installed_model(DIFFUSION_MODEL_DIR) is None
    assert select_engine("auto")[0] == "physical"


@pytest.mark.parametrize("layout", ["network/config.json", "config.json"])
def test_model_folder_layouts_are_found(home: Path, layout: str) -> None:
    config = home / DIFFUSION_MODEL_DIR / layout
    config.parent.mkdir(parents=True)
    config.write_text("{}")
    assert installed_model(DIFFUSION_MODEL_DIR) == home / DIFFUSION_MODEL_DIR


def test_nothing_installed(home: Path) -> None:
    assert installed_model(DIFFUSION_MODEL_DIR) is None
    assert installed_model("depth-anything-v2") is None
