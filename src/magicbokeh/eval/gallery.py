"""``gallery.html``: a static page showing input | output | target for every image, with zoomed
crops of the focus region and of the background, openable offline (plain HTML and JPEGs in
``gallery/``, no scripts).

Crops are square windows of a sixth of the shorter side (24–160 px) at the output's
resolution, shown enlarged with square pixels. The focus crop is the window most covered by
the focus mask (else the one nearest the focal plane, else the centre); the background crop is
the window farthest from the focal plane (else the one least covered by the mask, else the
top-left corner). The input is shown upsampled to the output size (bicubic).
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np

from magicbokeh.eval.engines import Item, Result, resize_rgb
from magicbokeh.eval.scoring import METRICS
from magicbokeh.focus import resize_mask
from magicbokeh.io.atomic import atomic_write
from magicbokeh.io.images import save_image

__all__ = ["GALLERY_DIR", "GALLERY_FILE", "crop_boxes", "finish", "previews"]

GALLERY_DIR, GALLERY_FILE = "gallery", "gallery.html"
PREVIEW_SIDE = 640
VIEWS = ("input", "output", "target")


def _window_means(values: np.ndarray, size: int, step: int) -> tuple[np.ndarray, list, list]:
    """Mean of ``values`` in every ``size``² window on a grid of ``step``."""
    height, width = values.shape
    integral = np.pad(values.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys = list(range(0, height - size + 1, step)) or [0]
    xs = list(range(0, width - size + 1, step)) or [0]
    y0, x0 = np.array(ys)[:, None], np.array(xs)[None, :]
    y1, x1 = np.minimum(y0 + size, height), np.minimum(x0 + size, width)
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return sums / size**2, ys, xs


def crop_boxes(
    size: tuple[int, int],
    disparity: np.ndarray | None,
    focus_disparity: float | None,
    mask: np.ndarray | None,
) -> dict[str, list[int]]:
    """``{"focus": [x, y, side, side], "background": [...]}`` in output pixels."""
    height, width = size
    side = int(np.clip(min(height, width) // 6, min(24, height, width), 160))
    step = max(1, side // 2)

    def pick(values: np.ndarray, largest: bool) -> list[int]:
        means, ys, xs = _window_means(values, side, step)
        index = np.unravel_index(np.argmax(means) if largest else np.argmin(means), means.shape)
        return [xs[index[1]], ys[index[0]], side, side]

    distance = None
    if disparity is not None and focus_disparity is not None:
        distance = np.abs(resize_rgb(disparity, size, "bilinear") - focus_disparity)
    selected = None if mask is None else resize_mask(mask, height, width)
    if selected is not None:
        focus = pick(selected, largest=True)
    elif distance is not None:
        focus = pick(distance, largest=False)
    else:
        focus = [(width - side) // 2, (height - side) // 2, side, side]
    if distance is not None:
        background = pick(distance, largest=True)
    elif selected is not None:
        background = pick(selected, largest=False)
    else:
        background = [0, 0, side, side]
    return {"focus": focus, "background": background}


def _preview(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    factor = min(1.0, PREVIEW_SIDE / max(height, width))
    return resize_rgb(rgb, (max(1, round(height * factor)), max(1, round(width * factor))), "area")


def picture_name(stem: str, view: str, crop: str | None = None) -> str:
    """File name of one gallery picture."""
    return f"{stem}.{crop}.{view}.jpg" if crop else f"{stem}.{view}.jpg"


def previews(
    state: Path, stem: str, item: Item, result: Result, output: np.ndarray, target: np.ndarray
) -> dict[str, list[int]]:
    """Write the gallery pictures of one image into ``state/gallery``; returns the crop boxes."""
    folder = state / GALLERY_DIR
    size = output.shape[:2]
    shown_input = resize_rgb(item.image, size, "bicubic")
    mask = item.focus.mask if item.focus.kind == "mask" else None
    boxes = crop_boxes(size, result.disparity, result.info.get("focus_disparity"), mask)
    for view, rgb in zip(VIEWS, (shown_input, output, target), strict=True):
        save_image(folder / picture_name(stem, view), _preview(rgb), overwrite=True, quality=90)
        for crop, (x, y, w, h) in boxes.items():
            save_image(
                folder / picture_name(stem, view, crop),
                rgb[y : y + h, x : x + w],
                overwrite=True,
                quality=95,
            )
    return boxes


def _src(stem: str, view: str, crop: str | None = None) -> str:
    return f"{GALLERY_DIR}/{quote(picture_name(stem, view, crop))}"


def _value(value: object, decimals: int) -> str:
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return html.escape(str(value))


def _page(result: dict) -> str:
    settings = result["settings"]
    title = f"magicbokeh eval {result['protocol']}: {settings.get('method_label', '')}"
    rows = []
    for record in result["images"]:
        stem = record["stem"]
        metrics = ", ".join(
            f"{METRICS[n].label} {_value(record.get(n), METRICS[n].decimals)}"
            for n in result["metrics"]
            if isinstance(record.get(n), float)
        )
        cells = "".join(
            f'<figure><img src="{_src(stem, v)}" alt="{v}"><figcaption>{v}</figcaption></figure>'
            for v in VIEWS
        )
        crops = ""
        for crop in ("focus", "background"):
            x, y, w, h = record["crops"][crop]
            images = "".join(
                f'<figure><img class="crop" src="{_src(stem, v, crop)}" alt="{crop} {v}">'
                f"<figcaption>{crop} {v}</figcaption></figure>"
                for v in VIEWS
            )
            crops += f'<div class="row" title="{crop}: x {x}, y {y}, {w}×{h} px">{images}</div>'
        rows.append(
            f'<section id="{html.escape(stem)}"><h2>{html.escape(stem)}</h2>'
            f'<p>{metrics}</p><div class="row">{cells}</div>{crops}</section>'
        )
    means = ", ".join(
        f"{METRICS[n].label} {_value(result['means'].get(n), METRICS[n].decimals)}"
        for n in result["metrics"]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:1em;background:#fafafa}"
        ".row{display:flex;gap:8px;flex-wrap:wrap}figure{margin:0}"
        "img{width:min(420px,32vw);display:block}"
        "img.crop{width:min(240px,32vw);image-rendering:pixelated}"
        "figcaption{font-size:12px;color:#555}section{margin-bottom:2em}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(result['images'])} images; means: {means}</p>"
        f"<p>data: {html.escape(str(settings.get('data')))}</p>"
        + "".join(rows)
        + "</body></html>\n"
    )


def finish(report_dir: Path, state: Path, result: dict) -> None:
    """Move the pictures into ``report_dir/gallery`` and write ``gallery.html``."""
    target = report_dir / GALLERY_DIR
    if target.exists():
        shutil.rmtree(target)
    (state / GALLERY_DIR).rename(target)
    with atomic_write(report_dir / GALLERY_FILE, overwrite=True) as temporary:
        temporary.write_text(_page(result), encoding="utf-8")
