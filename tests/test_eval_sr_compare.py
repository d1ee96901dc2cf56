"""``eval sr``, ``eval compare``, ``make-ebb400lq``, the data layouts and the pyiqa columns."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_data import bokeh_set, sr_set
from magicbokeh.cli import main
from magicbokeh.errors import MagicBokehError
from magicbokeh.eval.layouts import find_bokeh_pairs, find_sr_pairs
from magicbokeh.io import load_image, save_image
from magicbokeh.metrics.psnr_ssim import psnr, ssim


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def as_tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(load_image(path).rgb).permute(2, 0, 1)[None]


def test_sr_layout_pairs_realsr_names_and_the_y_convention_is_applied(tmp_path: Path) -> None:
    data = sr_set(tmp_path / "data", n=2)
    pairs = find_sr_pairs(data)
    assert pairs.layout == "LR/HR" and [p.stem for p in pairs.pairs] == ["0", "1"]
    out = tmp_path / "r"
    args = ["eval", "sr", "--data", str(data), "-o", str(out), "--method", "bicubic"]
    args += ["--metrics", "psnr,ssim", "--y-channel", "--crop-border", "2", "--save-outputs", "-q"]
    assert main(args) == 0
    result = report(out)
    assert result["settings"]["y_channel"] is True and "Y" in result["conventions"]["psnr_ssim"]
    for image in result["images"]:
        output = as_tensor(out / "outputs" / f"{image['stem']}.png")
        target = as_tensor(data / "HR" / f"{image['stem']}_HR.png")
        assert image["psnr"] == pytest.approx(
            psnr(output, target, y_channel=True, crop_border=2).item()
        )
        assert image["ssim"] == pytest.approx(
            ssim(output, target, y_channel=True, crop_border=2).item()
        )
        assert set(image["time"]) == {"sr", "total"}
    assert "| Method | PSNR ↑ | SSIM ↑ | Time (s) ↓ |" in (out / "report.md").read_text()


def test_sr_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = sr_set(tmp_path / "data", n=2)
    base = ["eval", "sr", "--data", str(data), "-o", str(tmp_path / "r"), "-q"]
    assert main([*base, "--method", "nearest"]) == 2
    assert "unknown method" in capsys.readouterr().err
    (data / "HR" / "1_HR.png").unlink()
    assert main([*base, "--method", "bicubic"]) == 2
    assert "HR/ lacks 1 (1)" in capsys.readouterr().err
    assert main([*base, "--method", "bicubic", "--crop-border", "-1"]) == 2
    assert not (tmp_path / "r").exists()


def test_ebb_layout_and_duplicates(tmp_path: Path) -> None:
    ebb = bokeh_set(tmp_path / "ebb", n=2, size=(24, 24), ebb=True, focus=False)
    found = find_bokeh_pairs(ebb)
    assert found.layout == "EBB!" and found.pairs[0].depth == ebb / "depth" / "0.npy"
    assert found.pairs[0].focus is None
    shutil.copy(ebb / "bokeh" / "0.png", ebb / "bokeh" / "0.jpg")
    with pytest.raises(MagicBokehError, match="keep one file per name"):
        find_bokeh_pairs(ebb)


def test_compare_puts_reports_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = sr_set(tmp_path / "data", n=2)
    for method in ("bicubic", "lanczos"):
        args = ["eval", "sr", "--data", str(data), "-o", str(tmp_path / method)]
        assert main([*args, "--method", method, "--metrics", "psnr,ssim", "-q"]) == 0
    capsys.readouterr()
    table_file = tmp_path / "table.md"
    assert (
        main(
            [
                "eval",
                "compare",
                str(tmp_path / "bicubic"),
                str(tmp_path / "lanczos"),
                "-o",
                str(table_file),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out == table_file.read_text()
    lines = out.splitlines()
    assert lines[0] == "| Method | PSNR ↑ | SSIM ↑ | Time (s) ↓ |"
    assert lines[2].startswith("| bicubic (bicubic) |") and lines[3].startswith(
        "| lanczos (lanczos) |"
    )
    means = [report(tmp_path / m)["means"]["psnr"] for m in ("bicubic", "lanczos")]
    best = int(np.argmax(means))
    assert f"**{means[best]:.2f}**" in lines[2 + best]
    assert f"<u>{means[1 - best]:.2f}</u>" in lines[3 - best]
    bokeh = tmp_path / "bokeh"
    assert (
        main(
            [
                "eval",
                "bokeh",
                "--data",
                str(bokeh_set(tmp_path / "b", n=1)),
                "-o",
                str(bokeh),
                "--aperture",
                "2",
                "--metrics",
                "psnr",
                "-q",
            ]
        )
        == 0
    )
    assert main(["eval", "compare", str(bokeh), str(tmp_path / "lanczos")]) == 2
    assert "different protocols" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2


def test_compare_uses_the_shared_images_when_reports_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = sr_set(tmp_path / "data", n=2)
    base = ["eval", "sr", "--data", str(data), "--method", "bicubic", "--metrics", "psnr", "-q"]
    assert main([*base, "-o", str(tmp_path / "all")]) == 0
    assert main([*base, "-o", str(tmp_path / "one"), "--limit", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "all"), str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    first = report(tmp_path / "one")["images"][0]["psnr"]
    assert out.count(f"{first:.2f}") == 2 and "the 1 images all of them share" in out


def test_make_ebb400lq_list_manifest_and_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ebb = bokeh_set(tmp_path / "ebb", n=3, size=(40, 40), ebb=True)
    names = tmp_path / "names.txt"
    names.write_text("# chosen by hand\n2.jpg\n0\n")
    out = tmp_path / "lq"
    base = ["make-ebb400lq", "--ebb", str(ebb), "--seed", "1", "-q"]
    assert main([*base, "--list", str(names), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["stem"] for i in manifest["images"]] == ["0", "2"]
    assert manifest["degradation"]["scale"] == 4 and manifest["degradation"]["resize_back"]
    image = manifest["images"][0]
    assert set(image["files"]) == {"input", "target", "focus", "depth"}
    assert (out / "target" / "0.png").read_bytes() == (ebb / "bokeh" / "0.png").read_bytes()
    assert load_image(out / "input" / "0.png").rgb.shape == (40, 40, 3)
    assert main([*base, "--list", str(names), "-o", str(out)]) == 2  # exists
    again = tmp_path / "again"
    assert main([*base, "--list", str(names), "-o", str(again)]) == 0
    assert (again / "input" / "2.png").read_bytes() == (out / "input" / "2.png").read_bytes()
    capsys.readouterr()
    names.write_text("0\n7\n")
    assert main([*base, "--list", str(names), "-o", str(tmp_path / "x")]) == 2
    assert "not EBB! pairs here (first: 7)" in capsys.readouterr().err
    assert main([*base, "--count", "4", "-o", str(tmp_path / "x")]) == 2
    assert "use --count 1..3" in capsys.readouterr().err
    save_image(ebb / "original" / "1.png", np.zeros((8, 8, 3)), overwrite=True)  # too small
    assert main([*base, "--count", "3", "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_pyiqa_metrics_flow_into_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a stand-in pyiqa module: the names, arguments and results pass through (real pyiqa
    cannot import beside this environment's CPU torch)."""
    created = []

    def create_metric(name: str, device=None, **options):
        created.append(name)
        if name == "fid":

            def fid(a: str, b: str) -> float:
                assert sorted(p.name for p in Path(a).iterdir()) == ["0.png", "1.png"]
                assert sorted(p.name for p in Path(b).iterdir()) == ["0.png", "1.png"]
                return 12.5

            return fid
        if name == "musiq":
            raise OSError("cannot download musiq weights\nsecond line")

        def score(*images: torch.Tensor) -> torch.Tensor:
            assert all(i.dtype == torch.float32 and i.ndim == 4 for i in images)
            return images[0].mean(dim=(1, 2, 3), keepdim=True)

        return score

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    data = sr_set(tmp_path / "data", n=2)
    out = tmp_path / "r"
    args = ["eval", "sr", "--data", str(data), "-o", str(out), "--method", "bicubic", "-q"]
    assert main([*args, "--metrics", "dists,niqe,musiq,maniqa,fid"]) == 0
    assert created == ["dists", "niqe", "musiq", "maniqa-pipal", "fid"]
    result = report(out)
    assert result["means"]["fid"] == 12.5
    assert result["means"]["musiq"] == "not available: pyiqa could not load its weights"
    assert result["unavailable_details"]["musiq"].startswith("musiq: OSError: cannot download")
    assert isinstance(result["images"][0]["dists"], float)
    assert result["images"][0]["niqe"] == result["images"][0]["maniqa"]
