"""The `magicbokeh` command line: results, sidecars, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magicbokeh.cli import main


@pytest.fixture(autouse=True)
def no_installed_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no installed weights, whatever this machine has downloaded."""
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path / "no-models"))


@pytest.fixture()
def scene(tmp_path: Path) -> dict[str, Path]:
    """A 96×64 photo-like image, its disparity (.npy) and a focus mask."""
    rng = np.random.default_rng(0)
    rgb = (rng.uniform(0.2, 0.8, (64, 96, 3)) * 255).astype(np.uint8)
    rgb[20:44, 30:66] = (220, 40, 30)
    disparity = np.tile(np.linspace(0.0, 0.4, 96, dtype=np.float32), (64, 1))
    disparity[20:44, 30:66] = 0.9
    disparity[-2:, -2:] = 1.0  # spans [0, 1], so min-max normalisation leaves it unchanged
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[25:40, 35:60] = 255
    paths = {
        "image": tmp_path / "photo.png",
        "depth": tmp_path / "d.npy",
        "mask": tmp_path / "m.png",
    }
    Image.fromarray(rgb).save(paths["image"])
    np.save(paths["depth"], disparity)
    Image.fromarray(mask).save(paths["mask"])
    return paths


def run_cli(*args: object) -> int:
    return main([str(a) for a in args])


def assert_clean_error(capsys: pytest.CaptureFixture, code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_render_writes_image_and_sidecar(scene: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    code = run_cli(
        "render",
        scene["image"],
        "-o",
        out,
        "--depth",
        scene["depth"],
        "--focus",
        "48,32",
        "--aperture",
        "8",
        "--engine",
        "physical",
    )
    assert code == 0
    result = np.asarray(Image.open(out))
    assert result.shape == (64, 96, 3)
    settings = json.loads(Path(f"{out}.json").read_text())
    assert settings["engine"] == "physical"
    assert settings["focus_disparity"] == pytest.approx(0.9)
    assert settings["aperture_K"] == 8.0
    assert settings["depth_source"].startswith("file:")
    assert "versions" in settings
    # The in-focus subject stays sharp; the background is blurred.
    source = np.asarray(Image.open(scene["image"])).astype(float)
    assert np.abs(result[24:40, 34:62] - source[24:40, 34:62]).mean() < 3
    assert result[:12].std() < source[:12].std() * 0.6


def test_render_without_depth_warns_and_records_the_guess(
    scene: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.jpg"
    assert run_cli("render", scene["image"], "-o", out, "--aperture", "6") == 0
    captured = capsys.readouterr()
    assert "warning: no depth given" in captured.err
    assert "physical" in captured.err + captured.out
    assert json.loads(Path(f"{out}.json").read_text())["depth_source"] == "heuristic"


def test_focus_forms_and_saved_maps(scene: dict[str, Path], tmp_path: Path) -> None:
    for i, focus in enumerate(
        (
            ["--focus-box", "30,20,66,44"],
            ["--focus-mask", scene["mask"]],
            ["--focus-disparity", "0.9"],
        )
    ):
        out = tmp_path / f"o{i}.png"
        assert (
            run_cli(
                "render",
                scene["image"],
                "-o",
                out,
                "--depth",
                scene["depth"],
                *focus,
                "--save-depth",
                tmp_path / f"d{i}.npy",
                "--save-defocus",
                tmp_path / f"r{i}.npy",
            )
            == 0
        )
        assert json.loads(Path(f"{out}.json").read_text())["focus_disparity"] == pytest.approx(0.9)
        np.testing.assert_allclose(
            np.load(tmp_path / f"d{i}.npy"), np.load(scene["depth"]), atol=1e-6
        )
        radius = np.load(tmp_path / f"r{i}.npy")
        assert radius[0, 0] == pytest.approx(16 * 0.9, rel=1e-5) and radius[32, 48] == 0


@pytest.mark.parametrize(("scale", "size"), [(2.0, (192, 128)), (0.5, (48, 32))])
def test_scale_resizes_and_focus_stays_in_input_pixels(
    scene: dict[str, Path], tmp_path: Path, scale: float, size: tuple[int, int]
) -> None:
    out = tmp_path / "scaled.png"
    argv = ["render", scene["image"], "-o", out, "--depth", scene["depth"], "--focus", "48,32"]
    assert run_cli(*argv, "--scale", scale) == 0
    assert Image.open(out).size == size
    settings = json.loads(Path(f"{out}.json").read_text())
    assert settings["focus_disparity"] == pytest.approx(0.9)
    assert settings["output_size"] == list(size) and settings["input_size"] == [96, 64]


def test_sidecar_paths_are_absolute_and_complete(
    scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["render", "photo.png", "-o", "o.png", "--depth", "d.npy", "--focus-mask", "m.png"]
    assert run_cli(*argv, "--save-depth", "saved.npy") == 0
    settings = json.loads((tmp_path / "o.png.json").read_text())
    assert settings["input"] == str(scene["image"])
    assert settings["output"] == str(tmp_path / "o.png")
    assert settings["depth_source"] == f"file:{scene['depth']}"
    assert settings["focus_mask_file"] == str(scene["mask"])
    assert settings["saved_depth"] == str(tmp_path / "saved.npy")


def test_colour_profile_is_kept(scene: dict[str, Path], tmp_path: Path) -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "tagged.png"
    Image.open(scene["image"]).save(src, icc_profile=profile)
    out = tmp_path / "tagged_out.png"
    assert run_cli("render", src, "-o", out, "--depth", scene["depth"]) == 0
    assert Image.open(out).info.get("icc_profile") == profile


def test_focus_mask_alpha_selects(scene: dict[str, Path], tmp_path: Path) -> None:
    rgba = np.full((64, 96, 4), 255, dtype=np.uint8)  # white everywhere...
    rgba[..., 3] = 0
    rgba[25:40, 35:60, 3] = 255  # ...but only the subject is painted
    Image.fromarray(rgba).save(tmp_path / "layer.png")
    out = tmp_path / "o.png"
    argv = ["render", scene["image"], "-o", out, "--depth", scene["depth"]]
    assert run_cli(*argv, "--focus-mask", tmp_path / "layer.png") == 0
    assert json.loads(Path(f"{out}.json").read_text())["focus_disparity"] == pytest.approx(0.9)


def test_sixteen_bit_and_alpha_survive(tmp_path: Path) -> None:
    rgba = np.zeros((32, 48, 4), dtype=np.uint16)
    rgba[..., :3] = np.linspace(0, 65535, 48, dtype=np.uint16)[None, :, None]
    rgba[..., 3] = 40000
    src = tmp_path / "deep.png"
    import cv2

    cv2.imwrite(str(src), rgba[..., [2, 1, 0, 3]])
    out = tmp_path / "deep_out.png"
    assert run_cli("render", src, "-o", out, "--aperture", "0", "--depth", "heuristic") == 0
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (32, 48, 4)
    np.testing.assert_array_equal(back[..., 3], 40000)
    np.testing.assert_array_equal(back[..., 2], rgba[..., 0])  # K = 0 is exact at 16 bits


def test_existing_output_is_kept_without_overwrite(
    scene: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    code = run_cli("render", scene["image"], "-o", out, "--depth", scene["depth"])
    assert_clean_error(capsys, code, "--overwrite")
    assert out.read_bytes() == b"precious"
    assert (
        run_cli("render", scene["image"], "-o", out, "--depth", scene["depth"], "--overwrite") == 0
    )
    assert out.read_bytes() != b"precious"


def write_truncated_jpeg(path: Path) -> None:
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path.with_suffix(".tmp.jpg"))
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_INPUTS = {
    "truncated image": (lambda p, s: write_truncated_jpeg(p / "t.jpg"), ["{tmp}/t.jpg"], ()),
    "unsupported format": (
        lambda p, s: (p / "x.png").write_bytes(b"not an image at all" * 9),
        ["{tmp}/x.png"],
        (),
    ),
    "empty image": (lambda p, s: (p / "e.png").write_bytes(b""), ["{tmp}/e.png"], ()),
    "missing image": (lambda p, s: None, ["{tmp}/nope.png"], ()),
    "depth with NaN": (
        lambda p, s: np.save(p / "n.npy", np.where(np.eye(64, 96) > 0, np.nan, 0.5)),
        ["{image}", "--depth", "{tmp}/n.npy"],
        ("64",),
    ),
    "depth of another aspect": (
        lambda p, s: np.save(p / "a.npy", np.zeros((64, 64), np.float32)),
        ["{image}", "--depth", "{tmp}/a.npy"],
        (),
    ),
    "focus outside": (
        lambda p, s: None,
        ["{image}", "--depth", "{depth}", "--focus", "500,10"],
        ("outside",),
    ),
    "empty mask": (
        lambda p, s: Image.fromarray(np.zeros((64, 96), np.uint8)).save(p / "z.png"),
        ["{image}", "--focus-mask", "{tmp}/z.png"],
        ("no pixels",),
    ),
    "negative K": (lambda p, s: None, ["{image}", "--aperture", "-3"], ("≥ 0",)),
    "unwritable output": (
        lambda p, s: (p / "file").write_text("x"),
        ["{image}", "-o", "{tmp}/file/out.png"],
        (),
    ),
    "diffusion without weights": (
        lambda p, s: None,
        ["{image}", "--engine", "diffusion"],
        ("weights",),
    ),
    "learned-engine flags with the physical engine": (
        lambda p, s: None,
        ["{image}", "--engine", "physical", "--released", "--raw-output", "{tmp}/r.npy"],
        ("--released and --raw-output", "learned engine"),
    ),
    "bad --save-depth extension": (
        lambda p, s: None,
        ["{image}", "--depth", "{depth}", "--save-depth", "{tmp}/d.jpg"],
        ("--save-depth", ".npy"),
    ),
    "two outputs on one path": (
        lambda p, s: None,
        ["{image}", "--save-depth", "{tmp}/x.npy", "--save-defocus", "{tmp}/x.npy"],
        ("same path",),
    ),
    "output over the depth input": (
        lambda p, s: None,
        ["{image}", "--depth", "{depth}", "--save-depth", "{depth}", "--overwrite"],
        ("replace the input",),
    ),
    "blur larger than the image": (
        lambda p, s: None,
        ["{image}", "--depth", "{depth}", "--focus", "48,32", "--aperture", "1e6"],
        ("image diagonal",),
    ),
    "failure leaves no new folders": (
        lambda p, s: None,
        ["{image}", "-o", "{tmp}/new/sub/o.png", "--depth", "{depth}", "--focus", "999,1"],
        ("outside",),
    ),
    "missing focus mask": (
        lambda p, s: None,
        ["{image}", "--focus-mask", "{tmp}/nomask.png"],
        ("focus mask",),
    ),
    "bad focus text": (lambda p, s: None, ["{image}", "--focus", "middle"], ("--focus",)),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_writes_nothing(
    case: str,
    scene: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    make, argv, words = BAD_INPUTS[case]
    make(tmp_path, scene)
    fields = {"tmp": tmp_path, "image": scene["image"], "depth": scene["depth"]}
    argv = [a.format(**fields) for a in argv]
    out = tmp_path / "result.png"
    args = ["render", *argv] if "-o" in argv else ["render", argv[0], "-o", out, *argv[1:]]
    before = set(tmp_path.rglob("*"))
    code = run_cli(*args)
    assert_clean_error(capsys, code, *words)
    assert set(tmp_path.rglob("*")) == before


def test_cuda_requested_but_absent(
    scene: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = run_cli("render", scene["image"], "-o", tmp_path / "o.png", "--device", "cuda")
    assert_clean_error(capsys, code, "CUDA")


def test_image_over_the_pixel_limit(
    scene: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAGICBOKEH_MAX_PIXELS", "1000")
    code = run_cli("render", scene["image"], "-o", tmp_path / "o.png")
    assert_clean_error(capsys, code, "MP", "MAGICBOKEH_MAX_PIXELS")
    assert not (tmp_path / "o.png").exists()


def test_console_script_exit_code_and_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "magicbokeh.cli",
            "render",
            str(tmp_path / "missing.jpg"),
            "-o",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


QUICK_EXIT_PROBE = """
import atexit, sys
from magicbokeh.cli import main

class Finalised:
    def __del__(self):
        print("torn down")

probe = Finalised()  # finalised only when the interpreter tears the module down
atexit.register(lambda: print("exit handler ran"))
sys.argv = ["magicbokeh", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize(("command", "torn_down"), [("render", False), ("train", True)])
def test_quick_exit_after_a_command_keeps_outputs_and_exit_handlers(
    scene: dict[str, Path], tmp_path: Path, command: str, torn_down: bool
) -> None:
    """Run as the program, ``render`` ends without the interpreter's teardown (it costs
    close to a second after a large render), yet its outputs, its message and the exit
    handlers all complete; other commands (here ``train`` failing on bad input) end normally."""
    out = tmp_path / "o.png"
    argv = ["render", scene["image"], "-o", out, "--depth", scene["depth"], "--focus", "48,32"]
    if command == "train":
        argv = ["train", "depth", "--teacher", tmp_path / "missing", "--data", tmp_path]
        argv += ["-o", tmp_path / "run"]
    done = subprocess.run(
        [sys.executable, "-c", QUICK_EXIT_PROBE, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == (0 if command == "render" else 2), done.stderr
    assert "exit handler ran" in done.stdout
    assert ("torn down" in done.stdout) == torn_down
    if command == "render":
        assert f"wrote {out}" in done.stdout
        assert Image.open(out).size == (96, 64) and Path(f"{out}.json").is_file()


def test_demo_writes_renders_and_a_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert run_cli("demo", "-o", out) == 0
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 3 * 400
    renders = sorted(out.glob("*.png"))
    assert len(renders) == 7
    assert all(Path(f"{p}.json").exists() for p in renders)
    original = np.asarray(Image.open(out / "original.png")).astype(float)
    blurred = np.asarray(Image.open(out / "motorcycle_K28.png")).astype(float)
    # Background (shelves, top right) blurred, motorcycle tank (centre) sharp.
    assert (
        np.abs(np.diff(blurred[20:90, 560:700], axis=1)).mean()
        < 0.5 * np.abs(np.diff(original[20:90, 560:700], axis=1)).mean()
    )
    assert np.abs(blurred[190:215, 400:440] - original[190:215, 400:440]).mean() < 4
    assert run_cli("demo", "-o", out) == 2  # refuses to overwrite an earlier demo
