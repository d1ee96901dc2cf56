"""Allow-list reading of ``torch.save`` pickles holding whole modules (the released ``lora.pkl``).

A pickle can name any importable callable and call it while loading, so the released checkpoint,
which stores a pickled ``ControlNetModel``, is untrusted input. This module is a ``pickle_module``
for :func:`torch.load` whose unpickler resolves only:

- the tensor-rebuild functions and storage/dtype/size/device types that tensors need;
- ``collections.OrderedDict`` and a few inert builtin containers;
- module classes (``torch.nn.*``, ``diffusers.*``, the released ``models.*``, ``peft.*``) as inert
  :class:`PickledObject` stand-ins that only record the state they are given.

Every other global (``os.system``, ``builtins.eval``, ``subprocess.*``, ...) raises
:class:`UnsafePickleError` when the pickle names it, before anything can call it. The stand-ins'
``__dict__`` holds what ``nn.Module.__getstate__`` wrote (``_parameters``, ``_buffers``,
``_modules``, ``_internal_dict``), from which :func:`pickled_module_state_dict` rebuilds a flat
state dict and :func:`pickled_module_config` the diffusers config, without importing released code.
"""

from __future__ import annotations

import collections
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from magicbokeh.errors import MagicBokehError

__all__ = [
    "PickledObject",
    "Unpickler",
    "UnsafePickleError",
    "load",
    "load_untrusted_torch_file",
    "pickled_module_config",
    "pickled_module_state_dict",
]

# Module prefixes whose classes become inert stand-ins (never imported).
_STANDIN_PREFIXES = ("models.", "diffusers.", "peft.", "torch.nn.modules.", "torch.nn.parameter")

_ALLOWED_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
}

_ALLOWED_TORCH_TYPES = {
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}

_ALLOWED_BUILTINS = {
    "set": set,
    "frozenset": frozenset,
    "list": list,
    "dict": dict,
    "tuple": tuple,
}


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle names a global outside the allow-list."""


class PickledObject:
    """Inert stand-in for a pickled class instance: records its state, runs no code of the class.

    ``__setstate__`` stores a dict state in ``__dict__`` (what ``nn.Module`` pickles) and keeps
    anything else under ``state``. Construction arguments are kept under ``args``.
    """

    pickled_module: str = ""
    pickled_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state, slots = state
            self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_module}.{self.pickled_name}>"


class PickledDict(collections.OrderedDict):
    """Stand-in for dict subclasses such as diffusers' ``FrozenDict``: a plain ordered dict."""

    def __setstate__(self, state: Any) -> None:
        return None


_standin_cache: dict[tuple[str, str], type] = {}


def _standin(module: str, name: str) -> type:
    key = (module, name)
    if key not in _standin_cache:
        if name.endswith("Dict"):
            cls: type = type(name, (PickledDict,), {"pickled_module": module, "pickled_name": name})
        else:
            cls = type(name, (PickledObject,), {"pickled_module": module, "pickled_name": name})
        _standin_cache[key] = cls
    return _standin_cache[key]


def _resolve(module: str, name: str) -> Any:
    if module in ("builtins", "__builtin__") and name in _ALLOWED_BUILTINS:
        return _ALLOWED_BUILTINS[name]
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if (module, name) in _ALLOWED_TORCH_FUNCTIONS:
        import torch._utils

        return getattr(torch._utils, name)
    if (module, name) in _ALLOWED_TORCH_TYPES:
        return _ALLOWED_TORCH_TYPES[(module, name)]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "torch" and name.endswith("Storage") and name[:1].isupper():
        storage_type = getattr(torch, name, None)
        if isinstance(storage_type, type):
            return storage_type
    if module.startswith(_STANDIN_PREFIXES) and name.isidentifier():
        if module == "torch.nn.parameter" and name == "Parameter":
            return torch.nn.Parameter
        return _standin(module, name)
    raise UnsafePickleError(f"refused global {module}.{name}")


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from the allow-list (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the allow-list unpickler (used by torch's legacy-format reader)."""
    return Unpickler(file, **kwargs).load()


def load_untrusted_torch_file(path: str | Path) -> Any:
    """Read a ``torch.save`` file that may contain pickled modules, on CPU, without running code.

    Returns the unpickled object; modules appear as :class:`PickledObject` stand-ins.
    Raises MagicBokehError when the file is missing, unreadable or names a forbidden global.
    """
    path = Path(path)
    if not path.is_file():
        raise MagicBokehError(
            f"checkpoint {path} not found; fetch it with `magicbokeh download` "
            "or pass the right path"
        )
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__]
        )
    except UnsafePickleError as exc:
        raise MagicBokehError(
            f"{path} was refused: it references code outside the allowed types ({exc}); "
            "only checkpoints of the released layout can be read"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise MagicBokehError(
            f"{path} is not a readable torch checkpoint ({exc}); re-download it"
        ) from None


def _module_entries(obj: Any) -> tuple[dict, dict, dict, set]:
    state = obj.__dict__ if isinstance(obj, PickledObject) else {}
    params = state.get("_parameters") or {}
    buffers = state.get("_buffers") or {}
    modules = state.get("_modules") or {}
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    return params, buffers, modules, non_persistent


def pickled_module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The flat ``state_dict()`` of a pickled ``nn.Module`` stand-in (params, persistent buffers).

    Tensors are detached plain tensors on CPU, keyed as ``nn.Module.state_dict`` would key them.
    """
    if not isinstance(obj, PickledObject) or "_modules" not in obj.__dict__:
        raise MagicBokehError(f"expected a pickled torch module at '{prefix or '<root>'}'")
    out: dict[str, torch.Tensor] = {}
    params, buffers, modules, non_persistent = _module_entries(obj)
    for name, tensor in params.items():
        if tensor is not None:
            out[prefix + name] = tensor
    for name, tensor in buffers.items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor
    for name, child in modules.items():
        if child is not None:
            out.update(pickled_module_state_dict(child, prefix + name + "."))
    bad = sorted(k for k, v in out.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise MagicBokehError(
            f"the pickled module holds non-tensor weights ({', '.join(bad[:3])}); the file is "
            "damaged or not a released checkpoint"
        )
    # torch.Tensor.detach(v), not v.detach(): instance attributes restored by the pickle
    # cannot stand in for tensor methods.
    return {k: torch.Tensor.detach(v).clone() for k, v in out.items()}


def pickled_module_config(obj: Any) -> dict[str, Any]:
    """The diffusers config (``_internal_dict``) of a pickled ``ModelMixin`` stand-in, as a dict."""
    config = obj.__dict__.get("_internal_dict") if isinstance(obj, PickledObject) else None
    if not isinstance(config, dict):
        raise MagicBokehError("the pickled module carries no diffusers config (_internal_dict)")
    return {str(k): _plain(v) for k, v in config.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
