"""Small helpers used across the package: broadcasting, reductions, argument checks."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["atomic_path", "save_npz", "append_dims", "batch_sum", "check_t", "check_batch", "as_time", "flat_dim"]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims to ``v`` until it has ``ndim`` dims, so ``(B,)`` broadcasts over ``(B, *D)``."""
    extra = ndim - v.ndim
    if extra < 0:
        raise ValueError(f"cannot broadcast a tensor with {v.ndim} dims to {ndim} dims")
    return v[(...,) + (None,) * extra]


def batch_sum(x: Tensor) -> Tensor:
    """Sum over every dim but the first: ``(B, *D) -> (B,)``."""
    return x.flatten(1).sum(1)


def flat_dim(shape: Sequence[int]) -> int:
    """Number of scalar dimensions of one data point of shape ``shape`` (without the batch dim)."""
    return math.prod(int(s) for s in shape)


def check_t(t: Tensor, T: float, *, batch: int | None = None, name: str = "t") -> None:
    """Raise a ``ValueError`` unless ``t`` is a ``(B,)`` tensor of times in ``[0, T]``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"{name} must have shape (B,) (one time per sample), got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has {t.shape[0]} entries but x has batch size {batch}; pass one time per sample")
    if t.numel() and (bool((t < 0).any()) or bool((t > T).any())):
        lo, hi = float(t.min()), float(t.max())
        raise ValueError(f"{name} must lie in [0, T] = [0, {T:g}], got values in [{lo:.6g}, {hi:.6g}]")


def check_batch(x: Tensor, name: str = "x") -> None:
    """Raise unless ``x`` is a tensor with a batch dim and at least one data dim, ``(B, *D)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, *D), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (B, *D) with a batch dim first, got shape {tuple(x.shape)}; "
            f"for a single point use {name}[None]"
        )


def as_time(t: float | Tensor, like: Tensor) -> Tensor:
    """A ``(B,)`` time tensor on ``like``'s device, in ``like``'s dtype, from a float or a tensor."""
    B = like.shape[0]
    if isinstance(t, Tensor):
        t = t.to(device=like.device, dtype=like.dtype)
        return t.expand(B) if t.ndim == 0 else t
    return torch.full((B,), float(t), device=like.device, dtype=like.dtype)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's contents (so a rerun can tell that a checkpoint was overwritten by a new training run)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename, on failure it is removed,
    so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0o022)  # mkstemp makes the file private (0600); give it the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (name → array or number) to the ``.npz`` file ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)
