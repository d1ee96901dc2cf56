"""Safe output paths: check early, write to a temporary file or folder, then move into place.

Every file magicbokeh writes goes through :func:`atomic_write`, and every folder (model
folders, conversions) through :func:`staged_folder`, so an interrupted or failed run never
leaves a partial file or half a folder under the final name, and existing outputs are only
replaced when the caller asked for it (``overwrite=True``, the CLI's ``--overwrite``).

Call :func:`ensure_writable` before expensive work (model loading, rendering) so that a bad
output path fails in a second rather than after minutes of compute.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from magicbokeh.errors import MagicBokehError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "atomic_write",
    "ensure_folder_writable",
    "ensure_writable",
    "folder_lock",
    "staged_folder",
]

LOCK_NAME = ".lock"


def _exists_message(path: Path) -> str:
    return f"{path} exists; pass --overwrite (overwrite=True) to replace it or choose another name"


def ensure_writable(
    path: str | os.PathLike[str], *, overwrite: bool, create_folders: bool = False
) -> Path:
    """Check that ``path`` can be written, before any expensive work.

    Args:
        path: the output file.
        overwrite: whether an existing file at ``path`` may be replaced.
        create_folders: create missing parent folders now; otherwise only check that the
            nearest existing ancestor is a folder we can write to (so a failed run leaves no
            empty folders behind).

    Returns:
        ``path`` as a :class:`~pathlib.Path` (with ``~`` expanded).

    Raises:
        MagicBokehError: ``path`` is a folder; it exists and ``overwrite`` is False; its
            parent folder cannot be created; or the folder does not let us create files
            (checked by actually creating and removing a temporary file).
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise MagicBokehError(
            f"{target} is a folder; give a file name such as {target / 'out.png'}"
        )
    if target.exists() and not overwrite:
        raise MagicBokehError(_exists_message(target))
    folder = target.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MagicBokehError(
            f"cannot create the output folder {folder} ({existing} is a file); choose a folder "
            "you can write to"
        )
    if create_folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MagicBokehError(
                f"cannot create the output folder {folder} ({reason}); choose a folder you can "
                "write to"
            ) from None
        existing = folder
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".magicbokeh-probe-")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MagicBokehError(
            f"cannot write to the folder {existing} ({reason}); choose a folder you can write to"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return target


def _default_file_mode() -> int:
    """The mode a plainly created file gets: 0o666 minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` when the block succeeds.

    The temporary file lives in the same folder (so the final move is an atomic rename on the
    same file system) and has the same suffix (so codecs that pick the format from the
    extension write the right format). It exists, empty, when the block starts; writers
    replace its contents.

    On success the file gets ordinary permissions (those of the file it replaces, else
    0o666 minus the umask) and is moved to ``path``; without ``overwrite`` the move refuses
    to replace a file that appeared meanwhile. On any exception, including one from the
    final check, the temporary file is removed and nothing is left behind.

    Raises:
        MagicBokehError: see :func:`ensure_writable`; also when ``path`` appeared during
            the write and ``overwrite`` is False.
    """
    target = ensure_writable(path, overwrite=overwrite, create_folders=True)
    handle, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix
    )
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = _default_file_mode()
        os.chmod(temporary, mode)
        if overwrite:
            os.replace(temporary, target)
        else:
            _move_without_replacing(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _move_without_replacing(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, failing if ``target`` exists (atomically where possible)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise MagicBokehError(_exists_message(target)) from None
    except OSError:
        # File systems without hard links: check, then rename (a narrow race remains).
        if target.exists():
            raise MagicBokehError(_exists_message(target)) from None
        os.replace(source, target)
    else:
        source.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], busy_message: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it; POSIX ``flock``).

    Creates the folder if needed. Raises MagicBokehError(``busy_message``) when another
    process holds the lock. On systems without ``flock`` no lock is taken.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise MagicBokehError(busy_message) from None
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_folder_writable(folder: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check, before any work, that a folder can be written at ``folder``; returns the path.

    Raises:
        MagicBokehError: ``folder`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise MagicBokehError(f"{path} is a file; give the path of a folder to write")
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise MagicBokehError(
            f"{path} already exists: pass --overwrite (overwrite=True) to replace it or "
            "choose another folder"
        )
    return path


@contextlib.contextmanager
def staged_folder(
    target: str | os.PathLike[str], *, overwrite: bool = False, merge: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; move its content into place on success.

    Two ways to land:

    - ``merge=False`` (a whole folder, e.g. a converted model): ``target`` must not exist, be
      an empty folder, or ``overwrite`` must be set; the staged folder is renamed to
      ``target`` (an existing one is replaced as a whole).
    - ``merge=True`` (``save_pretrained``): each staged entry replaces the entry of the same
      name in ``target``; other entries of ``target`` are kept, as savers in the Hugging Face
      ecosystem do. Only the renames happen in ``target``, never the writing.

    On any exception (including ``KeyboardInterrupt``) the temporary folder is removed and
    ``target`` is left as it was.

    Raises:
        MagicBokehError: ``target`` is a file, or (``merge=False``) a non-empty folder and
            ``overwrite`` is False.
    """
    folder = ensure_folder_writable(target, overwrite=overwrite or merge)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        if merge and folder.is_dir():
            for entry in sorted(staging.iterdir()):
                _replace(entry, folder / entry.name)
            staging.rmdir()
        else:
            _replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` (file or folder) is replaced."""
    if not target.is_dir() or target.is_symlink():
        os.replace(source, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(old / target.name, target)  # put the old one back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
