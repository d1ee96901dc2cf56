"""Focus pulls and aperture ramps: frame count, duration, end frames equal single renders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import magicbokeh
from magicbokeh.cli import main
from magicbokeh.io import load_image
from magicbokeh.sweep import frame_duration_ms, plan_sweep, ramp, render_frames, to_uint8

NEAR, FAR = (48, 32), (8, 8)  # the subject and the far background of the scene below


@pytest.fixture()
def scene(tmp_path: Path) -> dict[str, Path]:
    """A 96×64 textured photo: a near subject (d = 0.9) before a far ramp, with its depth."""
    rng = np.random.default_rng(1)
    rgb = (rng.uniform(0.1, 0.9, (64, 96, 3)) * 255).astype(np.uint8)
    rgb[20:44, 30:66] = (220, 40, 30)
    disparity = np.tile(np.linspace(0.0, 0.4, 96, dtype=np.float32), (64, 1))
    disparity[20:44, 30:66] = 0.9
    disparity[-2:, -2:] = 1.0
    paths = {"image": tmp_path / "photo.png", "depth": tmp_path / "d.npy"}
    Image.fromarray(rgb).save(paths["image"])
    np.save(paths["depth"], disparity)
    return paths


def sweep(scene: dict[str, Path], output: Path, *args: object) -> int:
    return main(
        ["sweep", str(scene["image"]), "-o", str(output), "--depth", str(scene["depth"])]
        + [str(a) for a in args]
    )


def single(scene: dict[str, Path], focus: object, aperture: float) -> np.ndarray:
    return magicbokeh.render(
        scene["image"], depth=scene["depth"], focus=focus, aperture=aperture, engine="physical"
    ).image


def test_first_and_last_frames_equal_single_renders(scene: dict[str, Path]) -> None:
    image = load_image(scene["image"])
    disparity = np.load(scene["depth"])
    plan = plan_sweep(disparity, frames=4, focus=NEAR, focus_to=FAR, aperture=6.0)
    frames = list(render_frames(image, disparity, plan, engine="physical"))
    assert len(frames) == 4
    assert np.array_equal(frames[0], single(scene, NEAR, 6.0))
    assert np.array_equal(frames[-1], single(scene, FAR, 6.0))
    assert not np.array_equal(frames[1], frames[0])

    ramp_plan = plan_sweep(disparity, frames=3, focus=NEAR, aperture=0.0, aperture_to=10.0)
    ramped = list(render_frames(image, disparity, ramp_plan, engine="physical"))
    assert np.array_equal(ramped[0], single(scene, NEAR, 0.0))
    assert np.array_equal(ramped[-1], single(scene, NEAR, 10.0))


def test_ramp_ends_are_exact_and_smooth_eases() -> None:
    assert ramp(0.2, 0.8, 5) == pytest.approx((0.2, 0.35, 0.5, 0.65, 0.8))
    smooth = ramp(0.0, 1.0, 5, "smooth")
    assert smooth[0] == 0.0 and smooth[-1] == 1.0 and smooth[1] < 0.25 and smooth[2] == 0.5
    assert ramp(3.0, 9.0, 1) == (3.0,)


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".mp4"])
def test_animation_has_its_frames_and_duration(
    scene: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"pull{suffix}"
    code = sweep(
        scene, out, "--focus-from", "48,32", "--focus-to", "8,8", "--aperture", "6",
        "--frames", 5, "--fps", 10, "-q",
    )  # fmt: skip
    assert code == 0
    expected_first = to_uint8(single(scene, NEAR, 6.0)).astype(np.float32)
    if suffix == ".mp4":
        import imageio.v3 as iio

        frames = iio.imread(out, plugin="FFMPEG")
        metadata = iio.immeta(out, plugin="FFMPEG")
        assert frames.shape == (5, 64, 96, 3)
        assert metadata["fps"] == pytest.approx(10.0)
        assert metadata["duration"] == pytest.approx(0.5, abs=0.05)
        first = frames[0].astype(np.float32)
        assert np.abs(first - expected_first).mean() < 4.0  # H.264 at CRF 18, 4:2:0 chroma
    else:
        with Image.open(out) as animation:
            assert animation.n_frames == 5 and animation.is_animated
            durations = []
            for index in range(animation.n_frames):
                animation.seek(index)
                animation.load()  # WebP reports a frame's duration once it is decoded
                durations.append(animation.info["duration"])
                if index == 0:
                    first = np.asarray(animation.convert("RGB"), dtype=np.float32)
        assert durations == [frame_duration_ms(10.0, suffix)] * 5 == [100] * 5
        assert np.abs(first - expected_first).mean() < 6.0  # palette or lossy WebP
    settings = json.loads(Path(f"{out}.json").read_text())
    assert settings["frames"] == 5 and settings["fps"] == 10.0
    assert settings["duration_s"] == pytest.approx(0.5)
    assert settings["focus_disparity"][0] == pytest.approx(0.9)
    assert settings["aperture_K"] == [6.0] * 5
    assert settings["engine"] == "physical" and "versions" in settings


def test_aperture_ramp_records_each_frames_k(scene: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ramp.gif"
    code = sweep(
        scene, out, "--aperture-from", 0, "--aperture-to", 8, "--focus", "48,32", "--frames", 3,
        "-q",
    )  # fmt: skip
    assert code == 0
    assert json.loads(Path(f"{out}.json").read_text())["aperture_K"] == [0.0, 4.0, 8.0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "nothing moves"),
        (("--focus-from", "1,1"), "--focus-from/--focus-to"),
        (("--aperture-from", "1", "--aperture-to", "2", "-o", "x.avi"), ".mp4"),
        (("--aperture-from", "1", "--aperture-to", "2", "--frames", "0"), "frames"),
        (("--focus-from", "1,1", "--focus-to", "500,1"), "outside"),
    ],
)
def test_bad_requests_are_one_line_errors_and_write_nothing(
    scene: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: tuple,
    words: str,
) -> None:
    out = tmp_path / "anim.gif"
    code = sweep(scene, out, *args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and words in err, err
    assert not out.exists() and not Path(f"{out}.json").exists()


def test_existing_animation_is_kept_without_overwrite(
    scene: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "anim.webp"
    out.write_bytes(b"keep me")
    assert sweep(scene, out, "--aperture-from", 0, "--aperture-to", 4, "--frames", 2) == 2
    assert out.read_bytes() == b"keep me"
    assert (
        sweep(scene, out, "--aperture-from", 0, "--aperture-to", 4, "--frames", 2, "--overwrite")
        == 0
    )
    assert Image.open(out).n_frames == 2


def test_mp4_names_the_video_extra_when_its_encoder_is_missing(
    scene: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert sweep(scene, tmp_path / "a.mp4", "--aperture-from", 0, "--aperture-to", 4) == 2
    assert 'pip install "magicbokeh[video]"' in capsys.readouterr().err
    assert (
        sweep(scene, tmp_path / "a.gif", "--aperture-from", 0, "--aperture-to", 4, "--frames", 2)
        == 0
    )
