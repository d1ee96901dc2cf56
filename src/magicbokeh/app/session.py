"""What the web app does, without the web page: open a photo, preview, render, save.

A :class:`Photo` holds everything about one opened photo that does not change while the user
refocuses it: the decoded image, its disparity (estimated once), the small copies used for
previews, and the focus disparities already resolved. Previews are rendered with the physical
engine at screen size (at most :data:`PREVIEW_PIXELS`) with K scaled by the preview's size
ratio, so a preview looks like the full result shrunk to the screen; while a slider is being
dragged, drafts at a quarter of that (:data:`DRAFT_PIXELS`) keep up with the hand. "Render"
runs :func:`magicbokeh.render` at full resolution with the chosen engine.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from magicbokeh.api import RenderResult, render, select_engine
from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import as_focus_spec, resolve_focus
from magicbokeh.io import LoadedImage, load_image, save_image, write_sidecar
from magicbokeh.optics import Aperture, render_physical
from magicbokeh.optics.render import DEFAULT_HIGHLIGHT

#: Largest preview, in pixels (about 1152×864 for a 4:3 photo), and largest draft.
PREVIEW_PIXELS = 1_000_000
DRAFT_PIXELS = 250_000
#: Largest output of a full render, as a multiple of the upload limit (the SR scale grows it).
OUTPUT_LIMIT_FACTOR = 4.0
DEMO_NAME = "motorcycle.png"


@dataclass(frozen=True)
class LensSettings:
    """One render request: focus point (input pixels, None = auto), K, aperture, engine."""

    focus: tuple[float, float] | None = None
    aperture: float = 16.0
    blades: int = 0
    rotation: float = 0.0
    highlight: float = DEFAULT_HIGHLIGHT
    cat_eye: float = 0.0
    engine: str = "physical"
    scale: float = 1.0

    def aperture_shape(self) -> Aperture:
        return Aperture(blades=int(self.blades), rotation=self.rotation, cat_eye=self.cat_eye)


@dataclass(frozen=True)
class Preview:
    """A small copy of a photo: ``scale`` = its size / full size (≤ 1), ``rgb`` ``1×3×h×w``
    sRGB and ``disparity`` ``1×1×h×w`` in [0, 1], float32 tensors."""

    scale: float
    rgb: torch.Tensor
    disparity: torch.Tensor

    @classmethod
    def of(cls, rgb: np.ndarray, disparity: np.ndarray, pixels: int) -> Preview:
        """``rgb`` (``H×W×3``) and ``disparity`` (``H×W``) area-shrunk to at most ``pixels``."""
        height, width = disparity.shape
        scale = min(1.0, math.sqrt(pixels / (height * width)))
        size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))

        def shrink(array: np.ndarray) -> torch.Tensor:
            if scale < 1.0:
                array = cv2.resize(array.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

        small = shrink(rgb).permute(2, 0, 1)[None].contiguous()
        return cls(scale, small, shrink(disparity)[None, None].contiguous())


@dataclass
class Photo:
    """An opened photo: full-resolution image and disparity, screen-size and draft copies.

    ``focus_cache`` maps a focus point (None = auto) to its focus disparity.
    """

    name: str
    image: LoadedImage
    disparity: np.ndarray
    depth_source: str
    depth_warning: str | None
    screen: Preview
    draft: Preview
    output_folder: Path = field(default_factory=lambda: new_output_folder())
    focus_cache: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the full-resolution photo."""
        return self.image.rgb.shape[1], self.image.rgb.shape[0]

    def focus_disparity(self, focus: tuple[float, float] | None) -> float:
        """``d_f`` of a focus point on the full-resolution map, or of auto focus (None).

        Auto focus is resolved on the screen-size map (a scene-level choice that takes
        seconds on a 12 MP map and fractions of one on the preview's), and full renders use
        that same ``d_f``, so the preview and the result agree.
        """
        if focus not in self.focus_cache:
            if focus is None:
                disparity = self.screen.disparity[0, 0].numpy()
                self.focus_cache[focus] = resolve_focus(disparity, as_focus_spec("auto"))
            else:
                self.focus_cache[focus] = resolve_focus(self.disparity, as_focus_spec(focus))
        return self.focus_cache[focus]

    def screen_point(self, focus: tuple[float, float]) -> tuple[int, int]:
        """A full-resolution point in screen-size preview pixels."""
        return round(focus[0] * self.screen.scale), round(focus[1] * self.screen.scale)

    def full_point(self, x: float, y: float) -> tuple[float, float]:
        """A screen-size preview pixel in full-resolution pixels (inside the photo)."""
        width, height = self.size
        return (
            float(min(max(round(x / self.screen.scale), 0), width - 1)),
            float(min(max(round(y / self.screen.scale), 0), height - 1)),
        )

    def close(self) -> None:
        """Delete this photo's rendered files."""
        shutil.rmtree(self.output_folder, ignore_errors=True)


def output_root() -> Path:
    """Folder under the system's temporary folder that holds the app's rendered files."""
    return Path(tempfile.gettempdir()) / "magicbokeh-app"


def new_output_folder() -> Path:
    """A fresh folder for one photo's renders, under :func:`output_root`."""
    root = output_root()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="photo-", dir=root))


def open_photo(path: str | Path, max_megapixels: float, depth: object = "auto") -> Photo:
    """Decode an uploaded photo (EXIF orientation applied), estimate its depth once.

    Raises:
        MagicBokehError: unreadable or unsupported file, or more than ``max_megapixels``.
    """
    from PIL import Image

    file = Path(path)
    name = file.name
    limit = int(max_megapixels * 1e6)
    try:
        with Image.open(file) as header:
            width, height = header.size
    except Exception:  # noqa: BLE001 - load_image below gives the precise message
        width = height = 0
    if width * height > limit:
        raise MagicBokehError(
            f"{name} has {width * height / 1e6:.1f} MP, over this app's limit of "
            f"{max_megapixels:g} MP: downscale it, or start the app with a higher --max-megapixels"
        )
    image = load_image(file, max_pixels=limit)
    from magicbokeh.depth.resolve import resolve_depth

    resolved = resolve_depth(depth, image.rgb, image_path=file)
    return make_photo(name, image, resolved.disparity, resolved.source, resolved.warning)


def demo_photo() -> Photo:
    """The bundled example: the Middlebury motorcycle with its ground-truth disparity."""
    from magicbokeh.commands.demo import demo_scene

    rgb, disparity = demo_scene()
    image = LoadedImage(rgb=rgb, alpha=None, bit_depth=8, icc_profile=None, source=None)
    return make_photo(
        DEMO_NAME, image, disparity, "skimage.data.stereo_motorcycle ground truth", None
    )


def make_photo(
    name: str, image: LoadedImage, disparity: np.ndarray, source: str, warning: str | None
) -> Photo:
    """A :class:`Photo` from a decoded image and its disparity (``H×W`` in [0, 1])."""
    screen = Preview.of(image.rgb, disparity, PREVIEW_PIXELS)
    draft = Preview.of(image.rgb, disparity, DRAFT_PIXELS)
    return Photo(name, image, disparity, source, warning, screen, draft)


def render_preview(photo: Photo, settings: LensSettings, *, draft: bool = False) -> np.ndarray:
    """Screen-size (or draft-size) preview with the physical engine: ``h×w×3`` sRGB in [0, 1].

    K is scaled from output pixels to preview pixels (preview size / output size), so the
    preview shows the full-resolution result's blur shrunk to the screen.
    """
    preview = photo.draft if draft else photo.screen
    with torch.inference_mode():
        out = render_physical(
            preview.rgb,
            preview.disparity,
            photo.focus_disparity(settings.focus),
            settings.aperture * preview.scale / settings.scale,
            aperture_shape=settings.aperture_shape(),
            highlight=settings.highlight,
        )
    return out[0].permute(1, 2, 0).numpy()


def render_full(
    photo: Photo, settings: LensSettings, *, model: str | Path | None, max_megapixels: float
) -> RenderResult:
    """The full-resolution result with the chosen engine (``progress`` shown through tqdm).

    The focus is the settings' point, or the auto focus disparity the preview used.
    """
    width, height = photo.size
    output_mp = width * height * settings.scale**2 / 1e6
    if output_mp > OUTPUT_LIMIT_FACTOR * max_megapixels:
        raise MagicBokehError(
            f"scale {settings.scale:g} would make a {output_mp:.0f} MP result, over this app's "
            f"limit of {OUTPUT_LIMIT_FACTOR * max_megapixels:g} MP: choose a smaller scale"
        )
    physical = select_engine(settings.engine, model)[0] == "physical"
    result = render(
        photo.image,
        depth=photo.disparity,
        focus=photo.focus_disparity(None) if settings.focus is None else settings.focus,
        aperture=settings.aperture,
        engine=settings.engine,
        aperture_shape=settings.aperture_shape() if physical else None,
        highlight=settings.highlight,
        scale=settings.scale,
        model=model,
        progress=True,
    )
    if settings.focus is None:
        result.settings["focus"]["chosen_by"] = "auto focus on the screen-size disparity map"
    return result


def save_result(photo: Photo, result: RenderResult) -> tuple[Path, Path]:
    """Write the result as PNG (16-bit for 16-bit photos) with its sidecar; both paths."""
    path = photo.output_folder / f"{Path(photo.name).stem}_bokeh.png"
    bit_depth = 16 if result.bit_depth == 16 else 8
    save_image(
        path,
        result.image,
        alpha=result.alpha,
        bit_depth=bit_depth,
        icc_profile=result.icc_profile,
        overwrite=True,
    )
    settings = dict(
        result.settings,
        input=photo.name,
        depth_source=photo.depth_source,
        output=path.name,
        output_bit_depth=bit_depth,
        made_with="magicbokeh app",
    )
    sidecar = write_sidecar(path, settings, overwrite=True)
    return path, sidecar


def learned_engine_status(model: str | Path | None) -> str | None:
    """None when the learned engine can run; otherwise why not, and what to do."""
    from magicbokeh.extras import MissingExtra, require

    try:
        require("diffusion", "the learned engine")
        select_engine("diffusion", model)
    except MissingExtra as error:
        return str(error)
    except MagicBokehError:
        return "its weights are not installed: run `magicbokeh download` or start with --model DIR"
    return None


def colour_disparity(disparity: torch.Tensor | np.ndarray) -> np.ndarray:
    """Disparity (``h×w`` or ``1×1×h×w``, [0, 1]) as an ``h×w×3`` uint8 inferno map, near bright."""
    d = np.asarray(disparity, dtype=np.float32).squeeze()
    grey = np.clip(np.rint(d * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def with_marker(preview: torch.Tensor | np.ndarray, point: tuple[int, int] | None) -> np.ndarray:
    """The preview photo (``1×3×h×w`` or ``h×w×3``, [0, 1]) as uint8 with a focus marker."""
    array = np.asarray(preview, dtype=np.float32)
    if array.ndim == 4:
        array = array[0].transpose(1, 2, 0)
    image = np.ascontiguousarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8))
    if point is not None:
        radius = max(6, round(0.025 * min(image.shape[:2])))
        thickness = max(2, radius // 5)
        cv2.circle(image, point, radius + thickness, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.circle(image, point, radius, (255, 220, 0), thickness, cv2.LINE_AA)
        cv2.drawMarker(image, point, (255, 220, 0), cv2.MARKER_CROSS, radius, thickness)
    return image
