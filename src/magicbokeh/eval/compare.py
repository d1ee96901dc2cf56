"""``magicbokeh eval compare R1 R2 ...``: several reports side by side in one table.

One row per report (labelled with its folder name and method), the union of their metrics in
the papers' column order plus the mean time per image; the best value of each column in bold
and the second underlined, as papers print them. Reports that scored different images are
compared on the images they share (see :func:`magicbokeh.eval.report.compare_table`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_subparser(protocols: argparse._SubParsersAction) -> None:
    p = protocols.add_parser(
        "compare",
        help="put several reports side by side",
        description="Print (or write) one Markdown table comparing eval reports.",
    )
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="report folders")
    p.add_argument("-o", "--output", type=Path, metavar="FILE.md", help="also write the table")
    p.add_argument("--overwrite", action="store_true", help="replace FILE.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.eval.report import compare_table, read
    from magicbokeh.io.atomic import atomic_write, ensure_writable

    if args.output is not None:
        ensure_writable(args.output, overwrite=args.overwrite)
    results = [read(path) for path in args.reports]
    protocols = {r.get("protocol") for r in results}
    if len(protocols) > 1:
        raise MagicBokehError(
            f"the reports are of different protocols ({', '.join(sorted(map(str, protocols)))}); "
            "compare bokeh reports with bokeh reports and sr with sr"
        )
    labels = [
        f"{Path(p).expanduser().resolve().name} ({r.get('method')})"
        for p, r in zip(args.reports, results, strict=True)
    ]
    table = compare_table(results, labels)
    print(table, end="")
    if args.output is not None:
        with atomic_write(args.output, overwrite=args.overwrite) as temporary:
            temporary.write_text(table, encoding="utf-8")
    return 0
