"""Synthesise bokeh training samples: compose, ray-trace, degrade, write; resumable and parallel.

Each sample ``index`` of a dataset with base ``seed`` is a pure function of
``(seed, index)`` and the inputs: a numpy Generator seeded with ``SeedSequence([seed, index])``
draws the scene (:func:`magicbokeh.data.scene.sample_plan`) and the seeds of the ray-tracing
jitter and of the degradation. So a sample is the same whatever the number of workers, the
order of work, or how often the run was interrupted.

Per sample (``size×size``; colour images sRGB-encoded in [0, 1] on disk):

- ``hq``: the all-in-focus image, the layers composited in linear light (ray traced at K = 0);
- ``bokeh``: the ground truth, ray traced through a circular thin lens at the sample's K and
  ``d_f`` with ``rays`` aperture samples per pixel (stratified, jittered);
- ``disparity``: the visible disparity, layers alpha-composited, normalised to span [0, 1];
- ``mask``: :func:`magicbokeh.focus.focus_mask` of the disparity (1 = in focus);
- ``lq``: the stored (8-bit) ``hq`` degraded with the Real-ESRGAN second-order pipeline at
  scale 4 and resized back to ``size×size``.

Inputs: a folder of foregrounds (cut-outs with alpha mattes) and a folder of backgrounds,
searched recursively for image files. Rules: a foreground without a usable matte (no alpha
channel, fully opaque or fully transparent) is an error naming it: mattes are never invented.
A file that cannot be read is skipped, counted and logged. An empty folder is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from magicbokeh.data.scene import (
    Cutout,
    ScenePlan,
    SourceInfo,
    build_layers,
    describe_cutout,
    sample_plan,
)
from magicbokeh.data.store import (
    FORMAT,
    FORMAT_VERSION,
    DatasetStore,
    encode_mask,
    encode_rgb,
    read_gray,
    read_rgb,
)
from magicbokeh.degrade.pipeline import DegradationConfig, degrade, minimum_hr_size
from magicbokeh.errors import MagicBokehError
from magicbokeh.focus import focus_mask
from magicbokeh.io.depth_files import encode_disparity
from magicbokeh.io.images import READ_SUFFIXES, load_image, save_image
from magicbokeh.io.sidecar import package_versions
from magicbokeh.optics.color import linear_to_srgb
from magicbokeh.optics.raytrace import SceneLayer, raytrace
from magicbokeh.sheet import contact_sheet

IMAGE_SUFFIXES = READ_SUFFIXES
#: Alpha mattes whose every pixel is at least this opaque count as "no matte".
OPAQUE_ALPHA = 254.5 / 255.0
MAX_SIZE = 4096
#: Input folders with more files than this are scanned by the worker pool.
SCAN_POOL_FROM = 32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthSettings:
    """Builder settings that decide the samples (all part of the dataset identity).

    ``size``: output side in px; ``rays``: aperture samples per pixel of the bokeh ground
    truth; ``seed``: base seed; ``k_max``: K is drawn from U[0, k_max] (px per unit disparity);
    ``scale``: degradation factor (the LQ is resized back to ``size``); ``foregrounds``: cut-outs
    per scene.
    """

    size: int = 512
    rays: int = 256
    seed: int = 0
    k_max: float = 32.0
    scale: int = 4
    foregrounds: int = 2

    def check(self) -> None:
        """Raise :class:`MagicBokehError` for impossible settings."""
        smallest = max(32, minimum_hr_size(self.scale))
        if not smallest <= self.size <= MAX_SIZE:
            raise MagicBokehError(
                f"--size must be between {smallest} and {MAX_SIZE}, not {self.size}"
            )
        if self.rays < 1:
            raise MagicBokehError(f"--samples (rays per pixel) must be at least 1, not {self.rays}")
        if not 0 <= self.k_max < float("inf"):
            raise MagicBokehError(f"k_max must be a finite number ≥ 0, not {self.k_max}")
        if self.foregrounds < 1:
            raise MagicBokehError("a scene needs at least one foreground")
        if not 0 <= self.seed < 2**63:
            raise MagicBokehError(f"--seed must be in [0, 2^63), not {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SourceFile:
    """A usable input image: its ``path``, content ``sha256`` and :class:`SourceInfo`."""

    path: Path
    sha256: str
    info: SourceInfo

    def describe(self) -> dict:
        info = asdict(self.info)
        info["box"] = list(info["box"]) if info["box"] is not None else None
        return {"sha256": self.sha256, **info}


@dataclass
class SourceSet:
    """The usable files of one input folder (sorted by relative name) and the skipped ones."""

    folder: Path
    files: list[SourceFile]
    skipped: list[dict] = field(default_factory=list)


@dataclass
class SynthReport:
    """Outcome of :func:`synthesize`: samples ``made`` now, ``existing`` before, ``failed``
    ``(index, reason)`` pairs, skipped input files and the dataset folder."""

    output: Path
    made: int
    existing: int
    failed: list[tuple[int, str]]
    skipped_sources: list[dict]


# ----------------------------------------------------------------------------------------
# Sources


def list_images(folder: str | os.PathLike[str], what: str) -> list[tuple[Path, str]]:
    """``(path, relative name)`` of the image files below ``folder``, sorted by name.

    Raises:
        MagicBokehError: the folder does not exist or holds no image files.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MagicBokehError(f"{what} folder {root} does not exist or is not a folder")
    found = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not found:
        raise MagicBokehError(
            f"{what} folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "give a folder of images"
        )
    return [(path, name) for name, path in found]


def _scan_one(job: tuple[Path, str, bool, dict | None]) -> tuple[str, object]:
    """Hash and check one file; returns ``("ok", SourceFile)``, ``("skip", reason)`` or
    ``("nomatte", reason)``."""
    path, name, cutout, known = job
    try:
        digest = _sha256(path)
    except OSError as error:
        return "skip", f"cannot be read ({error.strerror or error})"
    if known is not None and known.get("sha256") == digest:
        box = known.get("box")
        info = SourceInfo(
            name,
            int(known["width"]),
            int(known["height"]),
            tuple(box) if box is not None else None,
            bool(known.get("bottom_cut", False)),
        )
        return "ok", SourceFile(path, digest, info)
    try:
        image = load_image(path)
    except (MagicBokehError, OSError) as error:
        return "skip", str(error)
    if not cutout:
        return "ok", SourceFile(path, digest, SourceInfo(name, image.width, image.height))
    alpha = image.alpha
    if alpha is None:
        return "nomatte", "has no alpha channel"
    if float(alpha.min()) >= OPAQUE_ALPHA:
        return "nomatte", "has an alpha channel that is opaque everywhere"
    try:
        info = describe_cutout(name, alpha)
    except MagicBokehError:
        return "nomatte", "has an alpha channel that is transparent everywhere"
    return "ok", SourceFile(path, digest, info)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_sources(
    folder: str | os.PathLike[str],
    *,
    cutouts: bool,
    known: dict[str, dict] | None = None,
    mapper: Callable[[Callable, Iterable], Iterable] = map,
) -> SourceSet:
    """Hash and check every image below ``folder``.

    ``cutouts``: the files are foregrounds and need an alpha matte. ``known``: file records
    from an earlier header by name (``sha256``, size, box); a file with the same content is not
    decoded again. ``mapper``: a ``map``-like callable (e.g. a pool's ``imap``) to spread the
    work. Unreadable files are skipped (logged, listed in ``skipped``).

    Raises:
        MagicBokehError: no images; foregrounds without a usable matte (named); no file
            readable.
    """
    what = "foreground" if cutouts else "background"
    listed = list_images(folder, what)
    known = known or {}
    jobs = [(path, name, cutouts, known.get(name)) for path, name in listed]
    files, skipped, no_matte = [], [], []
    for (path, _), (status, value) in zip(listed, mapper(_scan_one, jobs), strict=True):
        if status == "ok":
            files.append(value)
        elif status == "nomatte":
            no_matte.append(f"{path} {value}")
        else:
            skipped.append({"file": str(path), "reason": str(value)})
            logger.warning("skipped %s file %s: %s", what, path, value)
    if no_matte:
        more = f" (and {len(no_matte) - 1} more)" if len(no_matte) > 1 else ""
        raise MagicBokehError(
            f"foreground {no_matte[0]}{more}; foregrounds must be cut-outs with an alpha matte "
            "(RGBA PNG/TIFF/WebP): add the matte or remove the file"
        )
    if not files:
        raise MagicBokehError(
            f"none of the {len(listed)} {what} images in {folder} could be read "
            f"(first: {skipped[0]['reason']})"
        )
    return SourceSet(Path(folder).expanduser(), files, skipped)


# ----------------------------------------------------------------------------------------
# One sample


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The Generator that draws everything random about sample ``index``."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


@lru_cache(maxsize=16)
def _load_cutout(path: Path) -> Cutout:
    image = load_image(path)
    if image.alpha is None:
        raise MagicBokehError(f"foreground {path} has no alpha matte any more")
    return Cutout(image.rgb, image.alpha)


@lru_cache(maxsize=2)
def _load_background(path: Path) -> np.ndarray:
    return load_image(path).rgb


@dataclass
class Sample:
    """One rendered sample: colour images ``H×W×3`` sRGB in [0, 1] (``lq``, ``hq``,
    ``bokeh``), ``disparity`` and ``mask`` ``H×W`` in [0, 1], and its manifest ``record``."""

    lq: np.ndarray
    hq: np.ndarray
    bokeh: np.ndarray
    disparity: np.ndarray
    mask: np.ndarray
    record: dict

    def encoded(self) -> dict[str, bytes]:
        """PNG bytes per file kind (see :mod:`magicbokeh.data.store`)."""
        return {
            "lq": encode_rgb(self.lq),
            "hq": encode_rgb(self.hq),
            "bokeh": encode_rgb(self.bokeh),
            "disparity": encode_disparity(self.disparity),
            "mask": encode_mask(self.mask),
        }


def _quantized_srgb(linear: torch.Tensor) -> torch.Tensor:
    return (linear_to_srgb(linear.clamp(0.0, 1.0)) * 255.0).round() / 255.0


def render_sample(
    index: int,
    settings: SynthSettings,
    backgrounds: Sequence[SourceFile],
    foregrounds: Sequence[SourceFile],
    config: DegradationConfig | None = None,
    device: str = "cpu",
) -> Sample:
    """Make sample ``index`` (a pure function of the settings, the sources, ``index`` and the
    device type: random draws on a GPU differ from those on the CPU).

    Raises:
        MagicBokehError: a source cannot be decoded any more.
    """
    rng = sample_rng(settings.seed, index)
    plan = sample_plan(
        rng,
        settings.size,
        [s.info for s in backgrounds],
        [s.info for s in foregrounds],
        k_max=settings.k_max,
        count=settings.foregrounds,
    )
    render_seed, degrade_seed = (int(v) for v in rng.integers(0, 2**63, size=2))
    by_name_bg = {s.info.name: s for s in backgrounds}
    by_name_fg = {s.info.name: s for s in foregrounds}
    background = _load_background(by_name_bg[plan.background.name].path)
    cutouts = [_load_cutout(by_name_fg[f.name].path) for f in plan.foregrounds]
    sample = render_plan(
        plan,
        background,
        cutouts,
        rays=settings.rays,
        scale=settings.scale,
        config=config,
        render_seed=render_seed,
        degrade_seed=degrade_seed,
        device=device,
    )
    sample.record = {"index": index, "seed": settings.seed, **sample.record}
    return sample


def render_plan(
    plan: ScenePlan,
    background: np.ndarray,
    cutouts: Sequence[Cutout],
    *,
    rays: int,
    render_seed: int,
    degrade_seed: int,
    scale: int = 4,
    config: DegradationConfig | None = None,
    device: str = "cpu",
) -> Sample:
    """Render one planned scene (see the module docstring for the five images).

    ``background``: the background source, ``H×W×3`` sRGB in [0, 1]; ``cutouts``: one per
    planned foreground; ``rays``: aperture samples per pixel; ``render_seed`` and
    ``degrade_seed`` seed the ray jitter and the degradation. The record holds every
    parameter except the sample's index and base seed. ``device`` runs the ray tracing there.
    """
    scene = build_layers(plan, background, cutouts)
    layers = [
        SceneLayer(layer.rgba.to(device), layer.disparity.to(device)) for layer in scene.layers
    ]
    with torch.no_grad():
        sharp = raytrace(layers, scene.focus_disparity, 0.0)
        blurred = raytrace(
            layers,
            scene.focus_disparity,
            plan.aperture,
            samples=rays,
            generator=torch.Generator(device).manual_seed(render_seed),
        )
        hq = _quantized_srgb(sharp).cpu()
        bokeh = _quantized_srgb(blurred).cpu()
        lq, params = degrade(
            hq,
            generator=torch.Generator().manual_seed(degrade_seed),
            scale=scale,
            resize_back=True,
            return_params=True,
            config=config,
        )
        mask = focus_mask(scene.disparity, scene.focus_disparity, plan.aperture)
    offset, normalization = scene.normalization
    record = {
        "render_seed": render_seed,
        "degrade_seed": degrade_seed,
        "K": plan.aperture,
        "d_f": scene.focus_disparity,
        "focus": {"target": plan.focus_target, "point": list(scene.focus_point)},
        "background": plan.background.name,
        "foregrounds": [f.name for f in plan.foregrounds],
        "disparities": {
            "background": [
                float(scene.layers[0].disparity.min()),
                float(scene.layers[0].disparity.max()),
            ],
            "foregrounds": [float(layer.disparity[0, 0, 0, 0]) for layer in scene.layers[1:]],
            "normalization": {"offset": offset, "scale": normalization},
        },
        "in_focus_fraction": float(mask.mean()),
        "rays": rays,
        "device": torch.device(device).type,
        "plan": plan.to_dict(),
        "degradation": params[0],
    }
    return Sample(
        lq=_image(lq),
        hq=_image(hq),
        bokeh=_image(bokeh),
        disparity=scene.disparity[0, 0].numpy(),
        mask=mask[0, 0].numpy(),
        record=record,
    )


def _image(tensor: torch.Tensor) -> np.ndarray:
    return tensor[0].permute(1, 2, 0).contiguous().numpy()


# ----------------------------------------------------------------------------------------
# Workers


@dataclass(frozen=True)
class _Job:
    settings: SynthSettings
    backgrounds: tuple[SourceFile, ...]
    foregrounds: tuple[SourceFile, ...]
    root: Path
    device: str = "cpu"


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job | None) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _init_child(job: _Job | None) -> None:
    """Worker-process start: one thread each, and Ctrl-C is left to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _init_worker(job)


def _make_and_write(index: int) -> tuple[int, dict | None, str | None]:
    """Render and write sample ``index`` with the worker's job; returns ``(index, record,
    None)`` or ``(index, None, reason)`` when a source could not be read."""
    job = _WORKER_JOB
    if job is None:
        raise RuntimeError("worker has no job")
    try:
        sample = render_sample(
            index, job.settings, job.backgrounds, job.foregrounds, device=job.device
        )
    except MagicBokehError as error:
        return index, None, str(error)
    files = DatasetStore(job.root).write_sample(index, sample.encoded())
    return index, {**sample.record, "files": files}, None


# ----------------------------------------------------------------------------------------
# The whole run


def identity(settings: SynthSettings, foregrounds: SourceSet, backgrounds: SourceSet) -> str:
    """Hash of everything that decides the samples: format, settings, degradation settings,
    and the names and contents of the usable sources."""
    payload = {
        "format": [FORMAT, FORMAT_VERSION],
        "settings": settings.to_dict(),
        "degradation": DegradationConfig().to_dict(),
        "foregrounds": [[s.info.name, s.sha256] for s in foregrounds.files],
        "backgrounds": [[s.info.name, s.sha256] for s in backgrounds.files],
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _header(
    settings: SynthSettings, count: int, foregrounds: SourceSet, backgrounds: SourceSet
) -> dict:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity": identity(settings, foregrounds, backgrounds),
        "settings": {**settings.to_dict(), "aperture_shape": "circle"},
        "degradation": DegradationConfig().to_dict(),
        "sources": {
            "foregrounds": {s.info.name: s.describe() for s in foregrounds.files},
            "backgrounds": {s.info.name: s.describe() for s in backgrounds.files},
        },
        "inputs": {"foregrounds": str(foregrounds.folder), "backgrounds": str(backgrounds.folder)},
        "skipped": foregrounds.skipped + backgrounds.skipped,
        "count": count,
        "created": now,
        "updated": now,
        "versions": package_versions(),
    }


def _check_output_early(store: DatasetStore, settings: SynthSettings) -> dict | None:
    """Refuse a wrong output folder before scanning the inputs; return its header, if any."""
    header = store.existing_header()
    if header is None:
        return None
    wanted = {**settings.to_dict(), "aperture_shape": "circle"}
    if header.get("settings") != wanted:
        old = header.get("settings") or {}
        changed = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
        raise MagicBokehError(
            f"{store.root} holds a dataset built with other settings ({', '.join(changed)}); "
            "use the same settings to resume it, or choose another -o folder"
        )
    return header


def synthesize(
    foregrounds: str | os.PathLike[str],
    backgrounds: str | os.PathLike[str],
    output: str | os.PathLike[str],
    count: int,
    settings: SynthSettings | None = None,
    *,
    workers: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> SynthReport:
    """Build (or resume) a dataset of ``count`` samples in ``output``.

    Samples ``0 .. count−1`` that are already done are kept; the rest are made with
    ``workers`` processes (1: in this process), written (see :mod:`magicbokeh.data.store`)
    and recorded. On a GPU ``device`` the ray tracing runs there, in this process. A sample
    whose source cannot be decoded any more is reported in ``failed`` and left for the next
    run; the run goes on.

    Raises:
        MagicBokehError: bad settings or inputs (see :func:`scan_sources`), an output folder
            that holds something else, or a write that failed (disk full): re-running the
            same call resumes.
    """
    settings = settings or SynthSettings()
    settings.check()
    if count < 1:
        raise MagicBokehError(f"-n must be at least 1, not {count}")
    if workers < 1:
        raise MagicBokehError(f"--workers must be at least 1, not {workers}")
    store = DatasetStore(output)
    old = _check_output_early(store, settings)
    known = old.get("sources", {}) if old else {}

    threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    pool = None
    try:
        listed = len(list_images(foregrounds, "foreground")) + len(
            list_images(backgrounds, "background")
        )
        if workers > 1 and listed > SCAN_POOL_FROM:
            context = multiprocessing.get_context("spawn")
            pool = context.Pool(workers, initializer=_init_child, initargs=(None,))
            mapper = pool.imap
        else:
            mapper = map
        fg = scan_sources(foregrounds, cutouts=True, known=known.get("foregrounds"), mapper=mapper)
        bg = scan_sources(backgrounds, cutouts=False, known=known.get("backgrounds"), mapper=mapper)
        header = _header(settings, count, fg, bg)
        with store.lock():
            header = store.prepare(header)
            done = store.read_manifest(repair=True)
            todo = [i for i in range(count) if i not in done]
            job = _Job(settings, tuple(bg.files), tuple(fg.files), store.root, device)
            if workers > 1 and len(todo) > 1 and torch.device(device).type == "cpu":
                if pool is not None:
                    pool.close()
                    pool.join()
                context = multiprocessing.get_context("spawn")
                pool = context.Pool(min(workers, len(todo)), _init_child, (job,))
                results = pool.imap_unordered(_make_and_write, todo)
            else:
                _init_worker(job)
                results = map(_make_and_write, todo)
            failed = _collect(store, results, count, len(done), progress)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _init_worker(None)
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
        _load_cutout.cache_clear()
        _load_background.cache_clear()
    made = len(todo) - len(failed)
    return SynthReport(store.root, made, len(done), failed, fg.skipped + bg.skipped)


def _collect(
    store: DatasetStore,
    results: Iterable[tuple[int, dict | None, str | None]],
    count: int,
    existing: int,
    progress: bool,
) -> list[tuple[int, str]]:
    failed: list[tuple[int, str]] = []
    bar = tqdm(total=count, initial=existing, desc="synth", unit="sample", disable=not progress)
    with logging_redirect_tqdm(), bar, store.appender() as manifest:
        for index, record, reason in results:
            if record is None:
                failed.append((index, str(reason)))
                logger.warning("sample %d not made: %s", index, reason)
            else:
                manifest.append(record)
            bar.update(1)
    return failed


# ----------------------------------------------------------------------------------------
# Preview


def preview_sheet(
    output: str | os.PathLike[str], indices: Sequence[int] | None = None, *, cell_width: int = 256
) -> np.ndarray:
    """Contact sheet of finished samples, one row each: LQ | all-in-focus | bokeh GT |
    disparity | focus mask. ``indices`` default to the first four done. Returns ``H×W×3``
    float32 in [0, 1]."""
    store = DatasetStore(output)
    records = store.read_manifest()
    if not records:
        raise MagicBokehError(f"{store.root} holds no finished samples to preview")
    chosen = sorted(records)[:4] if indices is None else list(indices)
    images, labels = [], []
    for index in chosen:
        if index not in records:
            raise MagicBokehError(f"sample {index} is not in {store.root}")
        record = records[index]
        target = record["focus"]["target"]
        images += [
            read_rgb(store.path(index, "lq")),
            read_rgb(store.path(index, "hq")),
            read_rgb(store.path(index, "bokeh")),
            read_gray(store.path(index, "disparity")),
            read_gray(store.path(index, "mask")),
        ]
        labels += [
            f"#{index} LQ",
            "all-in-focus",
            f"bokeh K={record['K']:.1f} {target}",
            f"disparity d_f={record['d_f']:.2f}",
            "focus mask",
        ]
    return contact_sheet(images, labels, columns=5, cell_width=cell_width)


def write_preview(
    output: str | os.PathLike[str],
    path: str | os.PathLike[str],
    count: int = 4,
    *,
    overwrite: bool = False,
) -> Path:
    """Write :func:`preview_sheet` of the first ``count`` finished samples to ``path``
    (an existing file only with ``overwrite``). Returns the path."""
    records = DatasetStore(output).read_manifest()
    sheet = preview_sheet(output, sorted(records)[:count])
    return save_image(path, sheet, overwrite=overwrite)
