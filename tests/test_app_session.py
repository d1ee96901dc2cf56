"""The web app's work without the page: open, preview, render, save; the app command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import magicbokeh
from magicbokeh.app import session
from magicbokeh.app.session import LensSettings, open_photo, render_full, render_preview
from magicbokeh.cli import main
from magicbokeh.errors import MagicBokehError


@pytest.fixture(autouse=True)
def no_installed_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "no-models"))


@pytest.fixture()
def photo_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    pixels = (rng.uniform(0.1, 0.9, (64, 96, 3)) * 255).astype(np.uint8)
    pixels[20:44, 30:66] = (220, 40, 30)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def test_preview_of_a_small_photo_is_the_full_render(photo_path: Path) -> None:
    photo = open_photo(photo_path, max_megapixels=1.0)
    assert photo.screen.scale == photo.draft.scale == 1.0 and photo.depth_source == "heuristic"
    settings = LensSettings(focus=(48.0, 32.0), aperture=10.0, blades=6, rotation=15.0)
    full = render_full(photo, settings, model=None, max_megapixels=1.0)
    expected = magicbokeh.render(
        photo_path,
        depth="heuristic",
        focus=(48, 32),
        aperture=10.0,
        engine="physical",
        aperture_shape=settings.aperture_shape(),
    )
    assert np.array_equal(full.image, expected.image)
    assert np.allclose(render_preview(photo, settings), full.image, atol=1e-6)


def test_preview_is_screen_size_with_k_scaled(
    photo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "PREVIEW_PIXELS", 64 * 96 // 4)
    monkeypatch.setattr(session, "DRAFT_PIXELS", 64 * 96 // 16)
    photo = open_photo(photo_path, max_megapixels=1.0)
    assert photo.screen.scale == pytest.approx(0.5) and photo.draft.scale == pytest.approx(0.25)
    assert tuple(photo.screen.rgb.shape) == (1, 3, 32, 48)
    assert tuple(photo.draft.disparity.shape) == (1, 1, 16, 24)
    assert photo.full_point(24, 16) == (48.0, 32.0)
    assert photo.screen_point((48.0, 32.0)) == (24, 16)
    settings = LensSettings(focus=(48.0, 32.0), aperture=12.0)
    preview = render_preview(photo, settings)
    full = render_full(photo, settings, model=None, max_megapixels=1.0)
    shrunk = full.image.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
    unscaled_k = render_preview(photo, LensSettings(focus=(48.0, 32.0), aperture=24.0))
    assert np.abs(preview - shrunk).mean() < np.abs(unscaled_k - shrunk).mean()
    assert render_preview(photo, settings, draft=True).shape == (16, 24, 3)
    assert photo.focus_disparity((48.0, 32.0)) == pytest.approx(full.focus_disparity)


def test_save_result_round_trips_16_bit_with_sidecar(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = (rng.uniform(0.0, 1.0, (32, 40, 3)) * 65535).astype(np.uint16)
    source = tmp_path / "deep.png"
    magicbokeh.io.save_image(source, pixels.astype(np.float32) / 65535, bit_depth=16)
    photo = open_photo(source, max_megapixels=1.0)
    result = render_full(photo, LensSettings(aperture=4.0), model=None, max_megapixels=1.0)
    image_path, sidecar = session.save_result(photo, result)
    assert image_path.name == "deep_bokeh.png" and image_path.parent == photo.output_folder
    loaded = magicbokeh.io.load_image(image_path)
    assert loaded.bit_depth == 16
    assert np.abs(loaded.rgb - result.image).max() <= 0.5 / 65535 + 1e-7
    settings = json.loads(sidecar.read_text())
    assert settings["input"] == "deep.png" and settings["aperture_K"] == 4.0
    assert settings["focus"]["kind"] == "disparity" and "auto" in settings["focus"]["chosen_by"]
    assert settings["focus_disparity"] == photo.focus_disparity(None)
    assert settings["output_bit_depth"] == 16
    photo.close()
    assert not image_path.exists()


def test_refusals_are_messages(photo_path: Path, tmp_path: Path) -> None:
    with pytest.raises(MagicBokehError, match=r"over this app's limit of 0\.001 MP"):
        open_photo(photo_path, max_megapixels=0.001)
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0 no image here")
    with pytest.raises(MagicBokehError, match="damaged.jpg"):
        open_photo(damaged, max_megapixels=1.0)
    photo = open_photo(photo_path, max_megapixels=1.0)
    with pytest.raises(MagicBokehError, match="choose a smaller scale"):
        render_full(photo, LensSettings(scale=4.0), model=None, max_megapixels=0.01)
    assert "magicbokeh download" in session.learned_engine_status(None)
    assert session.learned_engine_status(tmp_path) is None  # a model folder is given


def test_disparity_colours_and_focus_marker() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 50, dtype=np.float32), (20, 1))
    coloured = session.colour_disparity(ramp)
    assert coloured.shape == (20, 50, 3) and coloured.dtype == np.uint8
    assert coloured[:, -1].astype(int).sum() > 3 * coloured[:, 0].astype(int).sum()  # near bright
    plain = np.full((60, 80, 3), 0.5, dtype=np.float32)
    marked = session.with_marker(plain, (40, 30))
    changed = np.argwhere(np.any(marked != 128, axis=2))
    assert changed.size and np.abs(changed - [30, 40]).max() <= 12


def test_app_command_binds_locally_and_warns_for_all_interfaces(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("gradio")
    from magicbokeh.app import ui

    served = []
    monkeypatch.setattr(ui, "serve", lambda app, **options: served.append((app, options)))
    assert main(["app", "--port", "7999"]) == 0
    assert served[-1][1] == {"host": "127.0.0.1", "port": 7999, "share": False}
    assert "warning" not in capsys.readouterr().err
    assert main(["app", "--host", "0.0.0.0"]) == 0
    assert served[-1][1]["host"] == "0.0.0.0"
    assert "reachable from other machines" in capsys.readouterr().err
    assert main(["app", "--max-megapixels", "0"]) == 2
    assert main(["app", "--engine", "diffusion"]) == 2
    assert "learned engine cannot run" in capsys.readouterr().err


def test_app_command_names_the_extra_when_gradio_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app"]) == 2
    assert 'pip install "magicbokeh[app]"' in capsys.readouterr().err
