"""Fetch the released MagicBokeh weights and convert them into this package's format.

Sources are Hugging Face Hub repositories (ids configurable) or local folders that hold the
same files, so an offline machine can install from a copied folder:

- the base model, Stable Diffusion 2.1-base in the diffusers layout (only ``scheduler/``,
  ``unet/`` and ``vae/`` are needed: the network has no text path);
- the release: ``lora.pkl`` (SR and bokeh LoRA, ControlNet, attention processors) and
  ``DAdepth.pth`` (the degradation-aware Depth Anything V2 Large).

The converted model goes to ``<model home>/magicbokeh`` (``network/`` + ``depth/``), written to
a temporary folder first and moved into place only when complete (see
:func:`magicbokeh.model.official.convert_official`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from magicbokeh.errors import MagicBokehError
from magicbokeh.extras import require

if TYPE_CHECKING:  # kept out of module imports so that `magicbokeh download --help` is fast
    import torch

__all__ = ["DEFAULT_BASE_REPO", "DEFAULT_RELEASE_REPO", "fetch", "install"]

DEFAULT_BASE_REPO = "Manojb/stable-diffusion-2-1-base"
DEFAULT_RELEASE_REPO = "LinxiaoShi/Magicbokeh"
BASE_FILES = (
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
LORA_FILE = "lora.pkl"
DEPTH_FILE = "DAdepth.pth"

#: ``fetch(source, filenames, cache_dir) -> folder`` holding ``filenames`` (relative paths).
Fetcher = Callable[[str, Sequence[str], Path | None], Path]


def fetch(source: str, filenames: Sequence[str], cache_dir: Path | None = None) -> Path:
    """A folder holding ``filenames`` from ``source``: a local folder, or a Hub repository id.

    Hub files are downloaded (with progress) into the Hugging Face cache, or ``cache_dir``.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        missing = [name for name in filenames if not (folder / name).is_file()]
        if missing:
            raise MagicBokehError(
                f"{folder} lacks {', '.join(missing)}: copy the complete repository there"
            )
        return folder
    require("diffusion", "downloading from the Hugging Face Hub", ("huggingface_hub",))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=list(filenames), cache_dir=cache_dir))
    except Exception as error:  # network, authentication and missing-repository errors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MagicBokehError(
            f"cannot download {source} ({type(error).__name__}: {first_line}); check the "
            "connection and the repository id, or pass a local folder holding its files"
        ) from None


def install(
    home: Path,
    *,
    base: str = DEFAULT_BASE_REPO,
    release: str = DEFAULT_RELEASE_REPO,
    depth: bool = True,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    fetcher: Fetcher = fetch,
    cache_dir: Path | None = None,
) -> Path:
    """Fetch and convert the released weights into ``home/magicbokeh``; returns that folder."""
    from magicbokeh.model.official import convert_official
    from magicbokeh.runtime import DIFFUSION_MODEL_DIR

    target = home / DIFFUSION_MODEL_DIR
    if target.exists() and not overwrite:
        raise MagicBokehError(f"{target} already exists: pass --overwrite to replace it")
    base_dir = fetcher(base, BASE_FILES, cache_dir)
    release_files = (LORA_FILE, DEPTH_FILE) if depth else (LORA_FILE,)
    release_dir = fetcher(release, release_files, cache_dir)
    home.mkdir(parents=True, exist_ok=True)
    return convert_official(
        base_dir,
        release_dir / LORA_FILE,
        target,
        depth_pth=release_dir / DEPTH_FILE if depth else None,
        torch_dtype=dtype,
        overwrite=overwrite,
    )


def __getattr__(name: str) -> object:
    if name == "staged_folder":  # its home is magicbokeh.io.atomic
        from magicbokeh.io.atomic import staged_folder

        return staged_folder
    raise AttributeError(f"module 'magicbokeh.install' has no attribute {name!r}")
