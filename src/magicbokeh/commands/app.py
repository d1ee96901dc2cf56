"""``magicbokeh app``: the web app on this machine (Gradio; needs the ``app`` extra).

Binds to 127.0.0.1 unless ``--host`` says otherwise (``0.0.0.0`` exposes the app to the
network and prints a warning); a public share link only with ``--share``. Uploads larger
than ``--max-megapixels`` are refused with a message. Full renders are queued,
``--concurrency`` at a time, so several users do not run the machine out of memory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_subparser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "app",
        help="open the web app: click to focus, drag the aperture",
        description="Start the web app: upload a photo, click the subject to focus, drag the "
        "aperture, render and download the full-resolution result.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--engine",
        choices=("auto", "physical", "diffusion"),
        default="auto",
        help="engine selected when the page opens (default auto)",
    )
    p.add_argument("--model", type=Path, help="MagicBokeh model folder (learned engine)")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        metavar="N",
        help="refuse uploads larger than this (default 40)",
    )
    p.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="full renders at a time (1)"
    )
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magicbokeh.errors import MagicBokehError
    from magicbokeh.extras import require

    require("app", "the web app")
    if not 0 < args.max_megapixels <= 1000:
        raise MagicBokehError(f"--max-megapixels must be in (0, 1000] (got {args.max_megapixels})")
    if args.concurrency < 1:
        raise MagicBokehError(f"--concurrency must be at least 1 (got {args.concurrency})")
    if not 0 < args.port < 65536:
        raise MagicBokehError(f"--port must be in 1..65535 (got {args.port})")
    if args.host in ("0.0.0.0", "::"):
        print(
            f"warning: --host {args.host} makes the app reachable from other machines on the "
            "network; anyone who can reach this port can use it",
            file=sys.stderr,
        )
    # Idle compute threads sleep instead of spinning: the server shares the CPU between
    # requests (and often with other programs). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from magicbokeh.app.ui import build_app, serve

    app = build_app(
        engine=args.engine,
        model=args.model,
        max_megapixels=args.max_megapixels,
        concurrency=args.concurrency,
    )
    serve(app, host=args.host, port=args.port, share=args.share)
    return 0
