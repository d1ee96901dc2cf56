"""``magicbokeh make-ebb400lq``: build the EBB400-LQ benchmark once, so everyone scores the same
files.

EBB400-LQ (MagicBokeh paper, §4.2) is 400 pairs of the EBB! dataset (all-in-focus photo and
the same scene shot with a wide aperture) whose inputs are degraded with the Real-ESRGAN
second-order pipeline, with focal-region masks drawn by hand. Here:

- selection: the names in ``--list FILE`` (one per line), or ``--count`` (400) names drawn
  without replacement by ``numpy.random.default_rng(seed)`` from the sorted pairs;
- degradation: :func:`magicbokeh.degrade.degrade` at scale 4 with the released training
  settings, resized back to the original size (the released inference script restores on
  the input's pixel grid; its EBB test inputs have the photos' size), one seed per image from
  ``--seed`` and the image's name (as ``magicbokeh degrade`` derives it);
- focus: the masks in the EBB folder's ``focus/`` (or ``mask/``), or ``--masks DIR``. The
  paper's hand-drawn masks are not public; without masks the set is written without
  ``focus/`` and ``eval bokeh`` focuses automatically (the manifest says so).

The result, written to a temporary folder and moved into place when complete::

    OUT/input/<name>.png      degraded all-in-focus photo (8-bit PNG)
    OUT/target/<name>.<ext>   the EBB! bokeh photo, byte for byte
    OUT/focus/<name>.<ext>    focal-region mask, byte for byte (when masks were given)
    OUT/depth/<name>.<ext>    disparity, byte for byte (when the EBB folder has depth/)
    OUT/list.txt              the chosen names
    OUT/manifest.json         settings, per-image seeds and degradation parameters, SHA-256
                              of every source file, versions

``eval bokeh --data OUT`` reads this layout; ``eval bokeh --data EBB --degrade --seed S`` makes
the same inputs on the fly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from magicbokeh.errors import MagicBokehError

DEGRADE_SCALE = 4
DEFAULT_COUNT = 400
MANIFEST = "manifest.json"


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "make-ebb400lq",
        help="build the EBB400-LQ benchmark from the EBB! dataset (seeded, with a manifest)",
        description="Choose EBB! pairs (seeded, or from a list), degrade each all-in-focus "
        "input with the Real-ESRGAN pipeline at the paper's setting, and write the set with "
        "its focal-region masks and a manifest.",
    )
    p.add_argument("--ebb", type=Path, required=True, metavar="DIR", help="the EBB! folder")
    p.add_argument("--list", type=Path, metavar="FILE", help="names to take, one per line")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--seed", type=int, required=True, help="selection and degradation seed")
    p.add_argument(
        "--count", type=int, default=DEFAULT_COUNT, help=f"pairs to draw (default {DEFAULT_COUNT})"
    )
    p.add_argument("--masks", type=Path, metavar="DIR", help="focal-region masks by name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def degrade_input(rgb, seed: int, stem: str):
    """The EBB400-LQ input of one photo: ``(lq H×W×3 float32 on 8-bit levels, parameters)``.

    ``rgb``: ``H×W×3`` sRGB in [0, 1]; the image's seed comes from ``seed`` and ``stem``.
    """
    import torch

    from magicbokeh.degrade import degrade
    from magicbokeh.degrade.command import image_seed
    from magicbokeh.io.images import from_tensor, to_tensor

    generator = torch.Generator().manual_seed(image_seed(seed, stem))
    lq, params = degrade(
        to_tensor(rgb),
        generator=generator,
        scale=DEGRADE_SCALE,
        resize_back=True,
        return_params=True,
    )
    return from_tensor(lq), params[0]


def read_list(path: Path) -> list[str]:
    """Names from a list file: one per line, extensions and folders ignored, ``#`` comments."""
    file = path.expanduser()
    if not file.is_file():
        raise MagicBokehError(f"--list {file} does not exist")
    names = []
    for line in file.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            names.append(Path(text).stem)
    if not names:
        raise MagicBokehError(f"--list {file} names no pairs")
    return list(dict.fromkeys(names))


def choose(stems: list[str], *, count: int, seed: int, names: list[str] | None) -> list[str]:
    """The chosen names, in the order of ``stems`` (see the module doc)."""
    import numpy as np

    if names is not None:
        unknown = [n for n in names if n not in set(stems)]
        if unknown:
            raise MagicBokehError(
                f"{len(unknown)} names of the list are not EBB! pairs here (first: {unknown[0]})"
            )
        wanted = set(names)
        return [s for s in stems if s in wanted]
    if not 1 <= count <= len(stems):
        raise MagicBokehError(
            f"cannot draw {count} pairs from {len(stems)}: use --count 1..{len(stems)}"
        )
    picked = set(np.random.default_rng(seed).choice(len(stems), size=count, replace=False))
    return [s for i, s in enumerate(stems) if i in picked]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from magicbokeh.degrade import DegradationConfig
    from magicbokeh.degrade.command import image_seed
    from magicbokeh.eval.layouts import find_bokeh_pairs
    from magicbokeh.install import staged_folder
    from magicbokeh.io.images import READ_SUFFIXES, load_image, save_image
    from magicbokeh.io.sidecar import package_versions

    pairs = find_bokeh_pairs(args.ebb)
    names = read_list(args.list) if args.list else None
    chosen = set(
        choose([p.stem for p in pairs.pairs], count=args.count, seed=args.seed, names=names)
    )
    selected = [p for p in pairs.pairs if p.stem in chosen]
    masks = {p.stem: p.focus for p in selected if p.focus is not None}
    if args.masks is not None:
        from magicbokeh.data.datasets import files_by_stem

        folder = args.masks.expanduser()
        if not folder.is_dir():
            raise MagicBokehError(f"--masks {folder} does not exist")
        found = files_by_stem(folder, READ_SUFFIXES)
        lacking = [p.stem for p in selected if p.stem not in found]
        if lacking:
            raise MagicBokehError(
                f"{len(lacking)} chosen pairs have no mask in {folder} ({lacking[0]}, ...)"
            )
        masks = {p.stem: found[p.stem] for p in selected}
    output = args.output.expanduser()
    records = []
    with staged_folder(output, overwrite=args.overwrite) as staging:
        for pair in tqdm(selected, desc="EBB400-LQ", unit="img", disable=args.quiet):
            lq, params = degrade_input(load_image(pair.input).rgb, args.seed, pair.stem)
            files = {"input": f"input/{pair.stem}.png"}
            save_image(staging / files["input"], lq)
            sources = {"original": pair.input, "bokeh": pair.target}
            copies = {"target": pair.target, "focus": masks.get(pair.stem), "depth": pair.depth}
            for kind, source in copies.items():
                if source is None:
                    continue
                files[kind] = f"{kind}/{pair.stem}{source.suffix.lower()}"
                (staging / kind).mkdir(exist_ok=True)
                shutil.copyfile(source, staging / files[kind])
                if kind != "target":
                    sources[kind] = source
            records.append(
                {
                    "stem": pair.stem,
                    "files": files,
                    "seed": image_seed(args.seed, pair.stem),
                    "params": params,
                    "sha256": {k: _sha256(v) for k, v in sources.items()},
                }
            )
        (staging / "list.txt").write_text("\n".join(r["stem"] for r in records) + "\n")
        manifest = {
            "name": "EBB400-LQ",
            "source": str(args.ebb.expanduser().resolve()),
            "source_layout": pairs.layout,
            "selection": f"list {args.list}" if args.list else "seeded draw",
            "seed": args.seed,
            "count": len(records),
            "focus": "masks" if masks else "none (eval bokeh focuses automatically)",
            "degradation": {
                "pipeline": "Real-ESRGAN second order (magicbokeh.degrade)",
                "scale": DEGRADE_SCALE,
                "resize_back": True,
                "config": DegradationConfig().to_dict(),
            },
            "versions": package_versions(),
            "images": records,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        note = "" if masks else " (no focal-region masks: eval bokeh will focus automatically)"
        print(f"wrote {len(records)} pairs to {output}{note}", file=sys.stderr)
    return 0
