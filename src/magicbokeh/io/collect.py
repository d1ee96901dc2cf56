"""Finding the photos named on a command line: files and folders → (file, relative name).

A file given directly is named by its file name and kept whatever its extension (the image
reader then says what is wrong with it). A folder contributes its photos (extensions
:data:`~magicbokeh.io.images.READ_SUFFIXES`, any case), named by their path below it; with
``recursive`` also those in sub-folders. Hidden files and folders (names starting with ".")
are passed over, and so is everything under the ``skip`` folders that lie inside an input
folder (an output folder there, so a re-run does not pick up its own results). The list is
sorted per input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from magicbokeh.errors import MagicBokehError
from magicbokeh.io.images import READ_SUFFIXES

__all__ = ["collect_images"]


def collect_images(
    inputs: Sequence[Path],
    *,
    recursive: bool = True,
    skip: Iterable[Path] = (),
) -> list[tuple[Path, PurePosixPath]]:
    """``(file, relative name)`` for every photo in ``inputs`` (see the module docstring).

    Raises:
        MagicBokehError: an input does not exist, or no photo was found at all.
    """
    skipped = [Path(folder).expanduser().resolve() for folder in skip]
    found: list[tuple[Path, PurePosixPath]] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            root = path.resolve()
            below = [folder for folder in skipped if folder != root and folder.is_relative_to(root)]
            candidates = path.rglob("*") if recursive else path.glob("*")
            files = sorted(
                f
                for f in candidates
                if f.is_file()
                and f.suffix.lower() in READ_SUFFIXES
                and not _hidden(f.relative_to(path))
                and not _inside(f.resolve(), below)
            )
            found += [(f, PurePosixPath(f.relative_to(path).as_posix())) for f in files]
        elif path.is_file():
            found.append((path, PurePosixPath(path.name)))
        else:
            raise MagicBokehError(f"input {path} does not exist; give image files or folders")
    if not found:
        raise MagicBokehError(
            f"no images found in {', '.join(map(str, inputs))}; "
            f"looked for {', '.join(READ_SUFFIXES)}"
            + ("" if recursive else " (add --recursive to search sub-folders)")
        )
    return found


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _inside(path: Path, folders: list[Path]) -> bool:
    return any(path.is_relative_to(folder) for folder in folders)
