"""A time-conditioned residual MLP for low-dimensional data (toy 2-D sets, small vectors), optionally conditional."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .embeddings import condition_embedding, embed_condition, make_embedding

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
        num_classes: make it class-conditional, ``net(x, c_noise, y)`` with labels ``y: (B,)`` (``-1``: no class).
        cond_dim: make it conditional on vectors ``y: (B, cond_dim)`` (a NaN row: no condition).
        out_features: output ``(B, out_features)`` instead of ``(B, *data_shape)``: e.g. the logits of a
            noise-conditional classifier.
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (2,),
        width: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        embedding: str = "sinusoidal",
        num_classes: int | None = None,
        cond_dim: int | None = None,
        out_features: int | None = None,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"MLP needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
        self.data_shape = tuple(int(s) for s in data_shape)
        dim = math.prod(self.data_shape)
        self.embed = nn.Sequential(make_embedding(embedding, emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.cond = condition_embedding(emb_dim, num_classes, cond_dim)
        self.num_classes, self.out_features = num_classes, out_features
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_features or dim))

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """``x: (B, *data_shape)``, ``c_noise: (B,)``, condition ``y`` → ``(B, *data_shape)`` (or ``(B, out_features)``)."""
        e = self.embed(c_noise) + embed_condition(self.cond, y, x.shape[0])
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, e)
        out = self.out(h)
        return out if self.out_features else out.view(x.shape)
