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

from ._typing import NoiseFn

__all__ = [
    "PerSampleNoise",
    "PerSampleBrownian",
    "derive_seeds",
    "index_seeds",
    "child_seeds",
    "splitmix64",
    "keys_from_noise",
    "standard_normal",
]


def standard_normal(like: Tensor, generator: torch.Generator | None = None, noise: NoiseFn | None = None) -> Tensor:
    """``N(0, 1)`` draws shaped like ``like`` (its dtype and device): from ``noise`` where given (e.g.
    :class:`PerSampleNoise`), else from ``generator`` on the generator's own device."""
    if noise is not None:
        return noise(like)
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def standard_uniform(
    n: int, device: torch.device | str, generator: torch.Generator | None = None, noise: PerSampleNoise | None = None
) -> Tensor:
    """``U[0, 1)`` draws ``(n,)`` in float64 on ``device``: one per sample from ``noise`` where given (its
    :meth:`PerSampleNoise.uniform`), else from ``generator``."""
    if noise is not None:
        return noise.uniform(device).to(torch.float64)
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_CHILD = _signed(0xD1B54A32D192ED03)


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


def child_seeds(seeds: Tensor, n: int) -> Tensor:
    """``n`` seeds derived from each of ``seeds: (B,)``: ``(B, n)`` int64, whose streams are independent of each other
    and of the parents' (e.g. the particles of one observation, :func:`scoresde.inverse.smc`)."""
    k = torch.arange(1, n + 1, dtype=torch.int64, device=seeds.device)
    return splitmix64(splitmix64(seeds.to(torch.int64)[:, None] ^ _CHILD) + k[None, :] * _GOLDEN)


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
        return _box_muller(bits, n, x.dtype).reshape(x.shape)


def _box_muller(bits: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``n`` standard normals per row from ``bits: (B, ceil(n / 2))`` int64 words (two per word): ``(B, n)``.

    Box–Muller on the two 32-bit halves: u1 ∈ (0, 1] avoids log(0), u2 ∈ [0, 1). The radius is computed in float64
    (its tail comes from tiny u1); the angle needs no more than the output precision.
    """
    trig = torch.float64 if dtype == torch.float64 else torch.float32
    u1 = (_shr(bits, 32).double() + 1.0) * 2.0**-32
    theta = (bits & 0xFFFFFFFF).to(trig) * (2 * math.pi * 2.0**-32)
    r = torch.sqrt(-2.0 * torch.log(u1)).to(trig)
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :n].to(dtype)


def keys_from_noise(noise: NoiseFn, batch: int, device: torch.device) -> Tensor:
    """One 64-bit key per sample drawn through a noise hook (two float64 normals, their bits hashed): ``(B,)`` int64.

    Solvers that need more than a stream of normals (a Brownian path queried at arbitrary times) derive their own
    counter-based generator from it, so each sample's randomness still comes from its own stream.
    """
    bits = noise(torch.empty(batch, 2, dtype=torch.float64, device=device)).view(torch.int64)
    return splitmix64(bits[:, 0] ^ splitmix64(bits[:, 1] + _GOLDEN))


class PerSampleBrownian:
    """One Brownian motion ``W_i(s)``, ``s ∈ [0, span]``, per sample, queried at any per-sample times in any order.

    A virtual Brownian tree (Li et al., 2020; torchsde's ``BrownianTree``) with a counter-based generator keyed per
    sample: ``W(span) = sqrt(span) z_0`` and the midpoint of the dyadic interval with heap index ``k`` is the Brownian
    bridge ``(W(a) + W(b)) / 2 + sqrt((b - a) / 4) z_k``, where ``z_k`` is a fixed hash of ``(key_i, k)``. A query
    descends the tree to intervals of width at most ``tol`` and interpolates linearly there, so any set of queries
    sees one consistent path: an adaptive solver that rejects a step and retries a shorter one gets the bridge value
    given what it has already seen, not fresh noise (which biases the variance). Each query costs ``depth =
    ceil(log2(span / tol))`` normals per element.

    Args:
        keys: ``(B,)`` int64 keys, one per sample (:func:`keys_from_noise`).
        span: length of the time interval.
        numel: elements per sample.
        tol: width of the finest intervals (the variance of an increment is exact to ``tol / 4``).
    """

    def __init__(self, keys: Tensor, span: float, numel: int, tol: float = 1e-6) -> None:
        if not span > 0 or not tol > 0:
            raise ValueError(f"span and tol must be positive, got span={span}, tol={tol}")
        self.keys, self.span, self.numel = keys, float(span), int(numel)
        self.depth = max(1, math.ceil(math.log2(self.span / tol)))
        self.words = (self.numel + 1) // 2

    def _normals(self, rows: Tensor, node: Tensor) -> Tensor:
        """The normals ``z_node`` of samples ``rows``: ``(R, numel)`` float64."""
        k = torch.arange(1, self.words + 1, dtype=torch.int64, device=node.device)
        counter = node[:, None] * self.words + k[None, :]
        return _box_muller(splitmix64(self.keys[rows][:, None] + counter * _GOLDEN), self.numel, torch.float64)

    def __call__(self, s: Tensor, rows: Tensor) -> Tensor:
        """``W_i(s_i)`` for the samples ``rows: (R,)`` at times ``s: (R,)`` in ``[0, span]``: ``(R, numel)`` float64."""
        s = s.to(torch.float64).clamp(0.0, self.span)
        a = torch.zeros_like(s)
        b = torch.full_like(s, self.span)
        node = torch.zeros_like(rows, dtype=torch.int64)
        w_a = torch.zeros(len(rows), self.numel, dtype=torch.float64, device=s.device)
        w_b = math.sqrt(self.span) * self._normals(rows, node)
        node = node + 1
        for _ in range(self.depth):
            m = (a + b) / 2
            w_m = (w_a + w_b) / 2 + ((b - a) / 4).sqrt()[:, None] * self._normals(rows, node)
            left = s < m
            b, a = torch.where(left, m, b), torch.where(left, a, m)
            w_b, w_a = torch.where(left[:, None], w_m, w_b), torch.where(left[:, None], w_a, w_m)
            node = 2 * node + (~left).long()
        frac = ((s - a) / (b - a))[:, None]
        return w_a + frac * (w_b - w_a)
