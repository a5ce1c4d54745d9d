"""A time-conditioned residual MLP for low-dimensional data (toy 2-D sets, small vectors)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .embeddings import make_embedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h + self.fc2(self.act(self.fc1(self.act(self.norm(h))) + self.emb(e)))


class MLP(nn.Module):
    """Residual MLP ``net(x, c_noise)`` with the noise embedding added inside every block.

    Args:
        data_shape: shape of one data point, e.g. ``[2]``; inputs ``(B, *data_shape)`` are flattened.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: noise-embedding width.
        embedding: ``"sinusoidal"`` for ``999 t`` (VP, sub-VP) or ``"fourier"`` for ``log sigma`` (VE).
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (2,),
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"MLP needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
        self.data_shape = tuple(int(s) for s in data_shape)
        dim = math.prod(self.data_shape)
        self.embed = nn.Sequential(make_embedding(embedding, emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """``x: (B, *data_shape)``, ``c_noise: (B,)`` → ``(B, *data_shape)``."""
        e = self.embed(c_noise)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, e)
        return self.out(h).view(x.shape)
