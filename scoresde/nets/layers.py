"""Building blocks of the DDPM++ / NCSN++ U-Nets (Song et al. 2021, appendix H; DDPM of Ho et al. 2020; BigGAN blocks).

Images are ``(B, C, H, W)``. FIR resampling follows the upfirdn2d formulation (StyleGAN2): upsample by zero
insertion, pad, filter with a separable kernel built from ``fir_kernel`` (``[1, 3, 3, 1]`` in the paper), downsample by
striding. Weights use DDPM's initialisation: variance scaling with ``fan_avg`` and a uniform law; the last layer of a
residual branch gets ``init_scale = 0`` (a tiny scale), so every block starts as the identity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "variance_scaling_",
    "residual_sum",
    "conv1x1",
    "conv3x3",
    "linear",
    "group_norm",
    "fir_kernel_2d",
    "upfirdn2d",
    "upsample_2d",
    "downsample_2d",
    "FIRConv2d",
    "Upsample",
    "Downsample",
    "AttnBlock",
    "ResBlockDDPM",
    "ResBlockBigGAN",
    "Combine",
]


# ---- initialisation and plain layers ----------------------------------------------------------------------------
def variance_scaling_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's ``variance_scaling(scale, "fan_avg", "uniform")`` in place; ``scale = 0`` means ``1e-10``."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)


def _init(layer: _Layer, init_scale: float) -> _Layer:
    variance_scaling_(layer.weight, init_scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv1x1(c_in: int, c_out: int, init_scale: float = 1.0, bias: bool = True) -> nn.Conv2d:
    return _init(nn.Conv2d(c_in, c_out, 1, bias=bias), init_scale)


def conv3x3(c_in: int, c_out: int, init_scale: float = 1.0, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return _init(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding), init_scale)


def linear(d_in: int, d_out: int, init_scale: float = 1.0) -> nn.Linear:
    return _init(nn.Linear(d_in, d_out), init_scale)


def group_norm(channels: int) -> nn.GroupNorm:
    """``min(C // 4, 32)`` groups, ``eps = 1e-6``, as in the reference networks."""
    return nn.GroupNorm(max(1, min(channels // 4, 32)), channels, eps=1e-6)


# ---- FIR resampling --------------------------------------------------------------------------------------------
def fir_kernel_2d(k: Sequence[float]) -> Tensor:
    """Separable 2-D kernel ``k kᵀ`` normalised to sum 1: ``(K, K)``."""
    k1 = torch.as_tensor(k, dtype=torch.float32)
    if k1.ndim != 1 or len(k1) < 1:
        raise ValueError(f"fir_kernel must be a non-empty 1-D sequence, got {k}")
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion (``up``), pad by ``pad = (before, after)`` on both axes, filter with ``kernel: (K, K)``
    (true convolution), keep every ``down``-th pixel. ``x: (B, C, H, W)``."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR upsampling by ``factor`` (gain ``factor²`` keeps a constant image constant): ``(B, C, 2H, 2W)``."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR downsampling by ``factor``: ``(B, C, H/2, W/2)``."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class Stage(nn.Module):
    """A container of the layers at one resolution of a U-Net (blocks, attention, resampling, pyramid), set as
    attributes whose names are the checkpoint's keys. Which of them exist depends on the configuration, so they are
    read as ``Any``."""

    def __getattr__(self, name: str) -> Any:
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:  # a layer, or None where the configuration has none
        super().__setattr__(name, value)


class Stages(nn.ModuleList):
    """An ``nn.ModuleList`` of :class:`Stage` (the same state-dict keys), iterated and indexed as stages."""

    def __iter__(self) -> Iterator[Stage]:
        return (cast(Stage, m) for m in super().__iter__())


class FIRConv2d(nn.Module):
    """A 3×3 convolution fused with FIR up- or downsampling by 2 (StyleGAN2's ``upsample_conv_2d`` /
    ``conv_downsample_2d``): transposed convolution then filter, or filter then strided convolution."""

    fir: Tensor

    def __init__(
        self,
        c_in: int,
        c_out: int,
        fir_kernel: Sequence[float],
        up: bool = False,
        down: bool = False,
        kernel_size: int = 3,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d resamples: set exactly one of up, down")
        self.up, self.kernel_size = up, kernel_size
        self.weight = nn.Parameter(variance_scaling_(torch.empty(c_out, c_in, kernel_size, kernel_size), init_scale))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("fir", fir_kernel_2d(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        k, f = self.kernel_size, 2
        if self.up:
            # stride-2 transposed convolution (weight flipped, in/out swapped) then the FIR filter (gain f²)
            w = self.weight.flip(2, 3).transpose(0, 1)
            x = F.conv_transpose2d(x, w, stride=f)
            p = (self.fir.shape[0] - f) - (k - 1)
            x = upfirdn2d(x, self.fir * f**2, pad=((p + 1) // 2 + f - 1, p // 2 + 1))
        else:
            p = (self.fir.shape[0] - f) + (k - 1)
            x = F.conv2d(upfirdn2d(x, self.fir, pad=((p + 1) // 2, p // 2)), self.weight, stride=f)
        return x + self.bias[None, :, None, None]


class _Resample(nn.Module):
    """×2 resampling with an optional convolution, FIR or not; subclasses say which way."""

    up: bool

    kernel: Tensor

    def __init__(
        self,
        c_in: int,
        c_out: int | None = None,
        with_conv: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        c_out = c_out or c_in
        if not with_conv and c_out != c_in:
            raise ValueError(f"{type(self).__name__} without a convolution cannot change the channel count")
        self.fir = fir
        self.conv: nn.Module | None = None
        if fir:
            self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)
            if with_conv:
                self.conv = FIRConv2d(c_in, c_out, fir_kernel, up=self.up, down=not self.up)
        elif with_conv:
            # up: nearest then a 3×3 conv; down: the reference pads (0, 1, 0, 1) and convolves with stride 2
            self.conv = conv3x3(c_in, c_out) if self.up else conv3x3(c_in, c_out, stride=2, padding=0)


class Upsample(_Resample):
    """×2 upsampling: nearest (+ 3×3 conv) or FIR (fused with the conv when ``with_conv``)."""

    up = True

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            return self.conv(x) if self.conv is not None else upsample_2d(x, self.kernel)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(_Resample):
    """×2 downsampling: strided 3×3 conv or 2×2 average pooling, or FIR (fused with the conv when ``with_conv``)."""

    up = False

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            return self.conv(x) if self.conv is not None else downsample_2d(x, self.kernel)
        if self.conv is not None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


# ---- blocks ----------------------------------------------------------------------------------------------------
def residual_sum(x: Tensor, h: Tensor, skip_rescale: bool) -> Tensor:
    """``x + h``, divided by ``√2`` with ``skip_rescale`` (keeps the variance of a sum of two unit-variance terms)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class AttnBlock(nn.Module):
    """Self-attention over the ``H W`` positions (one head, DDPM's block): ``x + W_o softmax(q kᵀ / √C) v``."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = conv1x1(
            channels, 3 * channels, init_scale=0.1
        )  # the reference's three NIN layers (scale 0.1), fused
        self.out = conv1x1(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # each (B, HW, C)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, HW, C)
        return residual_sum(x, self.out(a.transpose(1, 2).reshape(b, c, h, w)), self.skip_rescale)


class ResBlockDDPM(nn.Module):
    """DDPM's residual block with the noise embedding added after the first convolution (DDPM++)."""

    def __init__(
        self,
        c_in: int,
        c_out: int | None,
        temb_dim: int,
        dropout: float = 0.1,
        skip_rescale: bool = False,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        c_out = c_out or c_in
        self.norm1, self.conv1 = group_norm(c_in), conv3x3(c_in, c_out)
        self.temb = linear(temb_dim, c_out)
        self.norm2, self.drop = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = conv3x3(c_out, c_out, init_scale=init_scale)
        self.skip = conv1x1(c_in, c_out, init_scale=0.1) if c_in != c_out else None  # the reference's NIN shortcut
        self.act, self.skip_rescale = nn.SiLU(), skip_rescale

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.temb(self.act(temb))[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return residual_sum(x if self.skip is None else self.skip(x), h, self.skip_rescale)


class ResBlockBigGAN(nn.Module):
    """BigGAN-style residual block that can also up- or downsample (FIR or nearest / average pooling)."""

    kernel: Tensor

    def __init__(
        self,
        c_in: int,
        c_out: int | None,
        temb_dim: int,
        dropout: float = 0.1,
        up: bool = False,
        down: bool = False,
        fir: bool = False,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        c_out = c_out or c_in
        self.up, self.down, self.fir = up, down, fir
        if fir:
            self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)
        self.norm1, self.conv1 = group_norm(c_in), conv3x3(c_in, c_out)
        self.temb = linear(temb_dim, c_out)
        self.norm2, self.drop = group_norm(c_out), nn.Dropout(dropout)
        self.conv2 = conv3x3(c_out, c_out, init_scale=init_scale)
        self.skip = conv1x1(c_in, c_out) if (c_in != c_out or up or down) else None
        self.act, self.skip_rescale = nn.SiLU(), skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return upsample_2d(x, self.kernel) if self.fir else F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return downsample_2d(x, self.kernel) if self.fir else F.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self._resample(self.act(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h) + self.temb(self.act(temb))[:, :, None, None]
        h = self.conv2(self.drop(self.act(self.norm2(h))))
        return residual_sum(x if self.skip is None else self.skip(x), h, self.skip_rescale)


class Combine(nn.Module):
    """Merge an image-pyramid branch into the features: a 1×1 conv, then ``"sum"`` or ``"cat"`` (channels)."""

    def __init__(self, c_pyramid: int, c_features: int, method: str = "sum") -> None:
        super().__init__()
        if method not in ("sum", "cat"):
            raise ValueError(f"progressive_combine must be 'sum' or 'cat', got {method!r}")
        self.conv, self.method = conv1x1(c_pyramid, c_features), method

    def forward(self, pyramid: Tensor, h: Tensor) -> Tensor:
        p = self.conv(pyramid)
        return p + h if self.method == "sum" else torch.cat([p, h], dim=1)
