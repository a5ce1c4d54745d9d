"""Embeddings of the scalar noise condition ``c_noise: (B,)`` and of an optional condition ``y`` (class labels or
vectors) into ``(B, dim)`` features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "make_embedding",
    "ConditionEmbedding",
    "condition_embedding",
    "embed_condition",
]


class SinusoidalEmbedding(nn.Module):
    """Transformer positional embedding of ``c_noise`` (DDPM; suited to ``999 t``)."""

    freqs: Tensor

    def __init__(self, dim: int, max_positions: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_positions) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        arg = c[:, None].to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features ``[sin 2πWc, cos 2πWc]``, ``W ~ N(0, scale²)`` fixed (NCSN++; suited to ``log sigma``)."""

    W: Tensor

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: Tensor) -> Tensor:
        arg = 2 * math.pi * c[:, None].to(self.W.dtype) * self.W[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


def make_embedding(kind: str, dim: int) -> nn.Module:
    """``"sinusoidal"`` (for ``999 t``) or ``"fourier"`` (for ``log sigma``)."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    if kind == "fourier":
        return GaussianFourierEmbedding(dim)
    raise ValueError(f"unknown embedding {kind!r}; use 'sinusoidal' (VP/sub-VP, 999 t) or 'fourier' (VE, log sigma)")


class ConditionEmbedding(nn.Module):
    """Embeds a condition ``y`` into ``(B, dim)`` features that a network adds to its noise embedding.

    Either class labels (``num_classes``): ``y: (B,)`` integers in ``[0, num_classes)``, with ``-1`` the null label
    ("no class", used for unconditional calls and label dropout) owning its own learned row; or a conditioning vector
    (``cond_dim``): ``y: (B, cond_dim)`` floats through a linear map, where a row of NaN is the null condition and gets
    a learned vector. ``y=None`` means null for the whole batch.
    """

    def __init__(self, dim: int, num_classes: int | None = None, cond_dim: int | None = None) -> None:
        super().__init__()
        if (num_classes is None) == (cond_dim is None):
            raise ValueError("ConditionEmbedding needs exactly one of num_classes (labels) or cond_dim (vectors)")
        if (num_classes is not None and num_classes < 1) or (cond_dim is not None and cond_dim < 1):
            raise ValueError(f"num_classes and cond_dim must be >= 1, got {num_classes}, {cond_dim}")
        self.num_classes, self.cond_dim = num_classes, cond_dim
        if num_classes is not None:
            self.table = nn.Embedding(num_classes + 1, dim)  # row num_classes: the null label
        elif cond_dim is not None:
            self.proj = nn.Linear(cond_dim, dim)
            self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, y: Tensor | None, batch: int) -> Tensor:
        if self.num_classes is not None:
            return self.table(self._labels(y, batch))
        if y is None:
            return self.null.expand(batch, -1)
        if y.shape != (batch, self.cond_dim) or not y.is_floating_point():
            raise ValueError(
                f"condition must be floats shaped ({batch}, {self.cond_dim}), got {tuple(y.shape)} {y.dtype}"
            )
        null = y.isnan().all(1, keepdim=True)
        return torch.where(null, self.null.to(y.dtype), self.proj(torch.nan_to_num(y)))

    def _labels(self, y: Tensor | None, batch: int) -> Tensor:
        device, k = self.table.weight.device, self.num_classes
        assert k is not None  # a label table exists only for num_classes
        if y is None:
            return torch.full((batch,), k, dtype=torch.long, device=device)
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(f"class labels must be integers shaped ({batch},), got {tuple(y.shape)} {y.dtype}")
        if bool(((y < -1) | (y >= k)).any()):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}) (or be -1, the null label); got "
                f"{sorted(set(y.tolist()))[:10]}"
            )
        return torch.where(y < 0, k, y).long()


def condition_embedding(dim: int, num_classes: int | None, cond_dim: int | None) -> ConditionEmbedding | None:
    """A :class:`ConditionEmbedding` for a conditional network, ``None`` for an unconditional one."""
    return None if num_classes is None and cond_dim is None else ConditionEmbedding(dim, num_classes, cond_dim)


def embed_condition(cond: ConditionEmbedding | None, y: Tensor | None, batch: int) -> Tensor | float:
    """The condition's features to add to the noise embedding (``0.0`` for an unconditional network, which refuses
    a condition)."""
    if cond is None:
        if y is not None:
            raise ValueError(
                "this network is unconditional (built without num_classes or cond_dim) but got a condition y"
            )
        return 0.0
    return cond(y, batch)
