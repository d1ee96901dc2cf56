"""Batch rendering: ``magicbokeh render DIR_OR_FILES... -o OUT_DIR``.

Inputs are photos and folders (a folder's photos; with ``--recursive`` also those in its
sub-folders, see :mod:`magicbokeh.io.collect`). Each output keeps its input's name relative to
the folder it was found in (a photo given directly keeps its file name) under ``OUT_DIR``, in
the input's format (HEIC/HEIF, which cannot be written, becomes PNG) or the one ``--format``
names. Every option of ``render`` applies to every photo; the focus is ``auto`` unless given.

- Resume: a photo whose output and sidecar both exist is skipped (``--overwrite`` renders it
  again), so an interrupted batch continues where it stopped.
- Bad files: a photo that fails (unreadable, too large, a focus point outside it, ...) is
  reported and skipped, the others go on; the command ends with a summary and exit code 1.
  Problems with the options themselves stop the batch before any work (exit code 2).
- Several processes: under ``accelerate launch -m magicbokeh render ...`` (or torchrun), which
  set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, each process renders its own contiguous
  share of the sorted list, as accelerate's ``split_between_processes`` splits it, on GPU
  ``LOCAL_RANK``; each prints its own summary.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from magicbokeh.errors import MagicBokehError

if TYPE_CHECKING:
    from magicbokeh.pipeline import MagicBokehPipeline

#: ``--format`` → output suffix (``keep``: the input's, or PNG when it cannot be written).
FORMAT_SUFFIXES = {"png": ".png", "jpg": ".jpg", "tif": ".tif", "webp": ".webp"}


@dataclass(frozen=True)
class BatchItem:
    """One photo of a batch and the file its result goes to."""

    source: Path
    output: Path


@dataclass
class BatchSummary:
    """What one process of a batch did: counts, and ``(photo, reason)`` for each failure."""

    rendered: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.rendered} rendered, {self.skipped} skipped (already done; --overwrite "
            f"renders them again), {len(self.failed)} failed"
        )


def is_batch(inputs: Sequence[Path], output: Path) -> bool:
    """Several inputs, a folder input, or an existing output folder make a batch."""
    return len(inputs) > 1 or Path(inputs[0]).expanduser().is_dir() or output.expanduser().is_dir()


def plan_batch(
    inputs: Sequence[Path], out_dir: Path, *, recursive: bool, fmt: str = "keep"
) -> list[BatchItem]:
    """Map every photo in ``inputs`` to its output under ``out_dir`` (see the module doc).

    Raises:
        MagicBokehError: an input is missing, no photo was found, two photos would write the
            same output, or an output would replace an input.
    """
    from magicbokeh.io.collect import collect_images
    from magicbokeh.io.images import SUPPORTED_WRITE

    found = collect_images(inputs, recursive=recursive, skip=[out_dir])
    sources = {source.expanduser().resolve() for source, _ in found}
    items, taken = [], {}
    for source, relative in found:
        suffix = FORMAT_SUFFIXES.get(fmt)
        if suffix is None:
            suffix = relative.suffix if relative.suffix.lower() in SUPPORTED_WRITE else ".png"
        output = out_dir / Path(relative).with_suffix(suffix)
        key = output.expanduser().resolve()
        if key in taken:
            raise MagicBokehError(
                f"{source} and {taken[key]} would both be written to {output}: rename one, "
                "or render them into different folders"
            )
        if key in sources:
            raise MagicBokehError(
                f"the output {output} would replace the input {source}: choose another -o folder"
            )
        taken[key] = source
        items.append(BatchItem(source, output))
    return items


def process_rank() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from the environment (1 process when unset)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise MagicBokehError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as accelerate launch sets "
            "them): unset them to render in one process"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise MagicBokehError(
            f"RANK={rank} does not fit WORLD_SIZE={world}: unset them to render in one process"
        )
    return rank, world, local


def process_share(items: Sequence[BatchItem], rank: int, world: int) -> list[BatchItem]:
    """Process ``rank``'s contiguous share of ``items``; the first ``len % world`` get one more."""
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (1 if rank < extra else 0)])


def run_batch(args: argparse.Namespace) -> int:
    """Render every photo of ``args.input`` into the folder ``args.output``; the exit code."""
    from tqdm.auto import tqdm

    from magicbokeh.commands.render import (
        check_outputs,
        focus_spec_from_args,
        render_from_args,
        write_outputs,
    )
    from magicbokeh.focus import parse_numbers
    from magicbokeh.io import sidecar_path

    _check_batch_options(args)
    items = plan_batch(args.input, args.output, recursive=args.recursive, fmt=args.format)
    rank, world, local_rank = process_rank()
    mine = process_share(items, rank, world)
    # Problems with the options stop everything now, before any photo is rendered.
    if args.chromatic:
        parse_numbers(args.chromatic, 3, "--chromatic")
    focus_spec_from_args(args)
    check_outputs(_item_args(args, items[0], overwrite=True))
    pipeline = _prepare_device_and_model(args, local_rank, world)

    summary, warned = BatchSummary(), set()
    label = f"render {rank + 1}/{world}" if world > 1 else "render"
    for item in tqdm(mine, desc=label, unit="photo", disable=args.quiet or not mine):
        item_args = _item_args(args, item, overwrite=args.overwrite)
        if not args.overwrite and item.output.exists() and sidecar_path(item.output).exists():
            summary.skipped += 1
            continue
        try:
            check_outputs(item_args)
            result = render_from_args(item_args, pipeline=pipeline)
            write_outputs(item_args, result)
        except (MagicBokehError, OSError, ValueError, RuntimeError, MemoryError) as error:
            summary.failed.append((item.source, str(error)))
            tqdm.write(f"error: {item.source}: {error}", file=sys.stderr)
            continue
        summary.rendered += 1
        for warning in result.warnings:
            if warning not in warned and (not args.quiet or warning.startswith("no depth")):
                tqdm.write(f"warning: {warning}", file=sys.stderr)
            warned.add(warning)
    prefix = f"process {rank + 1}/{world}: " if world > 1 else ""
    if not args.quiet:
        print(f"{prefix}{args.output}: {summary.line()}")
    if summary.failed:
        print(f"{prefix}{len(summary.failed)} photo(s) failed and were skipped:", file=sys.stderr)
        for source, reason in summary.failed:
            print(f"  {source}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def _check_batch_options(args: argparse.Namespace) -> None:
    from magicbokeh.io.images import SUPPORTED_WRITE

    one_file = [
        flag
        for flag, given in (
            ("--save-depth", args.save_depth),
            ("--save-defocus", args.save_defocus),
            ("--raw-output", args.raw_output),
        )
        if given
    ]
    if one_file:
        raise MagicBokehError(
            f"{' and '.join(one_file)} name one file and cannot be used with several photos: "
            "render those photos one at a time"
        )
    out_dir = args.output.expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise MagicBokehError(f"{out_dir} is a file: with several photos, -o names a folder")
    if not out_dir.exists() and out_dir.suffix.lower() in SUPPORTED_WRITE:
        raise MagicBokehError(
            f"-o {out_dir} looks like an image file, but several photos need an output folder: "
            "give -o OUT_DIR"
        )


def _item_args(args: argparse.Namespace, item: BatchItem, *, overwrite: bool) -> argparse.Namespace:
    """The command's options for one photo: its input and output, everything else shared."""
    single = copy.copy(args)
    single.input, single.output, single.overwrite = item.source, item.output, overwrite
    return single


def _prepare_device_and_model(
    args: argparse.Namespace, local_rank: int, world: int
) -> MagicBokehPipeline | None:
    """Pin this process to its GPU; load the learned pipeline once when it will be used."""
    from magicbokeh.api import load_pipeline, select_engine
    from magicbokeh.runtime import DIFFUSION_MODEL_DIR, installed_model, resolve_device

    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        import torch

        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    engine, _ = select_engine(args.engine, args.model)
    if engine != "diffusion":
        return None
    folder = Path(args.model) if args.model is not None else installed_model(DIFFUSION_MODEL_DIR)
    return load_pipeline(folder, device, args.dtype, merge_lora=not args.released)
