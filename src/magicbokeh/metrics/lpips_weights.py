"""The LPIPS weight files: where they come from, their pinned hashes, and installing them.

Each network needs two files, installed under ``<model home>/lpips/`` with their original
names:

- the ImageNet backbone, torchvision's checkpoint (``vgg16-397923af.pth``,
  ``alexnet-owt-7be5be79.pth``, from download.pytorch.org, BSD-3-Clause);
- the calibrated linear heads of the lpips package, ``v0.1/{vgg,alex}.pth``
  (github.com/richzhang/PerceptualSimilarity, BSD-2-Clause), stored as
  ``lpips-v0.1-{vgg,alex}.pth``.

Every file is checked against its pinned SHA-256 before it is moved into place. Sources can
be local files or folders (for example torchvision's cache ``~/.cache/torch/hub/checkpoints``
and an installed lpips package's ``lpips/weights/v0.1``), so an offline machine installs from
copies; otherwise the files are downloaded from the URLs below.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from magicbokeh.errors import MagicBokehError

__all__ = [
    "LPIPS_ASSETS",
    "LPIPS_DIR",
    "Asset",
    "install_lpips",
    "installed_files",
    "lpips_folder",
]

#: Sub-folder of the model home holding the LPIPS weights.
LPIPS_DIR = "lpips"

_HEADS_URL = (
    "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/"
    "082bb24f84c091ea94de2867d34c4544f68e0963/lpips/weights/v0.1/{net}.pth"
)


@dataclass(frozen=True)
class Asset:
    """One weight file: installed ``name``, the names it has elsewhere, URL and SHA-256."""

    name: str
    source_names: tuple[str, ...]
    url: str
    sha256: str


#: net → (backbone asset, heads asset).
LPIPS_ASSETS: dict[str, tuple[Asset, Asset]] = {
    "vgg": (
        Asset(
            "vgg16-397923af.pth",
            ("vgg16-397923af.pth",),
            "https://download.pytorch.org/models/vgg16-397923af.pth",
            "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        ),
        Asset(
            "lpips-v0.1-vgg.pth",
            ("lpips-v0.1-vgg.pth", "vgg.pth"),
            _HEADS_URL.format(net="vgg"),
            "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        ),
    ),
    "alex": (
        Asset(
            "alexnet-owt-7be5be79.pth",
            ("alexnet-owt-7be5be79.pth",),
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        ),
        Asset(
            "lpips-v0.1-alex.pth",
            ("lpips-v0.1-alex.pth", "alex.pth"),
            _HEADS_URL.format(net="alex"),
            "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        ),
    ),
}


def lpips_folder(folder: str | Path | None = None) -> Path:
    """``folder``, or ``<model home>/lpips`` when None."""
    if folder is not None:
        return Path(folder).expanduser()
    from magicbokeh.runtime import model_home

    return model_home() / LPIPS_DIR


def installed_files(net: str, folder: str | Path | None = None) -> tuple[Path, Path]:
    """The (backbone, heads) files of ``net`` in ``folder`` (default ``<model home>/lpips``).

    Raises:
        MagicBokehError: ``net`` is unknown or its files are not there (names the command
            that installs them).
    """
    if net not in LPIPS_ASSETS:
        raise MagicBokehError(f"unknown LPIPS network {net!r}: use 'vgg' or 'alex'")
    where = lpips_folder(folder)
    files = tuple(where / asset.name for asset in LPIPS_ASSETS[net])
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MagicBokehError(
            f"the LPIPS ({net}) weights are not installed ({', '.join(missing)} missing in "
            f"{where}): run 'magicbokeh download --lpips {net}' (add '--lpips-from DIR' to "
            "install from local copies)"
        )
    return files[0], files[1]


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_candidates(asset: Asset, sources: Sequence[Path]) -> Iterable[Path]:
    """Files among ``sources`` that may be ``asset``: given files of any name (recognised by
    their hash), and files under given folders carrying one of the asset's names."""
    for source in sources:
        if source.is_file():
            yield source
        elif source.is_dir():
            for name in asset.source_names:
                yield from sorted(p for p in source.rglob(name) if p.is_file())


def _find_local(asset: Asset, sources: Sequence[Path], hashes: dict[Path, str]) -> Path:
    """The file among ``sources`` with ``asset``'s hash.

    Raises:
        MagicBokehError: none has it (a file with the asset's name but another hash is named).
    """
    named = None
    for candidate in _local_candidates(asset, sources):
        if candidate not in hashes:
            hashes[candidate] = sha256_of(candidate)
        if hashes[candidate] == asset.sha256:
            return candidate
        if candidate.name in asset.source_names:
            named = candidate
    if named is not None:
        raise MagicBokehError(
            f"{named} does not have the SHA-256 of {asset.name} (expected {asset.sha256}); it is "
            "another file or damaged"
        )
    raise MagicBokehError(
        f"none of the given sources holds {asset.name} (looked for {', '.join(asset.source_names)} "
        f"with SHA-256 {asset.sha256}); its original is {asset.url}"
    )


def _download(url: str, target: Path, *, quiet: bool) -> None:
    """Copy ``url`` to ``target`` (with a progress bar)."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=quiet
            ) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as error:
        reason = getattr(error, "reason", None) or error
        raise MagicBokehError(
            f"cannot download {url} ({reason}); check the connection, or pass local copies "
            "with --lpips-from"
        ) from None


def install_lpips(
    nets: Sequence[str] = ("vgg", "alex"),
    *,
    folder: str | Path | None = None,
    sources: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    quiet: bool = False,
    assets: dict[str, tuple[Asset, Asset]] | None = None,
) -> list[Path]:
    """Install the LPIPS weight files of ``nets`` into ``folder`` (default the model home's).

    With ``sources`` (local files, recognised by their SHA-256, or folders searched for the
    files' usual names) every file must be found there and nothing is downloaded; without,
    each file is downloaded from its URL. A
    file is checked against its pinned SHA-256 and only then moved into place, so a failed or
    interrupted install leaves no partial file. Already installed files with the right hash
    are kept (``overwrite`` re-installs them).

    Returns:
        The installed files.

    Raises:
        MagicBokehError: unknown net, a missing source path, a file the sources lack, a
            download failure, or a file whose hash is not the pinned one.
    """
    table = LPIPS_ASSETS if assets is None else assets
    unknown = [n for n in nets if n not in table]
    if unknown:
        raise MagicBokehError(f"unknown LPIPS network {unknown[0]!r}: use 'vgg' or 'alex'")
    paths = [Path(s).expanduser() for s in sources]
    absent = [p for p in paths if not p.exists()]
    if absent:
        raise MagicBokehError(f"{absent[0]} does not exist; give LPIPS weight files or folders")
    where = lpips_folder(folder)
    where.mkdir(parents=True, exist_ok=True)
    installed, hashes = [], {}
    for asset in (a for net in dict.fromkeys(nets) for a in table[net]):
        target = where / asset.name
        if target.is_file() and not overwrite and sha256_of(target) == asset.sha256:
            installed.append(target)
            continue
        local = _find_local(asset, paths, hashes) if paths else None
        handle, name = tempfile.mkstemp(prefix=f".{asset.name}.", dir=where)
        os.close(handle)
        temporary = Path(name)
        try:
            if local is not None:
                shutil.copyfile(local, temporary)
            else:
                _download(asset.url, temporary, quiet=quiet)
            got = sha256_of(temporary)
            if got != asset.sha256:
                raise MagicBokehError(
                    f"{asset.url} gave a file with SHA-256 {got}, expected {asset.sha256}; "
                    "nothing was installed, try again or pass a verified copy with --lpips-from"
                )
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        installed.append(target)
    return installed
