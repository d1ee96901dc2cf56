"""LPIPS without torchvision: equal to the lpips package (reference vectors), loaders, install.

The vectors in ../shared/vectors/lpips are the lpips 0.1.4 package's outputs on random
backbones with the real v0.1 heads; the constructed cases need no vectors.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from magicbokeh.cli import main
from magicbokeh.errors import MagicBokehError
from magicbokeh.metrics import lpips_weights
from magicbokeh.metrics.lpips import LPIPS, load_heads_state, unit_normalize
from magicbokeh.metrics.lpips_weights import Asset, install_lpips, installed_files

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "lpips"
needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir(), reason="../shared/vectors/lpips is not present"
)
BACKBONE_FILE = {"vgg": "vgg16_features_random", "alex": "alexnet_features_random"}
CASES = ("smooth64", "batch2_96x128", "astronaut256_jpeg", "identical", "odd67x93", "normalize01")


def close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """The vectors' recommended check: ``max|got − ref| ≤ rel · max|ref|``."""
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= rel * ref.abs().max()


@pytest.fixture(scope="module")
def vectors() -> dict:
    if not VECTORS.is_dir():
        pytest.skip("../shared/vectors/lpips is not present")
    out = {"inputs": load_file(str(VECTORS / "inputs.safetensors"))}
    for net in ("vgg", "alex"):
        backbone = VECTORS / "weights" / f"{BACKBONE_FILE[net]}.safetensors"
        heads = VECTORS / "weights" / "lpips_pkg_v0.1" / f"{net}.pth"
        out[net] = (
            LPIPS.from_files(backbone, heads, net=net),
            LPIPS.from_files(backbone, heads, net=net, spatial=True),
            load_file(str(VECTORS / "expected" / f"{net}.safetensors")),
        )
    return out


@needs_vectors
@pytest.mark.parametrize("net", ["vgg", "alex"])
@pytest.mark.parametrize("case", CASES)
def test_equals_the_lpips_package(vectors: dict, net: str, case: str) -> None:
    model, spatial, expected = vectors[net]
    in0, in1 = vectors["inputs"][f"{case}.in0"], vectors["inputs"][f"{case}.in1"]
    normalize = case == "normalize01"
    with torch.no_grad():
        layers = model(in0, in1, normalize=normalize, per_layer=True)
        spatial_layers = spatial(in0, in1, normalize=normalize, per_layer=True)
    # forward() adds the per-layer terms in this order (test_constructed_cases checks it)
    dist, spatial_map = layers[:, :1], spatial_layers[:, :1]
    for k in range(1, 5):
        dist, spatial_map = dist + layers[:, k : k + 1], spatial_map + spatial_layers[:, k : k + 1]
    torch.testing.assert_close(dist, expected[f"{case}.dist"], rtol=1e-5, atol=0)
    torch.testing.assert_close(layers, expected[f"{case}.layers"], rtol=1e-5, atol=0)
    close(spatial_map, expected[f"{case}.spatial"])
    if f"{case}.spatial_layers" in expected:
        close(spatial_layers, expected[f"{case}.spatial_layers"])
    if case == "identical":
        assert not dist.any() and not layers.any() and not spatial_map.any()


@needs_vectors
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_intermediates_and_gradient_equal_the_lpips_package(vectors: dict, net: str) -> None:
    model, _, expected = vectors[net]
    in0, in1 = vectors["inputs"]["smooth64.in0"], vectors["inputs"]["smooth64.in1"]
    scaled = model.scaling(in0)
    close(scaled, expected["smooth64.in0.scaled"])
    for k, feature in enumerate(model.tap_features(scaled)):
        close(feature, expected[f"smooth64.in0.feat{k}"])
        close(unit_normalize(feature), expected[f"smooth64.in0.feat{k}_normalized"])
    x = in0.clone().requires_grad_()
    model(x, in1).sum().backward()
    close(x.grad, expected["smooth64.grad_in0"])


@needs_vectors
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_heads_from_the_package_file_and_from_safetensors_agree(net: str) -> None:
    weights = VECTORS / "weights"
    from_pth = load_heads_state(weights / "lpips_pkg_v0.1" / f"{net}.pth", net)
    from_st = load_heads_state(weights / f"lpips_v0.1_{net}_heads.safetensors", net)
    assert all(torch.equal(a, b) for a, b in zip(from_pth, from_st, strict=True))


def _random_model(net: str, spatial: bool = False) -> LPIPS:
    """Random backbone; random non-negative heads, as real calibrated heads are."""
    torch.manual_seed(0)
    model = LPIPS(net, spatial)
    for head in model.heads:
        head.weight.uniform_(0, 1)
    return model


def _random_files(tmp_path: Path, net: str) -> tuple[Path, Path, LPIPS]:
    """A random model saved as a torchvision-style full checkpoint (with a classifier) and a
    heads file in the lpips package's key layout."""
    model = _random_model(net)
    state = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    backbone, heads = tmp_path / f"{net}_backbone.pth", tmp_path / f"{net}_heads.pth"
    torch.save(state, backbone)
    torch.save({f"lin{k}.model.1.weight": h.weight for k, h in enumerate(model.heads)}, heads)
    return backbone, heads, model


def _images(n: int = 2, size: tuple[int, int] = (32, 44), seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=generator) * 2 - 1


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_constructed_cases(net: str) -> None:
    model = _random_model(net)
    a, b = _images(), _images(seed=2)
    dist = model(a, b)
    assert dist.shape == (2, 1, 1, 1) and (dist > 0).all()
    assert not model(a, a.clone()).any()
    assert torch.equal(model(b, a), dist)
    terms = model(a, b, per_layer=True)
    assert terms.shape == (2, 5, 1, 1)
    total = terms[:, :1]
    for k in range(1, 5):
        total = total + terms[:, k : k + 1]
    assert torch.equal(total, dist)
    torch.testing.assert_close(model((a + 1) / 2, (b + 1) / 2, normalize=True), dist)
    assert _random_model(net, spatial=True)(a, b).shape == (2, 1, 32, 44)
    assert model(a, b[:1]).shape == (2, 1, 1, 1)


def test_frozen_eval_and_differentiable_for_the_inputs() -> None:
    model = LPIPS("alex")
    model.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = _images().requires_grad_()
    model(x, _images(seed=3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_load_round_trip_pth_and_safetensors(tmp_path: Path, net: str) -> None:
    backbone, heads, model = _random_files(tmp_path, net)
    a, b = _images(), _images(seed=2)
    assert torch.equal(LPIPS.from_files(backbone, heads, net)(a, b), model(a, b))
    st_backbone, st_heads = tmp_path / "b.safetensors", tmp_path / "h.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(backbone).items()}, str(st_backbone))
    save_file(torch.load(heads), str(st_heads))
    assert torch.equal(LPIPS.from_files(st_backbone, st_heads, net)(a, b), model(a, b))


def test_wrong_or_missing_files_are_refused(tmp_path: Path) -> None:
    vgg_backbone, vgg_heads, _ = _random_files(tmp_path, "vgg")
    alex_backbone, alex_heads, _ = _random_files(tmp_path, "alex")
    with pytest.raises(MagicBokehError, match="not a torchvision alex checkpoint"):
        LPIPS.from_files(vgg_backbone, alex_heads, net="alex")
    with pytest.raises(MagicBokehError, match="lin1.model.1.weight should be 1×128"):
        LPIPS.from_files(vgg_backbone, alex_heads, net="vgg")
    with pytest.raises(MagicBokehError, match="does not exist"):
        LPIPS.from_files(tmp_path / "nope.pth", vgg_heads)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MagicBokehError, match="cannot read"):
        LPIPS.from_files(tmp_path / "junk.pth", vgg_heads)
    with pytest.raises(MagicBokehError, match="unknown LPIPS network"):
        LPIPS("squeeze")  # type: ignore[arg-type]
    with pytest.raises(MagicBokehError, match="N×3×H×W"):
        LPIPS("alex")(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


def test_from_pretrained_names_the_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAGICBOKEH_HOME", str(tmp_path))
    with pytest.raises(MagicBokehError, match="magicbokeh download --lpips alex"):
        LPIPS.from_pretrained("alex")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table(backbone: Path, heads: Path, url_base: str = "file:///nowhere/") -> dict:
    """The real installed names, with the hashes (and optionally file:// URLs) of test files."""
    real_backbone, real_heads = lpips_weights.LPIPS_ASSETS["vgg"]
    return {
        "vgg": (
            Asset(
                real_backbone.name,
                real_backbone.source_names,
                url_base + backbone.name,
                _sha(backbone),
            ),
            Asset(real_heads.name, real_heads.source_names, url_base + heads.name, _sha(heads)),
        )
    }


def test_install_from_local_copies_then_from_pretrained(tmp_path: Path) -> None:
    backbone, heads, model = _random_files(tmp_path, "vgg")
    copies = tmp_path / "copies" / "v0.1"
    copies.mkdir(parents=True)
    shutil.copy(heads, copies / "vgg.pth")
    table = _table(backbone, heads)
    home = tmp_path / "home"
    files = install_lpips(["vgg"], folder=home, sources=[backbone, copies.parent], assets=table)
    assert [f.name for f in files] == ["vgg16-397923af.pth", "lpips-v0.1-vgg.pth"]
    assert installed_files("vgg", home) == tuple(files)
    a, b = _images(), _images(seed=2)
    assert torch.equal(LPIPS.from_pretrained("vgg", folder=home)(a, b), model(a, b))
    assert sorted(p.name for p in home.iterdir()) == sorted(f.name for f in files)


def test_install_downloads_checks_the_hash_and_leaves_nothing_partial(tmp_path: Path) -> None:
    backbone, heads, _ = _random_files(tmp_path, "vgg")
    table = _table(backbone, heads, url_base=tmp_path.as_uri() + "/")
    home = tmp_path / "home"
    install_lpips(["vgg"], folder=home, assets=table, quiet=True)
    assert _sha(home / "vgg16-397923af.pth") == _sha(backbone)
    heads.write_bytes(b"changed upstream")
    with pytest.raises(MagicBokehError, match="SHA-256"):
        install_lpips(["vgg"], folder=home, assets=table, quiet=True, overwrite=True)
    broken = _table(backbone, heads, url_base=(tmp_path / "missing").as_uri() + "/")
    with pytest.raises(MagicBokehError, match="cannot download"):
        install_lpips(["vgg"], folder=tmp_path / "other", assets=broken, quiet=True)
    assert not [p for p in home.iterdir() if p.name.startswith(".")]
    assert list((tmp_path / "other").iterdir()) == []


def test_install_refuses_a_named_copy_with_another_hash(tmp_path: Path) -> None:
    backbone, heads, _ = _random_files(tmp_path, "vgg")
    table = _table(backbone, heads)
    folder = tmp_path / "copies"
    folder.mkdir()
    (folder / "vgg16-397923af.pth").write_bytes(b"truncated")
    with pytest.raises(MagicBokehError, match="does not have the SHA-256"):
        install_lpips(["vgg"], folder=tmp_path / "home", sources=[folder], assets=table)
    with pytest.raises(MagicBokehError, match="none of the given sources holds"):
        install_lpips(["vgg"], folder=tmp_path / "home", sources=[heads], assets=table)
    assert list((tmp_path / "home").iterdir()) == []


@needs_vectors
def test_download_command_installs_the_real_heads_and_refuses_a_wrong_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    weights = VECTORS / "weights"
    home = tmp_path / "home"
    args = ["download", "--home", str(home), "--lpips", "vgg", "--lpips-from", str(weights)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: none of the given sources holds vgg16-397923af.pth")
    assert list((home / "lpips").iterdir()) == []
    backbone = weights / "vgg16_features_random.safetensors"
    real_backbone, real_heads = lpips_weights.LPIPS_ASSETS["vgg"]
    fake = Asset(real_backbone.name, real_backbone.source_names, real_backbone.url, _sha(backbone))
    monkeypatch.setitem(lpips_weights.LPIPS_ASSETS, "vgg", (fake, real_heads))
    assert main([*args, str(backbone)]) == 0
    assert "installed the LPIPS weights (vgg)" in capsys.readouterr().out
    assert _sha(home / "lpips" / "lpips-v0.1-vgg.pth") == real_heads.sha256
    monkeypatch.setenv("MAGICBOKEH_HOME", str(home))
    model = LPIPS.from_pretrained("vgg")
    expected = load_file(str(VECTORS / "expected" / "vgg.safetensors"))["smooth64.dist"]
    inputs = load_file(str(VECTORS / "inputs.safetensors"))
    with torch.no_grad():
        got = model(inputs["smooth64.in0"], inputs["smooth64.in1"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
