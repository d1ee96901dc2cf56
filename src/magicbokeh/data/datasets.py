"""PyTorch datasets for training: SR pairs, synthetic bokeh pairs, real EBB!-style pairs.

All three are map-style :class:`torch.utils.data.Dataset` s with random access, usable with a
standard :class:`~torch.utils.data.DataLoader` (any ``num_workers``, default collate). Items
are dicts of ``float32`` tensors: colour images ``3×H×W`` sRGB-encoded in [0, 1], disparity
and masks ``1×H×W`` in [0, 1], scalars as 0-d tensors. Random augmentation is drawn per item
from ``SeedSequence([seed, epoch, index])``, so an item is the same in every worker and run;
call ``set_epoch`` to get fresh crops each epoch.

- :class:`SRPairs`: HR photos → ``{"lq", "hq"}``, random crop (512) and horizontal flip of
  the HR, then on-the-fly Real-ESRGAN degradation (scale 4, resized back, as in training).
- :class:`BokehPairs`: a ``magicbokeh synth`` folder → ``{"lq", "hq", "bokeh", "disparity",
  "mask", "K", "d_f", "index"}``.
- :class:`EBBPairs`: real pairs in the EBB! layout (``original/`` all-in-focus and ``bokeh/``
  with matching names, optional ``disparity/``) → ``{"hq", "bokeh", ["disparity"], "name"}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from magicbokeh.data.store import HEADER_NAME, DatasetStore, read_gray, read_rgb
from magicbokeh.data.synth import IMAGE_SUFFIXES
from magicbokeh.degrade.pipeline import DegradationConfig, degrade
from magicbokeh.errors import MagicBokehError
from magicbokeh.io.depth_files import DEPTH_READ_EXTENSIONS, load_depth, match_depth_to_image
from magicbokeh.io.images import load_image

logger = logging.getLogger(__name__)

#: Sub-folder names of the EBB! layout (first match wins).
EBB_AIF_DIRS = ("original", "all_in_focus", "aif")
EBB_BOKEH_DIRS = ("bokeh",)
EBB_DISPARITY_DIRS = ("disparity", "depth")


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator of one item's random choices."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


def random_window(
    rng: np.random.Generator, height: int, width: int, crop: int | None
) -> tuple[int, int, int, int]:
    """A random ``crop×crop`` window ``(y, x, h, w)`` inside ``height×width`` (the whole image
    when ``crop`` is None)."""
    if crop is None:
        return 0, 0, height, width
    if crop > height or crop > width:
        raise MagicBokehError(f"cannot crop {crop}×{crop} px from a {width}×{height} image")
    y = int(rng.integers(height - crop + 1))
    x = int(rng.integers(width - crop + 1))
    return y, x, crop, crop


def _chw(array: np.ndarray) -> torch.Tensor:
    values = np.ascontiguousarray(array, dtype=np.float32)
    values = values[None] if values.ndim == 2 else values.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(values))


def _crop_flip(
    arrays: dict[str, np.ndarray], window: tuple[int, int, int, int], flip: bool
) -> dict[str, torch.Tensor]:
    y, x, h, w = window
    out = {}
    for key, array in arrays.items():
        part = array[y : y + h, x : x + w]
        out[key] = _chw(part[:, ::-1] if flip else part)
    return out


def collect_images(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """Image files from a folder (recursive, sorted), a ``.txt`` list (one path per line,
    relative paths taken from the list's folder; blank and ``#`` lines ignored), an image
    file, or a sequence of any of these.

    Raises:
        MagicBokehError: a path that does not exist, or no images at all.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file() and path.suffix.lower() == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                name = line.strip()
                if name and not name.startswith("#"):
                    entry = Path(name).expanduser()
                    files.append(entry if entry.is_absolute() else path.parent / entry)
        elif path.is_file():
            files.append(path)
        else:
            raise MagicBokehError(f"{path} does not exist; give image folders, files or .txt lists")
    if not files:
        raise MagicBokehError(f"no images found in {', '.join(map(str, items))}")
    return files


class SRPairs(Dataset):
    """Super-resolution pairs made on the fly from HR photos.

    Per item: load the photo (sRGB), enlarge it (bicubic) if its shorter side is below
    ``crop``, take a random ``crop×crop`` window, flip it left-right with probability 0.5
    (``flip``), and degrade it with a generator seeded per item (``scale``, resized back to
    ``crop×crop`` as MagicBokeh's SR training does). Returns ``{"lq", "hq"}`` (``3×crop×crop``
    sRGB in [0, 1]) and ``"index"``; with ``degrade=False`` only ``{"hq", "index"}``, for
    training loops that degrade whole batches on the training device. A file that cannot be
    read is logged and replaced by the next readable one, so one bad file does not stop a long
    training run.
    """

    def __init__(
        self,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        crop: int = 512,
        flip: bool = True,
        scale: int = 4,
        seed: int = 0,
        config: DegradationConfig | None = None,
        degrade: bool = True,
    ) -> None:
        self.files = collect_images(sources)
        self.crop, self.flip, self.scale, self.seed = crop, flip, scale, seed
        self.degrade = degrade
        self.config = config or DegradationConfig()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random crops, flips and degradations of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> np.ndarray:
        for step in range(len(self.files)):
            path = self.files[(index + step) % len(self.files)]
            try:
                return load_image(path).rgb
            except MagicBokehError as error:
                logger.warning("SRPairs: skipping %s: %s", path, error)
        raise MagicBokehError("SRPairs: none of the images can be read")

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rgb = self._load(index)
        height, width = rgb.shape[:2]
        if min(height, width) < self.crop:
            factor = self.crop / min(height, width)
            size = (max(self.crop, round(width * factor)), max(self.crop, round(height * factor)))
            rgb = np.clip(cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
        rng = item_rng(self.seed, self.epoch, index)
        window = random_window(rng, rgb.shape[0], rgb.shape[1], self.crop)
        flip = self.flip and bool(rng.uniform() < 0.5)
        hq = _crop_flip({"hq": rgb}, window, flip)["hq"]
        if not self.degrade:
            return {"hq": hq, "index": index}
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63)))
        lq = degrade(
            hq[None], generator=generator, scale=self.scale, resize_back=True, config=self.config
        )[0]
        return {"lq": lq, "hq": hq, "index": index}


class BokehPairs(Dataset):
    """Samples of a ``magicbokeh synth`` dataset folder (finished samples, sorted by index).

    Returns ``{"lq", "hq", "bokeh"}`` (``3×H×W`` sRGB in [0, 1]), ``"disparity"`` and
    ``"mask"`` (``1×H×W``, mask 1 = in focus), ``"K"`` and ``"d_f"`` (0-d float32) and
    ``"index"``. Optional ``crop`` (random window, same for all maps; K stays valid because it
    is in pixels) and ``flip`` (left-right, valid for the symmetric circular aperture).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        self.store = DatasetStore(root)
        if self.store.read_header() is None:
            raise MagicBokehError(
                f"{self.store.root} holds no {HEADER_NAME}; give a folder made by magicbokeh synth"
            )
        records = self.store.read_manifest()
        if not records:
            raise MagicBokehError(f"{self.store.root} holds no finished samples yet")
        self.indices = sorted(records)
        self.records = records
        self.crop, self.flip, self.seed = crop, flip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random crops and flips of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        if not 0 <= position < len(self):
            raise IndexError(position)
        index = self.indices[position]
        record = self.records[index]
        files = {kind: self.store.root / name for kind, name in record["files"].items()}
        arrays = {
            "lq": read_rgb(files["lq"]),
            "hq": read_rgb(files["hq"]),
            "bokeh": read_rgb(files["bokeh"]),
            "disparity": read_gray(files["disparity"]),
            "mask": read_gray(files["mask"]),
        }
        rng = item_rng(self.seed, self.epoch, index)
        height, width = arrays["hq"].shape[:2]
        window = random_window(rng, height, width, self.crop)
        flip = self.flip and bool(rng.uniform() < 0.5)
        item: dict = _crop_flip(arrays, window, flip)
        item["K"] = torch.tensor(record["K"], dtype=torch.float32)
        item["d_f"] = torch.tensor(record["d_f"], dtype=torch.float32)
        item["index"] = index
        return item


def files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes`` (lower case, with dot), by stem.

    Hidden files and sub-folders are skipped. Raises MagicBokehError when two files share a
    stem (``a.png`` and ``a.jpg``).
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                raise MagicBokehError(
                    f"{folder} holds both {found[path.stem].name} and {path.name}; "
                    "keep one file per name"
                )
            found[path.stem] = path
    return found


def _subfolder(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


class EBBPairs(Dataset):
    """Real all-in-focus/bokeh pairs in the EBB! layout.

    Give ``root`` holding ``original/`` (or ``all_in_focus/``, ``aif/``) and ``bokeh/``
    (optionally ``disparity/`` or ``depth/``), or the folders directly with ``aif_dir``,
    ``bokeh_dir`` and ``disparity_dir``. Files pair up by name without extension
    (``original/12.jpg`` ↔ ``bokeh/12.jpg``); disparity files are any of
    :data:`~magicbokeh.io.depth_files.DEPTH_READ_EXTENSIONS`, larger = nearer, min-max
    normalised on load and resized to the image. Returns ``{"hq", "bokeh"}`` (``3×H×W`` sRGB
    in [0, 1]), ``"disparity"`` (``1×H×W``, only with a disparity folder) and ``"name"``;
    optional random ``crop`` and ``flip`` as in :class:`BokehPairs`.

    Raises:
        MagicBokehError: missing folders, no pairs, or names present on one side only.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        aif_dir: str | os.PathLike[str] | None = None,
        bokeh_dir: str | os.PathLike[str] | None = None,
        disparity_dir: str | os.PathLike[str] | None = None,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        base = Path(root).expanduser() if root is not None else None
        if base is not None and not base.is_dir():
            raise MagicBokehError(f"EBB folder {base} does not exist")
        aif = Path(aif_dir) if aif_dir else (base and _subfolder(base, EBB_AIF_DIRS))
        bokeh = Path(bokeh_dir) if bokeh_dir else (base and _subfolder(base, EBB_BOKEH_DIRS))
        disparity = (
            Path(disparity_dir)
            if disparity_dir
            else (base and _subfolder(base, EBB_DISPARITY_DIRS))
        )
        if not aif or not bokeh or not aif.is_dir() or not bokeh.is_dir():
            raise MagicBokehError(
                "EBBPairs needs an all-in-focus folder (original/) and a bokeh folder (bokeh/): "
                "give root=... holding them, or aif_dir=... and bokeh_dir=..."
            )
        if disparity is not None and not disparity.is_dir():
            raise MagicBokehError(f"disparity folder {disparity} does not exist")
        sharp, blurred = files_by_stem(aif, IMAGE_SUFFIXES), files_by_stem(bokeh, IMAGE_SUFFIXES)
        unpaired = sorted(set(sharp) ^ set(blurred))
        if unpaired:
            raise MagicBokehError(
                f"{len(unpaired)} names have no partner in {aif} / {bokeh} (first: "
                f"{unpaired[0]}); every all-in-focus image needs a bokeh image of the same name"
            )
        if not sharp:
            raise MagicBokehError(f"no image pairs found in {aif} and {bokeh}")
        self.names = sorted(sharp, key=natural_key)
        self.aif, self.bokeh = sharp, blurred
        self.disparity: dict[str, Path] | None = None
        if disparity is not None:
            maps = files_by_stem(disparity, DEPTH_READ_EXTENSIONS)
            missing = [n for n in self.names if n not in maps]
            if missing:
                raise MagicBokehError(
                    f"{len(missing)} pairs have no disparity file in {disparity} "
                    f"(first: {missing[0]})"
                )
            self.disparity = maps
        self.crop, self.flip, self.seed = crop, flip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random crops and flips of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, position: int) -> dict:
        if not 0 <= position < len(self):
            raise IndexError(position)
        name = self.names[position]
        arrays = {"hq": load_image(self.aif[name]).rgb, "bokeh": load_image(self.bokeh[name]).rgb}
        height, width = arrays["hq"].shape[:2]
        if arrays["bokeh"].shape != arrays["hq"].shape:
            raise MagicBokehError(
                f"pair {name}: the all-in-focus image is {width}×{height} but the bokeh image is "
                f"{arrays['bokeh'].shape[1]}×{arrays['bokeh'].shape[0]}; pairs must match"
            )
        if self.disparity is not None:
            source = f"disparity file {self.disparity[name]}"
            arrays["disparity"] = match_depth_to_image(
                load_depth(self.disparity[name]), height, width, source=source
            )
        rng = item_rng(self.seed, self.epoch, position)
        window = random_window(rng, height, width, self.crop)
        flip = self.flip and bool(rng.uniform() < 0.5)
        item: dict = _crop_flip(arrays, window, flip)
        item["name"] = name
        return item


def natural_key(name: str) -> tuple:
    """Sort key for file stems: numbers first, in numeric order (``2`` before ``10``, as EBB!
    names are), then the other names alphabetically."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
