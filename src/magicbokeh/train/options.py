"""Settings of a training run: command-line flags, ``--config FILE`` and the stored run.

Every flag of a ``train`` sub-command is a *setting* named by its destination (``--batch-size``
→ ``batch_size``). A setting's value comes from, last wins: the flag's default, the run's
stored ``config.json`` (with ``--resume``), the ``--config`` file (JSON or YAML mapping
setting names, ``-`` or ``_`` spelling, to values), the command line. Paths become absolute.

This module imports nothing heavy: it runs while ``magicbokeh train ... --help`` builds.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from magicbokeh.errors import MagicBokehError

__all__ = [
    "NOT_SETTINGS",
    "add_run_options",
    "finish_parser",
    "load_config_file",
    "resolve_settings",
    "setting_defaults",
]

#: Destinations that steer one invocation and are not stored as settings.
NOT_SETTINGS = frozenset({"resume", "config", "func", "command", "task", "_setting_defaults"})
_DEFAULTS = "_setting_defaults"
_ACTIONS = "_setting_actions"


def add_run_options(parser: argparse.ArgumentParser, *, steps: int, batch_size: int) -> None:
    """The flags every training task shares (run folder, schedule, precision, logs)."""
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--output", type=Path, metavar="RUN", help="run folder")
    run.add_argument("--resume", action="store_true", help="continue the run in RUN")
    run.add_argument(
        "--config", type=Path, metavar="FILE", help="JSON or YAML file of settings (flag names)"
    )
    run.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    run.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        metavar="B",
        help=f"items per process and step (default {batch_size})",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    run.add_argument(
        "--checkpoint-every", type=int, default=500, metavar="N", help="steps (default 500)"
    )
    run.add_argument(
        "--keep-checkpoints", type=int, default=3, metavar="K", help="keep the last K (default 3)"
    )
    run.add_argument("--log-every", type=int, default=10, metavar="N", help="steps (default 10)")
    run.add_argument(
        "--sample-every",
        type=int,
        default=500,
        metavar="N",
        help="write input|output|target samples every N steps (0 = never; default 500)",
    )
    run.add_argument(
        "--val-every",
        type=int,
        default=500,
        metavar="N",
        help="validation loss every N steps, with validation data (default 500)",
    )
    run.add_argument(
        "--val-count", type=int, default=16, metavar="N", help="validation items (default 16)"
    )
    run.add_argument(
        "--num-workers", type=int, default=2, metavar="W", help="data loader processes (default 2)"
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (errors are still printed)"
    )

    speed = parser.add_argument_group("devices and precision")
    speed.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="auto: the GPUs `accelerate launch` gives, else cuda/mps/cpu (default auto)",
    )
    speed.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default="no",
        help="autocast precision; weights stay float32 (default no)",
    )
    speed.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        metavar="N",
        help="micro-batches per optimizer step (default 1)",
    )
    speed.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (less memory, about 30%% slower)",
    )

    optim = parser.add_argument_group("optimizer (AdamW)")
    optim.add_argument("--adam-beta1", type=float, default=0.9, help="(default 0.9)")
    optim.add_argument("--adam-beta2", type=float, default=0.999, help="(default 0.999)")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="(default 1e-2)")
    optim.add_argument("--adam-epsilon", type=float, default=1e-8, help="(default 1e-8)")
    optim.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="clip the gradient norm (0 = no clipping; default 1.0)",
    )
    optim.add_argument(
        "--lr-warmup-steps",
        type=int,
        default=0,
        metavar="N",
        help="linear warm-up of each phase's learning rate, then constant (default 0)",
    )


def finish_parser(parser: argparse.ArgumentParser) -> None:
    """Record the flag defaults as settings defaults and hide them from ``args``.

    Afterwards ``args`` holds only what the command line gave, so :func:`resolve_settings` can
    tell given values from defaults. Call after the last ``add_argument``.
    """
    defaults: dict[str, Any] = {}
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help") or action.dest in NOT_SETTINGS:
            continue
        defaults[action.dest] = action.default
        actions[action.dest] = action
        action.default = argparse.SUPPRESS
    parser.set_defaults(**{_DEFAULTS: defaults, _ACTIONS: actions})


def load_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a JSON (``.json``) or YAML (other names) settings file."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MagicBokehError(f"cannot read the config file {path} ({exc})") from None
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MagicBokehError(f"config file {path} is not valid JSON/YAML ({first})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise MagicBokehError(f"config file {path} must hold a mapping of setting names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def _absolute(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.expanduser().absolute())
    if isinstance(value, (list, tuple)):
        return [_absolute(item) for item in value]
    return value


def _from_file(name: str, value: Any, action: argparse.Action, source: Path) -> Any:
    """A config-file value converted and checked as the flag would be."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise MagicBokehError(f"{source}: '{name}' must be true or false, not {value!r}")
        return value
    many = action.nargs in ("+", "*")
    items = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise MagicBokehError(f"{source}: '{name}' takes one value, not a list")
    converted = []
    for item in items:
        if isinstance(item, (dict, list)) or item is None:
            raise MagicBokehError(f"{source}: '{name}' has an unusable value {item!r}")
        if action.type is not None:
            try:
                item = action.type(item if action.type is not float else float(item))
            except (TypeError, ValueError):
                raise MagicBokehError(
                    f"{source}: '{name}' has an unusable value {item!r}"
                ) from None
        if action.choices is not None and item not in action.choices:
            raise MagicBokehError(
                f"{source}: '{name}' must be one of {', '.join(map(str, action.choices))}, "
                f"not {item!r}"
            )
        converted.append(item)
    return converted if many else converted[0]


def setting_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting's value when neither the command line nor a config file gives it."""
    return {name: _absolute(value) for name, value in getattr(args, _DEFAULTS).items()}


def resolve_settings(
    args: argparse.Namespace, stored: dict[str, Any] | None = None
) -> tuple[dict[str, Any], set[str]]:
    """``(settings, given)``: every setting's value and the names the user gave explicitly.

    ``stored``: the settings of the run being resumed (they replace the flag defaults).
    Raises MagicBokehError for unknown or unusable config-file entries.
    """
    actions: dict[str, argparse.Action] = getattr(args, _ACTIONS)
    settings = setting_defaults(args)
    if stored:
        settings.update({k: v for k, v in stored.items() if k in settings})
    given: set[str] = set()
    config = getattr(args, "config", None)
    if config is not None:
        values = load_config_file(config)
        unknown = sorted(set(values) - set(settings))
        if unknown:
            raise MagicBokehError(
                f"config file {config} has unknown settings {', '.join(unknown)}; known: "
                f"{', '.join(sorted(settings))}"
            )
        for name, value in values.items():
            settings[name] = _absolute(_from_file(name, value, actions[name], config))
            given.add(name)
    for name in settings:
        if name in vars(args):
            settings[name] = _absolute(getattr(args, name))
            given.add(name)
    return settings, given


def path_setting(settings: dict[str, Any], name: str) -> Path | None:
    """A path setting as a Path (None when unset)."""
    value = settings.get(name)
    return None if value is None else Path(os.fspath(value))
