"""``magicbokeh convert-official --base SD21_DIR --lora lora.pkl [--depth DAdepth.pth] -o DIR``.

Reads the released formats (the pickled checkpoint through an allow-list unpickler, never
running code from it) and writes this package's format: safetensors and JSON configs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "convert-official",
        help="convert the released lora.pkl (+ SD 2.1-base, DAdepth.pth) to this package's format",
        description="Convert the released MagicBokeh checkpoint into a safetensors model folder.",
    )
    p.add_argument("--base", type=Path, required=True, help="Stable Diffusion 2.1-base folder")
    p.add_argument("--lora", type=Path, required=True, help="released lora.pkl")
    p.add_argument("--depth", type=Path, help="released DAdepth.pth (degradation-aware depth)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.extras import require

    require("diffusion", "magicbokeh convert-official")
    from magicbokeh.api import DTYPES
    from magicbokeh.model.official import convert_official

    convert_official(
        args.base,
        args.lora,
        args.output,
        depth_pth=args.depth,
        torch_dtype=DTYPES[args.dtype],
        overwrite=args.overwrite,
    )
    print(f"wrote {args.output}")
    return 0
