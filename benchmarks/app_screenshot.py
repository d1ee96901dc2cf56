"""Screenshot of the web app for the README: the example photo, focused on the motorcycle.

Starts the app on a free local port, opens it in Debian's Chromium through Playwright, opens
the bundled example, clicks the motorcycle, sets K = 28, renders, and saves a PNG of the page
(quantised to a palette to keep it small).

Usage: ``python benchmarks/app_screenshot.py [-o docs/images/app.png]``
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
CHROMIUM_ARGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
CHROMIUM_ARGS += "--disable-background-networking --disable-component-update --disable-sync"
MOTORCYCLE = (420, 200)  # pixels of the 741×500 example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/app.png"))
    args = parser.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from magicbokeh.app.ui import build_app, serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app()
    serve(app, host="127.0.0.1", port=port, block=False)
    status = "document.querySelector('#status textarea').value"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-profile-"),
            executable_path="/usr/bin/chromium",
            headless=True,
            args=CHROMIUM_ARGS.split(),
            viewport={"width": 1280, "height": 860},
        )
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.click("#example-button")
        page.wait_for_function(f"{status}.includes('opened the example')")
        image = page.locator("#focus-image img").first
        natural = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
        box = image.bounding_box()
        page.mouse.click(
            box["x"] + MOTORCYCLE[0] * box["width"] / natural[0],
            box["y"] + MOTORCYCLE[1] * box["height"] / natural[1],
        )
        page.wait_for_function(f"{status}.includes('focus at')")
        aperture = page.locator("#aperture input[type=number]")
        aperture.fill("28")
        aperture.press("Enter")
        page.click("#render-button")
        page.wait_for_function(f"{status}.includes('rendered')")
        page.wait_for_timeout(1000)
        shot = Path(tempfile.mkdtemp()) / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    app.close()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.open(shot).convert("RGB").quantize(colors=192, dither=Image.Dither.FLOYDSTEINBERG).save(
        args.output, optimize=True
    )
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
