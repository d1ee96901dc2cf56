"""Endless, seeded, resumable and sharded streams of training batches.

A stream walks a map-style dataset epoch after epoch, each epoch in its own random order
(``SeedSequence([seed, stream_key, epoch])``). Its *position* is the number of items all
processes together have taken from it, so a run resumes at exactly the next item. Each global
batch of ``batch_size × num_processes`` consecutive positions is split into one contiguous
chunk per process: the processes see disjoint items, and the union does not depend on the
number of DataLoader workers.

Datasets with a ``set_epoch(epoch)`` method (those of :mod:`magicbokeh.data.datasets`) get it
called before each item, inside the worker that loads it, so crops and flips change with the
epoch and stay reproducible.
"""

from __future__ import annotations

import signal
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["BatchStream", "EpochItems", "epoch_order"]


def epoch_order(length: int, seed: int, key: str, epoch: int) -> np.ndarray:
    """The order of the items of ``epoch`` (a permutation of ``range(length)``)."""
    tag = zlib.crc32(key.encode("utf-8"))
    rng = np.random.default_rng(np.random.SeedSequence([seed, tag, epoch]))
    return rng.permutation(length)


class EpochItems(Dataset):
    """Wraps a dataset so that the item key ``(epoch, index)`` sets the epoch first."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


@dataclass
class _Positions(Sampler):
    """Batch sampler: the ``(epoch, index)`` keys of this process, from ``start`` on."""

    length: int
    batch_size: int
    rank: int
    world: int
    seed: int
    key: str
    start: int

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start
        cached_epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            first = position + self.rank * self.batch_size
            keys = []
            for p in range(first, first + self.batch_size):
                epoch, offset = divmod(p, self.length)
                if epoch != cached_epoch:
                    cached_epoch, order = (
                        epoch,
                        epoch_order(self.length, self.seed, self.key, epoch),
                    )
                keys.append((epoch, int(order[offset])))
            yield keys
            position += self.batch_size * self.world


class BatchStream:
    """Endless batches of ``batch_size`` items for this process, resumable by position.

    ``position`` counts the items taken by all processes; :meth:`next` advances it by one
    global batch. ``num_workers`` loads items in background processes (the items do not
    depend on it).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        key: str,
        rank: int = 0,
        world: int = 1,
        position: int = 0,
        num_workers: int = 0,
    ) -> None:
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(f"stream {key}: the dataset is empty")
        self.dataset = dataset
        self.batch_size, self.seed, self.key = batch_size, seed, key
        self.rank, self.world = rank, world
        self.num_workers = num_workers
        self.position = position
        self._iterator: Iterator | None = None

    def _start(self) -> Iterator:
        sampler = _Positions(
            len(self.dataset),  # type: ignore[arg-type]
            self.batch_size,
            self.rank,
            self.world,
            self.seed,
            self.key,
            self.position,
        )
        loader = DataLoader(
            EpochItems(self.dataset),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init,
        )
        return iter(loader)

    def next(self) -> dict:
        """The next batch of this process (a collated dict of CPU tensors)."""
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self.position += self.batch_size * self.world
        return batch

    def close(self) -> None:
        """Stop background workers (a later :meth:`next` starts again at ``position``)."""
        self._iterator = None


def _worker_init(_: int) -> None:
    """One thread per loader process; Ctrl-C is the training process's to handle (it stops
    after the step), so the loaders keep serving until it shuts them down."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
