"""A compact time-conditioned U-Net for small images (8×8 digits up to 32×32).

Residual blocks with GroupNorm and SiLU, the noise embedding added per block (DDPM), stride-2 convolutions down and
nearest-neighbour upsampling; skip connections concatenate. The full DDPM++/NCSN++ networks are a separate module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .embeddings import condition_embedding, embed_condition, make_embedding

__all__ = ["UNet"]


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop, self.act = nn.Dropout(dropout), nn.SiLU()
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.emb(e)[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """``net(x, c_noise)`` for images ``x: (B, C, H, W)``; ``H`` and ``W`` divisible by ``2^(len(channel_mult) - 1)``.

    Args:
        in_channels: image channels ``C``.
        base_channels: channels at full resolution.
        channel_mult: channel multiplier per resolution level; each level after the first halves the resolution.
        num_res_blocks: residual blocks per level.
        emb_dim: noise-embedding width.
        embedding: ``"sinusoidal"`` (``999 t``, VP/sub-VP) or ``"fourier"`` (``log sigma``, VE).
        dropout: dropout inside residual blocks.
        num_classes: make it class-conditional, ``net(x, c_noise, y)`` with labels ``y: (B,)`` (``-1``: no class).
        cond_dim: make it conditional on vectors ``y: (B, cond_dim)`` (a NaN row: no condition).
        out_channels: output channels (default ``in_channels``; ``2 in_channels`` for a model that also learns its
            reverse variance, ``ScoreModel(learn_variance=True)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        emb_dim: int = 128,
        embedding: str = "sinusoidal",
        dropout: float = 0.0,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or not channel_mult or num_res_blocks < 1:
            raise ValueError("UNet needs in_channels, base_channels, num_res_blocks >= 1 and a non-empty channel_mult")
        self.in_channels, self.levels = in_channels, len(channel_mult)
        self.embed = nn.Sequential(
            make_embedding(embedding, emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond = condition_embedding(emb_dim, num_classes, cond_dim)
        self.num_classes = num_classes
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [base_channels], base_channels
        for i, ch in enumerate(chans):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(c, ch, emb_dim, dropout))
                c = ch
                skips.append(c)
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([_ResBlock(c, c, emb_dim, dropout), _ResBlock(c, c, emb_dim, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), ch, emb_dim, dropout))
                c = ch
            if i > 0:
                self.upsample.append(
                    nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1))
                )
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, out_channels or in_channels, 3, padding=1))
        self._blocks_per_level = num_res_blocks

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """``x: (B, C, H, W)``, ``c_noise: (B,)``, condition ``y`` (see ``num_classes``) → ``(B, out_channels, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        f = 2 ** (self.levels - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"UNet with {self.levels} levels needs H and W divisible by {f}, got {tuple(x.shape[-2:])}"
            )
        e = self.embed(c_noise) + embed_condition(self.cond, y, x.shape[0])
        h = self.inp(x)
        hs = [h]
        blocks = iter(self.down)
        for level in range(self.levels):
            for _ in range(self._blocks_per_level):
                h = next(blocks)(h, e)
                hs.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, e)
        blocks = iter(self.up)
        for level in range(self.levels):
            for _ in range(self._blocks_per_level + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), e)
            if level < self.levels - 1:
                h = self.upsample[level](h)
        return self.out(h)
