"""Per-sample random streams: a sample's noise depends on its own seed only, never on the batch it was drawn in.

Each sample ``i`` owns a SplitMix64 stream (a counter-based generator: the k-th number of a stream is a fixed hash of
``(seed_i, k)``), so the whole batch is drawn in a few vectorised integer ops on any device, and a sample drawn
alone, in a batch of 7 or on another GPU is bit-for-bit the same. Normals come from the Box–Muller transform of two
32-bit uniforms per number (tails to 6.7 sigma). One stream per sample is what EDM's stacked generators achieve with a
Python loop over ``torch.Generator`` objects; the loop costs ~3 µs per sample per draw, this costs a few elementwise
ops per draw (``benchmarks/solvers.py`` measures it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PerSampleNoise", "derive_seeds", "index_seeds", "splitmix64"]


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits (``>>`` on int64 is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: Tensor) -> Tensor:
    """The SplitMix64 finaliser on int64 tensors (multiplication wraps modulo 2⁶⁴, as in C)."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def derive_seeds(seed: int, start: int, n: int, device: torch.device | str | None = None) -> Tensor:
    """Seeds of samples ``start, ..., start + n - 1`` of a run with base ``seed``: ``(n,)`` int64.

    Sample ``j``'s seed depends on ``(seed, j)`` only, so a run split into any batches, shards or devices draws the
    same samples.
    """
    return index_seeds(seed, torch.arange(start, start + n, dtype=torch.int64, device=device))


def index_seeds(seed: int, index: Tensor) -> Tensor:
    """Seeds of the samples with indices ``index: (n,)`` (any order, e.g. one rank's share of a dataset): ``(n,)``."""
    j = index.to(torch.int64)
    return splitmix64(splitmix64(torch.tensor(seed, dtype=torch.int64, device=j.device) * _GOLDEN + 1) + j * _GOLDEN)


class PerSampleNoise:
    """Standard normal noise with one independent stream per sample.

    ``noise(x)`` returns a tensor shaped like ``x: (B, *D)``; row ``i`` holds the next ``prod(D)`` numbers of stream
    ``i`` (each 64-bit word of a stream gives two normals). ``noise.uniform()`` draws one ``U[0, 1)`` number per
    stream. Successive calls continue the streams.

    Args:
        seeds: ``(B,)`` integer seeds, one per sample (see :func:`derive_seeds`).
    """

    def __init__(self, seeds: Tensor) -> None:
        if not isinstance(seeds, Tensor) or seeds.ndim != 1 or seeds.is_floating_point():
            raise ValueError(f"seeds must be a (B,) integer tensor, got {seeds!r}")
        self.keys = splitmix64(seeds.to(torch.int64) * _GOLDEN + _GOLDEN)
        self.count = 0  # 64-bit words used so far in every stream

    def _words(self, words: int, device: torch.device) -> Tensor:
        """The next ``words`` 64-bit words of every stream: ``(B, words)`` int64."""
        keys = self.keys.to(device)
        k = torch.arange(self.count + 1, self.count + words + 1, dtype=torch.int64, device=device)
        self.count += words
        return splitmix64(keys[:, None] + k[None, :] * _GOLDEN)

    def uniform(self, device: torch.device | str | None = None) -> Tensor:
        """One uniform number in ``[0, 1)`` per stream (53 random bits, float64): ``(B,)``."""
        bits = self._words(1, torch.device(device) if device is not None else self.keys.device)[:, 0]
        return _shr(bits, 11).double() * 2.0**-53

    def __call__(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        if B != self.keys.shape[0]:
            raise ValueError(f"this noise source has {self.keys.shape[0]} per-sample streams but x has batch size {B}")
        n = x[0].numel()
        bits = self._words((n + 1) // 2, x.device)  # (B, words): each 64-bit word gives two normals
        # Box–Muller on the two 32-bit halves: u1 ∈ (0, 1] avoids log(0), u2 ∈ [0, 1). The radius is computed in
        # float64 (its tail comes from tiny u1); the angle needs no more than the output precision.
        trig = torch.float64 if x.dtype == torch.float64 else torch.float32
        u1 = (_shr(bits, 32).double() + 1.0) * 2.0**-32
        theta = (bits & 0xFFFFFFFF).to(trig) * (2 * math.pi * 2.0**-32)
        r = torch.sqrt(-2.0 * torch.log(u1)).to(trig)
        z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :n]
        return z.to(x.dtype).reshape(x.shape)
