"""NCSN++ and DDPM++: the U-Nets of Song et al. (2021), section 4.4 and appendix H, continuous-time versions.

One architecture, two sets of defaults. Both are ``net(x, c_noise)`` for images ``x: (B, C, H, W)`` and return
``(B, C, H, W)``; :class:`~scoresde.ScoreModel` turns the output into the score (``prediction="eps"`` plays the
reference's ``scale_by_sigma``: the score is ``-net / sigma_t``).

- **DDPM++ cont.** (VP, sub-VP): BigGAN residual blocks, no FIR, no progressive growing, sinusoidal embedding of
  ``c_noise = 999 t``, data centred to ``[-1, 1]``.
- **NCSN++ cont.** (VE): BigGAN residual blocks with FIR resampling (kernel ``[1, 3, 3, 1]``), a residual input
  pyramid (``progressive_input="residual"``), Gaussian Fourier features of ``c_noise = log sigma_t``, data in ``[0, 1]``
  (``centered=False``: the network maps its input to ``2 x - 1``).

Both CIFAR-10 configurations use ``nf = 128``, ``ch_mult = (1, 2, 2, 2)``, 4 residual blocks per resolution (8 in the
"deep" variants), attention at 16×16, dropout 0.1 and ``skip_rescale``. :func:`paper_config` returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding, condition_embedding, embed_condition
from .layers import (
    AttnBlock,
    Combine,
    Downsample,
    ResBlockBigGAN,
    ResBlockDDPM,
    Stage,
    Stages,
    Upsample,
    conv3x3,
    group_norm,
    linear,
    residual_sum,
)

__all__ = ["NCSNpp", "DDPMpp", "paper_config", "PAPER_CONFIGS", "count_parameters"]


class NCSNpp(nn.Module):
    """The NCSN++ / DDPM++ U-Net (defaults: NCSN++ cont. for CIFAR-10, VE).

    Args:
        in_channels: image channels ``C``.
        image_size: height = width of the images (sets which resolutions get attention).
        nf: channels at full resolution.
        ch_mult: channel multiplier per resolution; each level after the first halves the resolution.
        num_res_blocks: residual blocks per resolution (4; 8 in the deep variants).
        attn_resolutions: resolutions (in pixels) with self-attention after each residual block.
        dropout: dropout inside residual blocks.
        resblock_type: ``"biggan"`` (resampling inside residual blocks) or ``"ddpm"`` (separate resampling layers).
        fir: FIR up/downsampling (NCSN++) instead of nearest / average pooling or strided convolution.
        fir_kernel: the 1-D FIR kernel.
        resamp_with_conv: resampling layers of ``"ddpm"`` blocks carry a convolution.
        skip_rescale: divide residual sums by ``√2``.
        progressive: output pyramid: ``"none"``, ``"output_skip"`` or ``"residual"``.
        progressive_input: input pyramid: ``"none"``, ``"input_skip"`` or ``"residual"``.
        progressive_combine: how ``input_skip`` merges: ``"sum"`` or ``"cat"``.
        embedding: ``"fourier"`` (Gaussian Fourier features, for ``log sigma``) or ``"positional"`` (for ``999 t``).
        fourier_scale: standard deviation of the Fourier frequencies.
        init_scale: initial scale of the last layer of each residual branch (0: near zero).
        centered: the data are centred in ``[-1, 1]``; if ``False`` (data in ``[0, 1]``) the input is mapped to ``2x - 1``.
        num_classes: make it class-conditional, ``net(x, c_noise, y)`` with labels ``y: (B,)`` (``-1``: no class); the
            label embedding is added to the noise embedding, as in the class-conditional ADM U-Net.
        cond_dim: make it conditional on vectors ``y: (B, cond_dim)`` (a NaN row: no condition).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resblock_type: Literal["biggan", "ddpm"] = "biggan",
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        resamp_with_conv: bool = True,
        skip_rescale: bool = True,
        progressive: Literal["none", "output_skip", "residual"] = "none",
        progressive_input: Literal["none", "input_skip", "residual"] = "residual",
        progressive_combine: Literal["sum", "cat"] = "sum",
        embedding: Literal["fourier", "positional"] = "fourier",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        centered: bool = False,
        num_classes: int | None = None,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_options(locals())
        self.in_channels, self.image_size, self.centered = in_channels, image_size, centered
        self.levels, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.resblock_type, self.skip_rescale = resblock_type, skip_rescale
        self.progressive, self.progressive_input = progressive, progressive_input
        resolutions = [image_size // 2**i for i in range(self.levels)]
        self.attn_levels = [r in attn_resolutions for r in resolutions]
        temb_dim = 4 * nf

        # noise embedding → two dense layers (the reference's 4 nf wide "temb")
        self.embed = (
            GaussianFourierEmbedding(2 * nf, scale=fourier_scale) if embedding == "fourier" else SinusoidalEmbedding(nf)
        )
        self.temb = nn.Sequential(
            linear(2 * nf if embedding == "fourier" else nf, temb_dim), nn.SiLU(), linear(temb_dim, temb_dim)
        )
        self.cond = condition_embedding(temb_dim, num_classes, cond_dim)
        self.num_classes = num_classes

        def resblock(c_in: int, c_out: int | None = None, up: bool = False, down: bool = False) -> nn.Module:
            if resblock_type == "ddpm":
                return ResBlockDDPM(c_in, c_out, temb_dim, dropout, skip_rescale, init_scale)
            return ResBlockBigGAN(c_in, c_out, temb_dim, dropout, up, down, fir, fir_kernel, skip_rescale, init_scale)

        def attn(c: int) -> AttnBlock:
            return AttnBlock(c, skip_rescale=skip_rescale, init_scale=init_scale)

        # ---- downsampling path ----
        self.conv_in = conv3x3(in_channels, nf)
        skips, c, c_pyr = [nf], nf, in_channels
        self.down = Stages()
        for level, mult in enumerate(ch_mult):
            stage = Stage()
            stage.blocks, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.blocks.append(resblock(c, nf * mult))
                c = nf * mult
                if self.attn_levels[level]:
                    stage.attn.append(attn(c))
                skips.append(c)
            if level < self.levels - 1:
                stage.downsample = (
                    Downsample(c, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                    if resblock_type == "ddpm"
                    else resblock(c, down=True)
                )
                if progressive_input == "input_skip":
                    stage.pyramid_down = Downsample(c_pyr, fir=fir, fir_kernel=fir_kernel)
                    stage.combine = Combine(c_pyr, c, progressive_combine)
                    c = 2 * c if progressive_combine == "cat" else c
                elif progressive_input == "residual":
                    stage.pyramid_down = Downsample(c_pyr, c, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                    c_pyr = c
                skips.append(c)
            self.down.append(stage)

        self.mid = nn.ModuleList([resblock(c), attn(c), resblock(c)])

        # ---- upsampling path ----
        self.up = Stages()
        c_pyr = 0
        for level in reversed(range(self.levels)):
            stage = Stage()
            stage.blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.blocks.append(resblock(c + skips.pop(), nf * ch_mult[level]))
                c = nf * ch_mult[level]
            stage.attn = attn(c) if self.attn_levels[level] else None
            if progressive == "output_skip":
                stage.pyramid = nn.Sequential(group_norm(c), nn.SiLU(), conv3x3(c, in_channels, init_scale=init_scale))
            elif progressive == "residual":
                if level == self.levels - 1:
                    stage.pyramid = nn.Sequential(group_norm(c), nn.SiLU(), conv3x3(c, c))
                else:
                    stage.pyramid = Upsample(c_pyr, c, with_conv=True, fir=fir, fir_kernel=fir_kernel)
                c_pyr = c
            if level > 0:
                stage.upsample = (
                    Upsample(c, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
                    if resblock_type == "ddpm"
                    else resblock(c, up=True)
                )
            self.up.append(stage)
        assert not skips
        if progressive == "output_skip":
            self.pyramid_up = Upsample(in_channels, fir=fir, fir_kernel=fir_kernel)
        else:
            self.conv_out = nn.Sequential(group_norm(c), nn.SiLU(), conv3x3(c, in_channels, init_scale=init_scale))

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images this network takes."""
        return (self.in_channels, self.image_size, self.image_size)

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """``x: (B, C, H, W)`` with ``H = W = image_size``, ``c_noise: (B,)``, condition ``y`` → ``(B, C, H, W)``."""
        if (
            x.ndim != 4
            or x.shape[1] != self.in_channels
            or x.shape[-1] != self.image_size
            or x.shape[-2] != self.image_size
        ):
            raise ValueError(
                f"{type(self).__name__} expects images (B, {self.in_channels}, {self.image_size}, "
                f"{self.image_size}), got shape {tuple(x.shape)}"
            )
        temb = self.temb(self.embed(c_noise)) + embed_condition(self.cond, y, x.shape[0])
        if not self.centered:
            x = 2 * x - 1  # data in [0, 1] → [-1, 1]
        pyramid = x if self.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.blocks):
                h = block(hs[-1], temb)
                hs.append(stage.attn[i](h) if self.attn_levels[level] else h)
            if level < self.levels - 1:
                h = stage.downsample(hs[-1]) if self.resblock_type == "ddpm" else stage.downsample(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = stage.pyramid_down(pyramid)
                    h = stage.combine(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = h = residual_sum(stage.pyramid_down(pyramid), h, self.skip_rescale)
                hs.append(h)

        h = self.mid[0](hs[-1], temb)
        h = self.mid[2](self.mid[1](h), temb)

        pyramid = None
        for i, stage in enumerate(self.up):
            level = self.levels - 1 - i
            for block in stage.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if stage.attn is not None:
                h = stage.attn(h)
            if self.progressive == "output_skip":
                out = stage.pyramid(h)
                pyramid = out if pyramid is None else self.pyramid_up(pyramid) + out
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = stage.pyramid(h)
                else:
                    pyramid = h = residual_sum(stage.pyramid(pyramid), h, self.skip_rescale)
            if level > 0:
                h = stage.upsample(h) if self.resblock_type == "ddpm" else stage.upsample(h, temb)
        if self.progressive != "output_skip":
            return self.conv_out(h)
        assert pyramid is not None  # every up stage adds its output to the pyramid
        return pyramid


class DDPMpp(NCSNpp):
    """DDPM++ cont. (VP, sub-VP): :class:`NCSNpp` with no FIR, no input pyramid, a sinusoidal embedding of ``999 t``
    and centred data. Every other argument of :class:`NCSNpp` is accepted and keeps its default."""

    def __init__(
        self,
        fir: bool = False,
        progressive_input: Literal["none", "input_skip", "residual"] = "none",
        embedding: Literal["fourier", "positional"] = "positional",
        centered: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(fir=fir, progressive_input=progressive_input, embedding=embedding, centered=centered, **kwargs)


def _check_options(o: dict[str, Any]) -> None:
    choices = {
        "resblock_type": ("biggan", "ddpm"),
        "progressive": ("none", "output_skip", "residual"),
        "progressive_input": ("none", "input_skip", "residual"),
        "progressive_combine": ("sum", "cat"),
        "embedding": ("fourier", "positional"),
    }
    for name, allowed in choices.items():
        if o[name] not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {o[name]!r}")
    if min(o["in_channels"], o["nf"], o["num_res_blocks"]) < 1 or not o["ch_mult"]:
        raise ValueError("NCSNpp needs in_channels, nf, num_res_blocks >= 1 and a non-empty ch_mult")
    levels = len(o["ch_mult"])
    if o["image_size"] % 2 ** (levels - 1):
        raise ValueError(
            f"image_size {o['image_size']} is not divisible by 2^{levels - 1} "
            f"(ch_mult has {levels} resolutions); use fewer levels or pad the images"
        )
    if o["nf"] % 2:
        raise ValueError(f"nf must be even (the embeddings split it into sin and cos), got {o['nf']}")
    resolutions = {o["image_size"] // 2**i for i in range(levels)}
    if unknown := sorted(set(o["attn_resolutions"]) - resolutions):
        raise ValueError(f"attn_resolutions {unknown} are not resolutions of this network ({sorted(resolutions)})")


# ---- the paper's CIFAR-10 networks -------------------------------------------------------------------------------
PAPER_CONFIGS: dict[str, tuple[type[NCSNpp], dict[str, Any]]] = {
    "ddpmpp_cont": (DDPMpp, {}),
    "ddpmpp_deep_cont": (DDPMpp, {"num_res_blocks": 8}),
    "ncsnpp_cont": (NCSNpp, {}),
    "ncsnpp_deep_cont": (NCSNpp, {"num_res_blocks": 8}),
}


def paper_config(name: str, **overrides: Any) -> NCSNpp:
    """One of the paper's CIFAR-10 networks (``ddpmpp_cont``, ``ddpmpp_deep_cont``, ``ncsnpp_cont``,
    ``ncsnpp_deep_cont``), optionally with changed arguments (e.g. ``nf=32`` for a small copy)."""
    if name not in PAPER_CONFIGS:
        raise ValueError(f"unknown paper network {name!r}; available: {', '.join(PAPER_CONFIGS)}")
    cls, kwargs = PAPER_CONFIGS[name]
    return cls(**{**kwargs, **overrides})


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
