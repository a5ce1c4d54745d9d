"""Embeddings of the scalar noise condition ``c_noise: (B,)`` into ``(B, dim)`` features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "GaussianFourierEmbedding", "make_embedding"]


class SinusoidalEmbedding(nn.Module):
    """Transformer positional embedding of ``c_noise`` (DDPM; suited to ``999 t``)."""

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
