"""The web page: a Gradio Blocks app over :mod:`magicbokeh.app.session`.

Element ids (stable, for tests and scripts): ``input-image`` (upload), ``example-button``,
``focus-image`` (click to focus), ``depth-image``, ``engine``, ``aperture``, ``blades``,
``rotation``, ``highlight``, ``cat-eye``, ``scale``, ``render-button``, ``output-image``
(before/after slider), ``download`` (full-resolution PNG and its JSON sidecar), ``status``,
``preview-info``.

Every handler reports bad input as one line in ``status`` (and a toast), never a stack
trace; unexpected failures are logged on the server and reported the same way, so the page
keeps working. Previews share one worker and only the latest slider position is rendered;
while a slider moves, quarter-size drafts keep up with it and the screen-size preview follows
when it is let go. Full renders are queued, ``concurrency`` at a time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from magicbokeh.app.session import (
    LensSettings,
    Photo,
    colour_disparity,
    demo_photo,
    learned_engine_status,
    open_photo,
    render_full,
    render_preview,
    save_result,
    with_marker,
)
from magicbokeh.errors import MagicBokehError
from magicbokeh.io.images import READ_SUFFIXES
from magicbokeh.optics.render import DEFAULT_HIGHLIGHT

logger = logging.getLogger(__name__)

#: How long an idle session keeps its photo in memory (seconds).
SESSION_TTL_S = 1800
LEARNED = "diffusion"
CSS = """
#engine label:has(input[value="diffusion"]:disabled) { opacity: 0.45; pointer-events: none; }
#focus-image img { cursor: crosshair; }
"""


def build_app(
    *,
    engine: str = "auto",
    model: str | Path | None = None,
    max_megapixels: float = 40.0,
    concurrency: int = 1,
) -> gr.Blocks:
    """The app's page and handlers (not started: call ``launch`` on the result)."""
    unavailable = learned_engine_status(model)
    if engine == LEARNED and unavailable:
        raise MagicBokehError(f"the learned engine cannot run: {unavailable}")
    default_engine = engine if engine != "auto" else ("auto" if not unavailable else "physical")
    learned_label = "learned (MagicBokeh)" + (" — unavailable" if unavailable else "")
    engine_info = (
        f"learned engine unavailable: {unavailable}"
        if unavailable
        else "auto uses the learned engine (its weights are installed)"
    )

    with gr.Blocks(title="magicbokeh", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        photo_state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=_close)
        focus_state = gr.State(None)
        gr.Markdown(
            "# magicbokeh\nUpload a photo, **click the subject to focus there**, drag the "
            "aperture. Previews are screen-size (physical engine); **Render** makes the "
            "full-resolution result to download."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(
                    label="Photo (JPEG, PNG, TIFF, WebP, HEIC)",
                    file_types=list(READ_SUFFIXES),
                    type="filepath",
                    elem_id="input-image",
                )
                example = gr.Button(
                    "Example: motorcycle (real depth)", size="sm", elem_id="example-button"
                )
                engine_choice = gr.Radio(
                    [("auto", "auto"), ("physical", "physical"), (learned_label, LEARNED)],
                    value=default_engine,
                    label="Engine",
                    info=engine_info,
                    elem_id="engine",
                )
                aperture = gr.Slider(
                    0, 64, value=16, step=0.5, label="Aperture K",
                    info="blur radius in pixels per unit of disparity difference (0 = sharp)",
                    elem_id="aperture",
                )  # fmt: skip
                with gr.Accordion("Lens", open=False):
                    blades = gr.Slider(
                        0, 12, value=0, step=1, label="Blades", info="0 = round",
                        elem_id="blades",
                    )  # fmt: skip
                    rotation = gr.Slider(
                        0, 180, value=0, step=1, label="Blade rotation (°)", elem_id="rotation"
                    )
                    highlight = gr.Slider(
                        0, 2, value=DEFAULT_HIGHLIGHT, step=0.05, label="Highlight boost",
                        elem_id="highlight",
                    )  # fmt: skip
                    cat_eye = gr.Slider(
                        0, 1, value=0, step=0.05, label="Cat-eye", elem_id="cat-eye"
                    )
                    scale = gr.Slider(
                        1, 4, value=1, step=0.5, label="Scale (super-resolution)",
                        info="upsample first: learned SR with the learned engine, Lanczos "
                        "with the physical one",
                        elem_id="scale",
                    )  # fmt: skip
                render_button = gr.Button("Render", variant="primary", elem_id="render-button")
                status = gr.Textbox(
                    label="Status", interactive=False, lines=2, elem_id="status", value=""
                )
                download = gr.File(
                    label="Full-resolution result and its settings",
                    file_count="multiple",
                    interactive=False,
                    elem_id="download",
                )
            with gr.Column(scale=2):
                with gr.Row():
                    focus_image = _picture("Photo: click to focus", "focus-image")
                    depth_image = _picture("Disparity (bright = near)", "depth-image")
                output_image = gr.ImageSlider(
                    label="Before / after", type="numpy", elem_id="output-image"
                )
                preview_info = gr.Markdown("", elem_id="preview-info")

        lens = [aperture, blades, rotation, highlight, cat_eye, engine_choice, scale]
        opened = [photo_state, focus_state, focus_image, depth_image, output_image, download]

        def shown(photo: Photo, status_text: str) -> dict:
            return {
                photo_state: photo,
                focus_state: None,
                focus_image: with_marker(photo.screen.rgb, None),
                depth_image: colour_disparity(photo.screen.disparity),
                output_image: None,
                download: None,
                status: status_text,
            }

        @_reported(status, reset={upload: None})
        def on_upload(path: str | None) -> dict:
            if not path:
                return {status: gr.skip()}
            photo = open_photo(path, max_megapixels)
            width, height = photo.size
            lines = [f"opened {photo.name} ({width}×{height}), depth: {photo.depth_source}"]
            if photo.depth_warning:
                lines.append(f"warning: {photo.depth_warning}")
            return shown(photo, "\n".join(lines))

        @_reported(status)
        def on_example() -> dict:
            photo = demo_photo()
            return shown(photo, f"opened the example {photo.name} with its measured disparity")

        @_reported(status)
        def on_click(photo: Photo | None, evt: gr.SelectData) -> dict:
            if photo is None:
                raise MagicBokehError("open a photo first: upload one or pick the example")
            point = photo.full_point(*evt.index[:2])
            d_f = photo.focus_disparity(point)
            return {
                focus_state: point,
                focus_image: with_marker(photo.screen.rgb, photo.screen_point(point)),
                status: f"focus at ({point[0]:.0f}, {point[1]:.0f}), disparity {d_f:.3f}",
            }

        def previewer(draft: bool) -> Callable[..., dict]:
            @_reported(status)
            def on_preview(photo: Photo | None, focus: tuple | None, *values: object) -> dict:
                if photo is None:
                    return {status: gr.skip()}
                settings = _settings(focus, values)
                start = time.perf_counter()
                preview = render_preview(photo, settings, draft=draft)
                seconds = time.perf_counter() - start
                height, width = preview.shape[:2]
                kind = "draft" if draft else "preview"
                before = with_marker(photo.draft.rgb if draft else photo.screen.rgb, None)
                return {
                    output_image: (before, preview),
                    preview_info: f"{kind} {width}×{height} (physical engine) in {seconds:.2f} s;"
                    " **Render** for full resolution",
                }

            return on_preview

        @_reported(status)
        def on_render(
            photo: Photo | None,
            focus: tuple | None,
            aperture: float,
            blades: float,
            rotation: float,
            highlight: float,
            cat_eye: float,
            engine: str,
            scale: float,
            progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's API
        ) -> dict:
            if photo is None:
                raise MagicBokehError("open a photo first: upload one or pick the example")
            settings = _settings(
                focus, (aperture, blades, rotation, highlight, cat_eye, engine, scale)
            )
            if settings.engine == LEARNED and unavailable:
                raise MagicBokehError(f"the learned engine cannot run: {unavailable}")
            progress(0, desc="rendering")
            start = time.perf_counter()
            result = render_full(photo, settings, model=model, max_megapixels=max_megapixels)
            seconds = time.perf_counter() - start
            image_path, sidecar = save_result(photo, result)
            height, width = result.image.shape[:2]
            shrink = _shrink_to(photo.screen.rgb.shape[-1])
            notes = "".join(f"\nnote: {w}" for w in result.warnings if "depth" not in w)
            return {
                output_image: (with_marker(photo.screen.rgb, None), shrink(result.image)),
                download: [str(image_path), str(sidecar)],
                status: f"rendered {width}×{height} with the {result.engine} engine in "
                f"{seconds:.1f} s (K = {settings.aperture:g}, focus disparity "
                f"{result.focus_disparity:.3f}); download below{notes}",
            }

        preview_args = {
            "fn": previewer(draft=False),
            "inputs": [photo_state, focus_state, *lens],
            "outputs": [output_image, preview_info, status],
            "concurrency_id": "preview",
            "concurrency_limit": 1,
            "trigger_mode": "always_last",
            "show_progress": "hidden",
        }
        upload.upload(on_upload, [upload], [*opened, upload, status]).then(**preview_args)
        example.click(on_example, None, [*opened, status]).then(**preview_args)
        focus_image.select(on_click, [photo_state], [focus_state, focus_image, status]).then(
            **preview_args
        )
        draft_args = dict(preview_args, fn=previewer(draft=True))
        for control in (aperture, blades, rotation, highlight, cat_eye, scale):
            control.input(**draft_args)  # while dragging (and typed values): quick drafts
            control.release(**preview_args)  # let go: the screen-size preview
        render_button.click(
            on_render,
            [photo_state, focus_state, *lens],
            [output_image, download, status],
            concurrency_id="render",
            concurrency_limit=concurrency,
        )
        if unavailable:
            app.load(None, js=_DISABLE_LEARNED_JS)
    app.queue(default_concurrency_limit=1, max_size=64)
    return app


def serve(app: gr.Blocks, *, host: str, port: int, share: bool = False, block: bool = True) -> None:
    """Start the server (``block=False``: return once it is up, for tests and scripts)."""
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        show_error=False,
        state_session_capacity=16,
        ssr_mode=False,
        prevent_thread_lock=not block,
        css=CSS,
        footer_links=[],
    )


_DISABLE_LEARNED_JS = """() => {
  const disable = () => document
    .querySelectorAll('#engine input[value="diffusion"]')
    .forEach((input) => { input.disabled = true; });
  disable();
  new MutationObserver(disable).observe(document.body, { childList: true, subtree: true });
}"""


def _settings(focus: tuple | None, values: Sequence) -> LensSettings:
    """The values of the ``lens`` controls as a render request (fewer than 3 blades = round).

    ``values``: aperture K, blades, rotation (degrees), highlight, cat-eye, engine, scale.
    """
    aperture, blades, rotation, highlight, cat_eye, engine, scale = values
    return LensSettings(
        focus=None if focus is None else (float(focus[0]), float(focus[1])),
        aperture=float(aperture),
        blades=int(blades) if int(blades) >= 3 else 0,
        rotation=float(rotation),
        highlight=float(highlight),
        cat_eye=float(cat_eye),
        engine=str(engine),
        scale=float(scale),
    )


def _picture(label: str, elem_id: str) -> gr.Image:
    """A displayed (not uploadable) image."""
    return gr.Image(label=label, type="numpy", interactive=False, buttons=[], elem_id=elem_id)


def _shrink_to(width: int) -> Callable:
    import cv2
    import numpy as np

    def shrink(image: np.ndarray) -> np.ndarray:
        if image.shape[1] <= width:
            return image
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    return shrink


def _close(photo: Photo | None) -> None:
    if photo is not None:
        photo.close()


def _reported(
    status: gr.components.Component, reset: dict | None = None
) -> Callable[[Callable], Callable]:
    """Turn a handler's errors into a one-line message in ``status`` (and a toast).

    ``reset``: components to set on an error (e.g. clear a refused upload, so another photo
    can be dropped in).
    """

    def decorate(handler: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(handler)
        def guarded(*args: object, **kwargs: object) -> dict:
            try:
                return handler(*args, **kwargs)
            except MagicBokehError as error:
                message = f"error: {error}"
            except Exception as error:  # noqa: BLE001 - the page must keep working
                logger.exception("unexpected failure in the magicbokeh app")
                message = (
                    f"error: unexpected {type(error).__name__}: {error} "
                    "(details in the server log); the app keeps running"
                )
            gr.Warning(message.removeprefix("error: "))
            return {**(reset or {}), status: message}

        return guarded

    return decorate
