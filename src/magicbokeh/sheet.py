"""Contact sheets: a labelled grid of images, for demos and dataset previews."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 28
GAP = 6


def contact_sheet(
    images: Sequence[np.ndarray], labels: Sequence[str], *, columns: int = 3, cell_width: int = 480
) -> np.ndarray:
    """Grid of ``images`` (each ``H×W×3`` or ``H×W``, float in [0, 1]) with a label under each.

    Every image is resized to ``cell_width`` wide keeping its aspect ratio; rows take the height
    of their tallest cell. Returns ``H×W×3`` float32 in [0, 1] on a white background.
    """
    if len(images) != len(labels) or not images:
        raise ValueError("contact_sheet needs one label per image and at least one image")
    cells = [_cell(image, label, cell_width) for image, label in zip(images, labels, strict=True)]
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    row_heights = [max(c.shape[0] for c in row) for row in rows]
    columns = min(columns, len(cells))
    sheet = np.ones(
        (sum(row_heights) + GAP * (len(rows) + 1), columns * (cell_width + GAP) + GAP, 3),
        dtype=np.float32,
    )
    y = GAP
    for row, height in zip(rows, row_heights, strict=True):
        for j, cell in enumerate(row):
            x = GAP + j * (cell_width + GAP)
            sheet[y : y + cell.shape[0], x : x + cell_width] = cell
        y += height + GAP
    return sheet


def _cell(image: np.ndarray, label: str, width: int) -> np.ndarray:
    rgb = np.asarray(image, dtype=np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    height = max(1, round(rgb.shape[0] * width / rgb.shape[1]))
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    caption = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(caption)
    font = ImageFont.load_default(size=16)
    draw.text((4, 4), label, fill="black", font=font)
    text = np.asarray(caption, dtype=np.float32) / 255.0
    return np.concatenate([np.clip(resized, 0.0, 1.0), text], axis=0)
