"""On-disk format of a synthesised bokeh dataset: per-sample PNGs, a JSONL manifest, a header.

Layout of a dataset folder ``OUT``::

    OUT/dataset.json        header: format, identity hash, builder settings, source lists
    OUT/manifest.jsonl      one JSON record per finished sample, appended line by line
    OUT/samples/000123_lq.png         degraded input, 8-bit sRGB, size×size
    OUT/samples/000123_hq.png         all-in-focus ground truth, 8-bit sRGB
    OUT/samples/000123_bokeh.png      bokeh ground truth, 8-bit sRGB
    OUT/samples/000123_disparity.png  disparity in [0, 1], 16-bit gray (code = round(d·65535))
    OUT/samples/000123_mask.png       focus mask, 8-bit gray (255 = in focus)

A sample is *done* when all five files exist and its manifest line is complete (ends with a
newline). Files are written atomically (temporary file, fsync, rename) before the manifest
line is appended (write, flush, fsync), so an interrupted run leaves at most unreferenced
complete files, which the next run overwrites. On resume an unterminated last line is cut
off, and records whose files have gone missing are dropped from the manifest, so every index
appears at most once. A lock file keeps two runs from writing to one folder at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.atomic import LOCK_NAME, atomic_write, folder_lock

FORMAT = "magicbokeh-synth"
FORMAT_VERSION = 1
HEADER_NAME = "dataset.json"
MANIFEST_NAME = "manifest.jsonl"
SAMPLES_DIR = "samples"
#: The files of one sample, in writing order.
SAMPLE_KINDS = ("lq", "hq", "bokeh", "disparity", "mask")
#: Header fields that may differ between runs of the same dataset.
MUTABLE_HEADER_KEYS = ("count", "created", "updated", "versions", "skipped", "inputs")

logger = logging.getLogger(__name__)


def sample_name(index: int, kind: str) -> str:
    """Path of one sample file relative to the dataset folder, e.g. ``samples/000123_lq.png``."""
    if kind not in SAMPLE_KINDS:
        raise MagicBokehError(f"unknown sample file kind {kind!r}; use one of {SAMPLE_KINDS}")
    return f"{SAMPLES_DIR}/{index:06d}_{kind}.png"


# ----------------------------------------------------------------------------------------
# Encoding and decoding


def encode_rgb(rgb: np.ndarray) -> bytes:
    """``H×W×3`` sRGB-encoded float in [0, 1] → 8-bit PNG bytes."""
    codes = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _encode(np.ascontiguousarray(codes[..., ::-1]))


def encode_mask(mask: np.ndarray) -> bytes:
    """``H×W`` mask in {0, 1} → 8-bit gray PNG bytes (0 or 255)."""
    return _encode(np.where(np.asarray(mask) > 0.5, 255, 0).astype(np.uint8))


def _encode(codes: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", codes)
    if not ok:
        raise MagicBokehError("could not encode a sample image as PNG")
    return encoded.tobytes()


def _read(path: Path) -> np.ndarray:
    codes = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if codes is None:
        raise MagicBokehError(
            f"sample file {path} is missing or damaged; re-run `magicbokeh synth` with the "
            "same arguments to rebuild it"
        )
    return codes


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """A sample's colour image: ``H×W×3`` float32 sRGB-encoded in [0, 1]."""
    codes = _read(Path(path))
    if codes.ndim != 3 or codes.shape[2] != 3:
        raise MagicBokehError(f"sample file {path} is not an RGB image")
    return codes[..., ::-1].astype(np.float32) / np.float32(np.iinfo(codes.dtype).max)


def read_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """A sample's disparity or mask: ``H×W`` float32 in [0, 1]."""
    codes = _read(Path(path))
    if codes.ndim != 2:
        raise MagicBokehError(f"sample file {path} is not a single-channel image")
    return codes.astype(np.float32) / np.float32(np.iinfo(codes.dtype).max)


def _io_error(path: Path, error: OSError) -> MagicBokehError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return MagicBokehError(
            f"no space left on the device while writing {path}; free some space and run the "
            "same command again: it resumes where it stopped"
        )
    reason = error.strerror or str(error) or type(error).__name__
    return MagicBokehError(
        f"cannot write {path} ({reason}); fix the folder and run the same command again to resume"
    )


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temporary file, fsync, rename)."""
    try:
        with atomic_write(path, overwrite=True) as temporary, open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise _io_error(path, error) from None


# ----------------------------------------------------------------------------------------
# The dataset folder


class DatasetStore:
    """A dataset folder (see the module docstring): header, manifest and sample files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.header_path = self.root / HEADER_NAME
        self.manifest_path = self.root / MANIFEST_NAME
        self.samples_dir = self.root / SAMPLES_DIR

    def path(self, index: int, kind: str) -> Path:
        """Absolute path of one sample file."""
        return self.root / sample_name(index, kind)

    def files(self, index: int) -> dict[str, str]:
        """``{kind: relative path}`` of one sample's files."""
        return {kind: sample_name(index, kind) for kind in SAMPLE_KINDS}

    # Header ------------------------------------------------------------------------------

    def read_header(self) -> dict | None:
        """The header, or None when the folder has none."""
        if not self.header_path.exists():
            return None
        try:
            header = json.loads(self.header_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MagicBokehError(
                f"{self.header_path} cannot be read ({error}); it is damaged: use a new -o folder"
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise MagicBokehError(
                f"{self.header_path} is not a {FORMAT} header; this folder holds something else: "
                "choose another -o folder"
            )
        return header

    def write_header(self, header: dict) -> None:
        """Write the header atomically (replacing any)."""
        write_file(self.header_path, (json.dumps(header, indent=2) + "\n").encode("utf-8"))

    def existing_header(self) -> dict | None:
        """The header of the dataset already in the folder, or None for a new or empty folder.

        Raises:
            MagicBokehError: the path is a file, or the folder holds files but no header.
        """
        if self.root.exists() and not self.root.is_dir():
            raise MagicBokehError(f"-o {self.root} is a file; give a folder for the dataset")
        existing = self.read_header()
        stray = existing is None and self.root.exists()
        if stray and any(p.name != LOCK_NAME for p in self.root.iterdir()):
            raise MagicBokehError(
                f"{self.root} is not empty and holds no {HEADER_NAME}; choose an empty or new "
                "-o folder"
            )
        return existing

    def prepare(self, header: dict) -> dict:
        """Create the dataset folder with ``header``, or check that it already holds the same
        dataset (same ``identity``) and update the header's mutable fields.

        Raises:
            MagicBokehError: the path is a file; the folder holds files but no header; or its
                header has another identity (other inputs or settings).
        """
        existing = self.existing_header()
        if existing is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.samples_dir.mkdir(exist_ok=True)
            self.write_header(header)
            return header
        if existing.get("identity") != header.get("identity"):
            raise MagicBokehError(
                f"{self.root} holds a different dataset ({differences(existing, header)} differ); "
                "use the original inputs and settings to resume it, or choose another -o folder"
            )
        merged = dict(existing)
        merged.update({k: header[k] for k in MUTABLE_HEADER_KEYS if k in header and k != "created"})
        if merged != existing:
            self.write_header(merged)
        self.samples_dir.mkdir(exist_ok=True)
        return merged

    # Manifest ----------------------------------------------------------------------------

    def read_manifest(self, *, repair: bool = False) -> dict[int, dict]:
        """Finished samples' records by index, from the complete lines of the manifest.

        An unterminated last line (a write cut short) is ignored, and with ``repair`` cut off
        the file. With ``repair``, records whose files are missing are removed from the
        manifest (rewritten atomically), so their samples are made again.

        Raises:
            MagicBokehError: a complete line in the middle is not a valid record.
        """
        if not self.manifest_path.exists():
            return {}
        data = self.manifest_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        records: dict[int, dict] = {}
        for number, line in enumerate(complete.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError):
                raise MagicBokehError(
                    f"{self.manifest_path} line {number} is not a sample record; the manifest "
                    "was edited or damaged: restore it or start a new -o folder"
                ) from None
            records.setdefault(index, record)
        if not repair:
            return records
        if len(complete) != len(data):
            logger.warning("%s: dropped an incomplete last line", self.manifest_path)
            try:
                with open(self.manifest_path, "r+b") as handle:
                    handle.truncate(len(complete))
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:
                raise _io_error(self.manifest_path, error) from None
        missing = [i for i in records if not self.has_files(i)]
        if missing:
            logger.warning(
                "%s: %d recorded samples have missing files and will be made again",
                self.root,
                len(missing),
            )
            for index in missing:
                del records[index]
            lines = "".join(json.dumps(records[i]) + "\n" for i in sorted(records))
            write_file(self.manifest_path, lines.encode("utf-8"))
        return records

    def has_files(self, index: int) -> bool:
        """Whether all files of sample ``index`` exist (non-empty)."""
        for kind in SAMPLE_KINDS:
            path = self.path(index, kind)
            if not path.is_file() or path.stat().st_size == 0:
                return False
        return True

    def write_sample(self, index: int, encoded: dict[str, bytes]) -> dict[str, str]:
        """Write one sample's encoded files (all of :data:`SAMPLE_KINDS`) atomically; on any
        failure remove the ones already written, so no partial sample stays behind. Returns
        ``{kind: relative path}``."""
        if set(encoded) != set(SAMPLE_KINDS):
            raise MagicBokehError(f"a sample needs the files {SAMPLE_KINDS}, got {sorted(encoded)}")
        written: list[Path] = []
        try:
            for kind in SAMPLE_KINDS:
                path = self.path(index, kind)
                write_file(path, encoded[kind])
                written.append(path)
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return self.files(index)

    @contextlib.contextmanager
    def appender(self) -> Iterator[ManifestAppender]:
        """Open the manifest for appending records (see :class:`ManifestAppender`)."""
        try:
            handle = open(self.manifest_path, "ab")  # noqa: SIM115 - closed by the with below
        except OSError as error:
            raise _io_error(self.manifest_path, error) from None
        with handle:
            yield ManifestAppender(handle, self.manifest_path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder (POSIX); refuse when another run holds it."""
        with folder_lock(
            self.root,
            f"another run is writing to {self.root}; wait for it to finish or choose another "
            "-o folder",
        ):
            yield


class ManifestAppender:
    """Appends one record per line: write, flush, fsync; a failed append is cut back off."""

    def __init__(self, handle, path: Path) -> None:
        self._handle = handle
        self._path = path

    def append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        start = self._handle.seek(0, os.SEEK_END)
        try:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            with contextlib.suppress(OSError):
                self._handle.truncate(start)
                self._handle.flush()
            raise _io_error(self._path, error) from None


def differences(old: dict, new: dict) -> str:
    """Comma-separated names of the header fields that differ (sources and settings)."""
    names = []
    for key in sorted(set(old) | set(new)):
        if key in MUTABLE_HEADER_KEYS or key == "identity":
            continue
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            inner = old[key], new[key]
            names += [
                f"{key}.{k}"
                for k in sorted(set(inner[0]) | set(inner[1]))
                if inner[0].get(k) != inner[1].get(k)
            ]
        elif old.get(key) != new.get(key):
            names.append(key)
    return ", ".join(names) or "identity"
