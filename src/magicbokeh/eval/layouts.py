"""Finding the image pairs of an evaluation data folder.

Bokeh data (``eval bokeh --data DIR``), first layout that matches:

- ``input/`` (all-in-focus, possibly low quality) and ``target/`` (real lens bokeh), with
  optional ``depth/`` (disparity files, larger = nearer) and ``focus/`` (focal-region masks,
  white = in focus); ``make-ebb400lq`` writes this layout;
- the EBB! release: ``original/`` and ``bokeh/``, with optional ``depth/`` or ``disparity/``
  and ``focus/`` or ``mask/``.

SR data (``eval sr --data DIR``): ``lq/`` + ``hq/``, ``LR/`` + ``HR/`` or ``test_LR/`` +
``test_HR/`` (any letter case). Names pair up by file name without extension; for SR a
trailing ``_LR4``, ``_HR``, ``x4`` (and the like) is ignored, so RealSR's
``Canon_001_LR4.png`` pairs with ``Canon_001_HR.png``.

Images are any format :func:`magicbokeh.io.load_image` reads; depth files any of
:data:`~magicbokeh.io.DEPTH_READ_EXTENSIONS`. Pairs are sorted by name, numbers numerically.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from magicbokeh.data.datasets import files_by_stem, natural_key
from magicbokeh.data.synth import IMAGE_SUFFIXES
from magicbokeh.errors import MagicBokehError
from magicbokeh.io.depth_files import DEPTH_READ_EXTENSIONS

__all__ = ["BOKEH_LAYOUTS", "SR_LAYOUTS", "Pair", "PairSet", "find_bokeh_pairs", "find_sr_pairs"]

#: layout name → (input folder names, target folder names, depth folder names, focus names).
BOKEH_LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "input/target": (("input",), ("target",), ("depth",), ("focus",)),
    "EBB!": (("original",), ("bokeh",), ("depth", "disparity"), ("focus", "mask", "masks")),
}
#: SR layouts: (LQ folder, HQ folder), compared case-insensitively.
SR_LAYOUTS: tuple[tuple[str, str], ...] = (("lq", "hq"), ("lr", "hr"), ("test_lr", "test_hr"))
_SR_SUFFIX = re.compile(r"([_-]?(lr|hr|lq|hq|gt)\d*|[_-]?x\d+)$", re.IGNORECASE)
_SHOWN = 5


@dataclass(frozen=True)
class Pair:
    """One evaluation item: its name, input and target files, optional depth and focus mask."""

    stem: str
    input: Path
    target: Path
    depth: Path | None = None
    focus: Path | None = None


@dataclass
class PairSet:
    """The pairs of a data folder, the layout found and what could not be paired."""

    layout: str
    folders: dict[str, Path]
    pairs: list[Pair]
    unmatched: dict[str, list[str]] = field(default_factory=dict)


def _child(root: Path, names: Sequence[str]) -> Path | None:
    """The first sub-folder of ``root`` whose name is one of ``names`` (any letter case)."""
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return next((children[n.lower()] for n in names if n.lower() in children), None)


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MagicBokehError(f"data folder {root} does not exist; check --data")
    return root


def _files(folder: Path, suffixes: Sequence[str], key=None) -> dict[str, Path]:
    found = files_by_stem(folder, suffixes)
    if key is None:
        return found
    keyed: dict[str, Path] = {}
    for stem, path in found.items():
        name = key(stem)
        if name in keyed:
            raise MagicBokehError(
                f"{folder} holds both {keyed[name].name} and {path.name}, which name the same "
                "pair; keep one"
            )
        keyed[name] = path
    return keyed


def _match(
    sides: dict[str, dict[str, Path]], folders: dict[str, Path], allow_missing: bool
) -> tuple[list[str], dict[str, list[str]]]:
    """Stems present on every side, and per folder the stems it lacks."""
    every = set().union(*(set(s) for s in sides.values()))
    common = set.intersection(*(set(s) for s in sides.values()))
    lacking = {
        f"{folders[role].name}/": sorted(every - set(files), key=natural_key)
        for role, files in sides.items()
        if every - set(files)
    }
    if lacking and not allow_missing:
        parts = []
        for folder, stems in lacking.items():
            shown = ", ".join(stems[:_SHOWN]) + (", ..." if len(stems) > _SHOWN else "")
            parts.append(f"{folder} lacks {len(stems)} ({shown})")
        raise MagicBokehError(
            f"{len(every - common)} names are not in every folder: {'; '.join(parts)}; pass "
            f"--allow-missing to score the {len(common)} complete pairs only"
        )
    if not common:
        raise MagicBokehError(
            f"no complete pairs in {', '.join(str(f) for f in folders.values())}: the folders "
            "are empty or share no file names"
        )
    return sorted(common, key=natural_key), lacking


def find_bokeh_pairs(root: str | Path, *, allow_missing: bool = False) -> PairSet:
    """The bokeh pairs of ``root`` (see the module doc).

    Raises:
        MagicBokehError: no known layout, empty folders, no pairs, or names missing from a
            folder (unless ``allow_missing``; then they are listed in ``unmatched``).
    """
    root = _check_root(root)
    for layout, (inputs, targets, depths, focuses) in BOKEH_LAYOUTS.items():
        folders = {"input": _child(root, inputs), "target": _child(root, targets)}
        if folders["input"] is None or folders["target"] is None:
            continue
        folders |= {"depth": _child(root, depths), "focus": _child(root, focuses)}
        folders = {role: path for role, path in folders.items() if path is not None}
        sides = {
            role: _files(path, DEPTH_READ_EXTENSIONS if role == "depth" else IMAGE_SUFFIXES)
            for role, path in folders.items()
        }
        stems, lacking = _match(sides, folders, allow_missing)
        pairs = [
            Pair(
                stem,
                sides["input"][stem],
                sides["target"][stem],
                sides["depth"][stem] if "depth" in sides else None,
                sides["focus"][stem] if "focus" in sides else None,
            )
            for stem in stems
        ]
        return PairSet(layout, folders, pairs, lacking)
    raise MagicBokehError(
        f"{root} is not a bokeh evaluation folder: it needs input/ and target/ (optional depth/ "
        "and focus/), or the EBB! layout original/ and bokeh/"
    )


def sr_pair_name(stem: str) -> str:
    """The pairing name of an SR file: its stem without an ``_LR4``/``_HR``/``x4`` ending."""
    return _SR_SUFFIX.sub("", stem) or stem


def find_sr_pairs(root: str | Path, *, allow_missing: bool = False) -> PairSet:
    """The SR pairs (input = LQ, target = HQ) of ``root`` (see the module doc).

    Raises:
        MagicBokehError: as :func:`find_bokeh_pairs`.
    """
    root = _check_root(root)
    for lq_name, hq_name in SR_LAYOUTS:
        lq, hq = _child(root, (lq_name,)), _child(root, (hq_name,))
        if lq is None or hq is None:
            continue
        folders = {"input": lq, "target": hq}
        sides = {role: _files(p, IMAGE_SUFFIXES, sr_pair_name) for role, p in folders.items()}
        stems, lacking = _match(sides, folders, allow_missing)
        pairs = [Pair(s, sides["input"][s], sides["target"][s]) for s in stems]
        return PairSet(f"{lq.name}/{hq.name}", folders, pairs, lacking)
    raise MagicBokehError(
        f"{root} is not an SR evaluation folder: it needs lq/ and hq/ (or LR/ and HR/, "
        "test_LR/ and test_HR/)"
    )
