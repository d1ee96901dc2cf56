"""Model folders are written atomically: an interrupted save or conversion leaves no half folder."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

import magicbokeh.model.network as network_module  # noqa: E402
from magicbokeh.model.network import CONFIG_FILE, WEIGHTS_FILE, MagicBokehNetwork  # noqa: E402
from magicbokeh.model.official import convert_official  # noqa: E402
from magicbokeh.pipeline import MagicBokehPipeline  # noqa: E402
from tiny_models import tiny_network  # noqa: E402

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "official_tiny"


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def network() -> MagicBokehNetwork:
    return tiny_network()


@pytest.fixture()
def interrupted_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make writing the weights stop half-way, as Ctrl-C or a full disk would."""

    def half_written(state: dict, path: str, metadata: dict | None = None) -> None:
        Path(path).write_bytes(b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(network_module, "save_file", half_written)


def test_interrupted_network_save_leaves_no_half_folder(
    network: MagicBokehNetwork, tmp_path: Path, interrupted_weights: None
) -> None:
    with pytest.raises(KeyboardInterrupt):
        network.save_pretrained(tmp_path / "net")
    assert _tree(tmp_path) == []


def test_interrupted_network_save_keeps_the_previous_save(
    network: MagicBokehNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network.save_pretrained(tmp_path / "net")
    before = {name: (tmp_path / "net" / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    (tmp_path / "net" / "README.md").write_text("kept")
    with monkeypatch.context() as patch:
        patch.setattr(network_module, "save_file", _raise_keyboard_interrupt)
        with pytest.raises(KeyboardInterrupt):
            network.save_pretrained(tmp_path / "net")
    assert _tree(tmp_path) == ["net", "net/README.md", f"net/{CONFIG_FILE}", f"net/{WEIGHTS_FILE}"]
    assert all((tmp_path / "net" / name).read_bytes() == data for name, data in before.items())
    network.save_pretrained(tmp_path / "net")  # saving again replaces the files, keeps the rest
    assert (tmp_path / "net" / "README.md").read_text() == "kept"
    loaded = MagicBokehNetwork.from_pretrained(tmp_path / "net")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), network.state_dict().values(), strict=True)
    )


def test_interrupted_pipeline_save_leaves_no_half_folder(
    network: MagicBokehNetwork, tmp_path: Path, interrupted_weights: None
) -> None:
    with pytest.raises(KeyboardInterrupt):
        MagicBokehPipeline(network).save_pretrained(tmp_path / "model")
    assert _tree(tmp_path) == []


@pytest.mark.skipif(not VECTORS.is_dir(), reason=f"test vectors not found at {VECTORS}")
def test_interrupted_conversion_leaves_no_half_folder(tmp_path: Path) -> None:
    def interrupted_depth(source: Path, folder: Path) -> None:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_official(
            VECTORS / "base",
            VECTORS / "lora.pkl",
            tmp_path / "out",
            depth_pth=tmp_path / "DAdepth.pth",
            depth_converter=interrupted_depth,
        )
    assert _tree(tmp_path) == []


def _raise_keyboard_interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt
