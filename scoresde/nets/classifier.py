"""A noise-conditional image classifier for classifier guidance: the compact U-Net's downsampling half, pooled."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .embeddings import make_embedding
from .layers import Stage, Stages
from .unet import _norm, _ResBlock

__all__ = ["ConvClassifier"]


class ConvClassifier(nn.Module):
    """``net(x, c_noise) -> logits (B, num_classes)`` for images ``x: (B, C, H, W)``.

    Residual blocks with the noise embedding added (as in :class:`~scoresde.nets.UNet`), stride-2 downsampling between
    levels, then GroupNorm, SiLU, global average pooling and a linear layer.

    Args:
        num_classes: number of classes ``K``.
        in_channels, base_channels, channel_mult, num_res_blocks, emb_dim, embedding, dropout: as for ``UNet``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        emb_dim: int = 128,
        embedding: str = "sinusoidal",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2 or in_channels < 1 or base_channels < 1 or not channel_mult or num_res_blocks < 1:
            raise ValueError(
                "ConvClassifier needs num_classes >= 2, in_channels, base_channels, num_res_blocks >= 1 "
                "and a non-empty channel_mult"
            )
        self.in_channels, self.num_classes = in_channels, num_classes
        self.embed = nn.Sequential(
            make_embedding(embedding, emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.levels = Stages()
        c = base_channels
        for i, mult in enumerate(channel_mult):
            level = Stage()
            level.blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(_ResBlock(c, base_channels * mult, emb_dim, dropout))
                c = base_channels * mult
            level.down = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(channel_mult) - 1 else nn.Identity()
            self.levels.append(level)
        self.head = nn.Sequential(_norm(c), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """``x: (B, C, H, W)``, ``c_noise: (B,)`` → logits ``(B, num_classes)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvClassifier expects images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        e = self.embed(c_noise)
        h = self.inp(x)
        for level in self.levels:
            for block in level.blocks:
                h = block(h, e)
            h = level.down(h)
        return self.head(h)
