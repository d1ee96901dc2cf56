"""The web app in a real browser: upload, click to focus, render, download.

Drives Debian's Chromium (``apt-get install chromium``) with Playwright against the running
app. Skipped, with the reason, only where no Chromium is installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pytest.importorskip("gradio", reason="the web app needs the app extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLICK = (160, 140)  # on the subject, which the depth guess puts in front of the background
MAX_MEGAPIXELS = 0.1
STATUS = "document.querySelector('#status textarea').value"  # the status line, in the page


def textured_photo(path: Path, height: int, width: int) -> Path:
    """Fine colour noise everywhere (so blur shows) and a red central subject."""
    rng = np.random.default_rng(0)
    pixels = (rng.uniform(0.15, 0.85, (height, width, 3)) * 255).astype(np.uint8)
    y0, y1, x0, x1 = height * 3 // 8, height * 5 // 6, width // 3, width * 2 // 3
    shade = rng.uniform(0.3, 1.0, (y1 - y0, x1 - x0, 1))
    pixels[y0:y1, x0:x1] = (shade * np.array([255, 40, 40])).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def detail(image: np.ndarray, block: int = 40) -> np.ndarray:
    """Mean absolute high-pass (fine detail) of the grey image in ``block``-px blocks."""
    grey = np.asarray(image, dtype=np.float32)[..., :3].mean(axis=2)
    high = np.abs(grey - ndimage.uniform_filter(grey, 3))
    rows, cols = grey.shape[0] // block, grey.shape[1] // block
    return high[: rows * block, : cols * block].reshape(rows, block, cols, block).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    import os

    home = tmp_path_factory.mktemp("no-models")
    old = os.environ.get("MAGICBOKEH_HOME")
    os.environ["MAGICBOKEH_HOME"] = str(home)  # no learned weights: the learned engine is off
    from magicbokeh.app.ui import build_app, serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app(max_megapixels=MAX_MEGAPIXELS)
    serve(app, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()
    if old is None:
        os.environ.pop("MAGICBOKEH_HOME", None)
    else:
        os.environ["MAGICBOKEH_HOME"] = old


@pytest.fixture()
def page(app_url: str):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-profile-"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
            accept_downloads=True,
        )
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(app_url)
        page.wait_for_selector("#render-button")
        yield page
        browser.close()


def wait_for_status(page, action, expect: str) -> str:
    """Do ``action``, then wait for a new status that contains ``expect``; return it."""
    before = page.input_value("#status textarea")
    action()
    page.wait_for_function(
        f"([old, text]) => {{ const now = {STATUS}; return now !== old && now.includes(text); }}",
        arg=[before, expect],
    )
    return page.input_value("#status textarea")


def upload(page, path: Path, expect: str) -> str:
    return wait_for_status(
        page, lambda: page.set_input_files("#input-image input[type=file]", str(path)), expect
    )


def test_click_to_focus_render_and_download(page, tmp_path: Path) -> None:
    for element in ("input-image", "focus-image", "aperture", "engine", "render-button",
                    "output-image", "depth-image", "download", "status"):  # fmt: skip
        assert page.locator(f"#{element}").count() == 1, element
    assert page.locator('#engine input[value="diffusion"]').is_disabled()
    assert "unavailable" in page.inner_text("#engine")

    photo = textured_photo(tmp_path / "photo.png", 240, 320)
    assert "opened photo.png (320×240)" in upload(page, photo, "opened")
    page.locator("#depth-image img").first.wait_for()

    image = page.locator("#focus-image img").first
    natural = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    box = image.bounding_box()
    wait_for_status(
        page,
        lambda: page.mouse.click(
            box["x"] + (CLICK[0] + 0.5) * box["width"] / natural[0],
            box["y"] + (CLICK[1] + 0.5) * box["height"] / natural[1],
        ),
        f"focus at ({CLICK[0]}, {CLICK[1]})",
    )
    aperture = page.locator("#aperture input[type=number]")
    aperture.fill("24")
    aperture.press("Enter")
    page.wait_for_function("document.querySelector('#preview-info').innerText.includes('320×240')")

    wait_for_status(page, lambda: page.click("#render-button"), "rendered")
    links = page.locator("#download a[download]")
    saved = {}
    for index in range(links.count()):
        with page.expect_download() as download:
            links.nth(index).click()
        name = download.value.suggested_filename
        saved[name] = tmp_path / "downloads" / name
        download.value.save_as(saved[name])

    result_path = saved["photo_bokeh.png"]
    result = np.asarray(Image.open(result_path).convert("RGB"), dtype=np.float32)
    original = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32)
    assert result.shape == original.shape
    assert np.abs(result - original).mean() > 5.0
    kept = detail(result) / detail(original)  # 1 = as sharp as the photo, 0 = smooth
    near = kept[CLICK[1] // 40, CLICK[0] // 40]
    assert near > 0.5 and near >= 0.95 * kept.max(), kept.round(2)
    assert np.median(kept) < 0.2 * near and kept[0, 0] < 0.1 * near, kept.round(2)
    settings = json.loads(saved["photo_bokeh.png.json"].read_text())
    assert settings["focus"] == {"kind": "point", "x": 160.0, "y": 140.0}
    assert settings["aperture_K"] == 24.0 and settings["engine"] == "physical"


def test_bad_and_oversized_uploads_are_messages_and_the_app_keeps_working(
    page, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    message = upload(page, damaged, "error:")
    assert "damaged.png" in message and "Traceback" not in message

    large = textured_photo(tmp_path / "large.png", 300, 400)  # 0.12 MP, over the 0.1 MP limit
    message = upload(page, large, "error:")
    assert "limit of 0.1 MP" in message and "--max-megapixels" in message

    wait_for_status(page, lambda: page.click("#example-button"), "opened the example")
    wait_for_status(page, lambda: page.click("#render-button"), "rendered 741×500")
