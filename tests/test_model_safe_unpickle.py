"""The allow-list reader refuses code-running pickles without running them; modules read inertly."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from magicbokeh.errors import MagicBokehError  # noqa: E402
from magicbokeh.model.safe_unpickle import (  # noqa: E402
    PickledObject,
    load_untrusted_torch_file,
    pickled_module_state_dict,
)


class _RunsShell:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _WritesFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('owned')",))


class _ImportsModule:
    def __reduce__(self):
        return (__import__, ("subprocess",))


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("payload", ["shell", "exec"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, zip_format):
    marker = tmp_path / "side_effect"
    evil = _RunsShell(marker) if payload == "shell" else _WritesFile(marker)
    path = tmp_path / "lora.pkl"
    torch.save(
        {"rank_unet": 4, "controlnet": evil, "w": torch.ones(2)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(MagicBokehError, match="refused"):
        load_untrusted_torch_file(path)
    assert not marker.exists()


def test_plain_pickle_with_forbidden_import_is_refused(tmp_path):
    path = tmp_path / "x.pkl"
    with open(path, "wb") as f:
        pickle.dump({"a": _ImportsModule()}, f)
    with pytest.raises(MagicBokehError):
        load_untrusted_torch_file(path)


def test_pickled_module_is_read_as_inert_state(tmp_path):
    gen = torch.Generator().manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4)
    )
    module.register_buffer("running", torch.randn(3, generator=gen))
    module.register_buffer("scratch", torch.randn(2, generator=gen), persistent=False)
    path = tmp_path / "module.pkl"
    torch.save({"net": module, "rank": 8, "names": ["a", "b"]}, path)

    loaded = load_untrusted_torch_file(path)
    assert loaded["rank"] == 8 and loaded["names"] == ["a", "b"]
    assert isinstance(loaded["net"], PickledObject)
    assert not isinstance(loaded["net"], torch.nn.Module)
    state = pickled_module_state_dict(loaded["net"])
    reference = module.state_dict()
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
        assert type(state[key]) is torch.Tensor


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(MagicBokehError, match="magicbokeh download"):
        load_untrusted_torch_file(tmp_path / "absent.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(MagicBokehError):
        load_untrusted_torch_file(bad)


def test_module_state_with_non_tensor_weights_is_refused() -> None:
    module = PickledObject()
    module.__setstate__({"_parameters": {"weight": "not a tensor"}, "_buffers": {}, "_modules": {}})
    with pytest.raises(MagicBokehError, match="non-tensor weights"):
        pickled_module_state_dict(module)


def test_restored_tensor_attributes_cannot_replace_tensor_methods() -> None:
    import torch

    weight = torch.ones(2)
    weight.detach = dict  # what a crafted pickle's state could plant on a tensor
    module = PickledObject()
    module.__setstate__({"_parameters": {"weight": weight}, "_buffers": {}, "_modules": {}})
    state = pickled_module_state_dict(module)
    assert torch.equal(state["weight"], torch.ones(2))
