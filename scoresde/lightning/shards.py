"""Work in shards through Lightning's predict loop, as ``scoresde sample`` and ``scoresde inpaint`` do it.

Shard ``k`` holds items ``[k·bs, min((k + 1)·bs, n))`` and is written atomically to ``out/shard_k.npz`` with their
``index``. A rerun skips the shards already on disk, so an interrupted run loses at most the shards in flight, and
``--devices``/``--strategy``/``--num_nodes`` spread the shards over processes. The only collective is one barrier at
the end, so ranks may take different times per shard (adaptive solvers).
"""

from __future__ import annotations

import abc
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._utils import atomic_path

__all__ = ["ShardTask", "check_sizes", "shard_path", "run_shards", "read_shards"]


def check_sizes(n: int, batch_size: int) -> None:
    """``--n`` and ``--batch-size`` (items per shard) must be positive; checked before any work."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"--n and --batch-size must be positive, got n={n}, batch_size={batch_size}")


def shard_path(out: Path, k: int) -> Path:
    return out / f"shard_{k:05d}.npz"


class ShardTask(L.LightningModule, abc.ABC):
    """A ``Trainer.predict`` task whose batches are lists of shard numbers. Subclasses implement :meth:`draw`.

    Args:
        n: items in all.
        batch_size: items per shard (and per :meth:`draw`).
        out: the folder the shards go to.
    """

    def __init__(self, n: int, batch_size: int, out: Path) -> None:
        super().__init__()
        self.n, self.batch_size, self.out = n, batch_size, out

    @property
    def shards(self) -> int:
        return math.ceil(self.n / self.batch_size)

    @abc.abstractmethod
    def draw(self, start: int, count: int) -> dict[str, np.ndarray]:
        """The arrays of items ``start, ..., start + count - 1`` (each with its own seed, so shards are independent)."""

    def predict_step(self, shards: Tensor, batch_idx: int) -> None:
        for k in shards.tolist():
            path = shard_path(self.out, k)
            if path.exists():  # written by an earlier (interrupted) run
                continue
            start = k * self.batch_size
            count = min(self.batch_size, self.n - start)
            arrays = self.draw(start, count)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, index=np.arange(start, start + count), **arrays)


def run_shards(trainer: L.Trainer, task: ShardTask) -> bool:
    """Draw every shard not yet on disk, wait for all ranks, and return whether this is rank 0 (which merges)."""
    if any(not shard_path(task.out, k).exists() for k in range(task.shards)):
        # One shard per predict step; Lightning gives each rank its share of the list, without padding. The list is
        # all shards, not those still missing: ranks may start seconds apart (`ddp` relaunches the command), and the
        # split must not depend on what was on disk when each looked. Finished shards are skipped in the step.
        loader = DataLoader(torch.arange(task.shards), batch_size=1, shuffle=False)
        trainer.predict(task, loader, return_predictions=False)
    trainer.strategy.barrier()  # the one collective: every rank has written its shards
    return trainer.is_global_zero


def read_shards(out: Path, shards: int) -> list[dict[str, np.ndarray]]:
    """The arrays of shards ``0, ..., shards - 1`` in order (checked complete and contiguous); removes the temporary
    files of shards that were being written when a run was killed."""
    missing = [k for k in range(shards) if not shard_path(out, k).exists()]
    if missing:
        raise RuntimeError(f"{out} lacks shards {missing[:10]} of {shards}; run the same command again to resume")
    parts = []
    for k in range(shards):
        with np.load(shard_path(out, k)) as f:
            parts.append(dict(f))
    index = np.concatenate([p["index"] for p in parts])
    assert np.array_equal(index, np.arange(len(index))), "shards out of order"
    for stale in out.glob(".shard_*"):
        stale.unlink(missing_ok=True)
    return parts
