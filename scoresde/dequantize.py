"""Dequantization: a density ``q(u | k)`` on the unit bin ``[0, 1)^D`` above each discrete value ``k``.

A continuous model ``p`` of ``y = k + u`` gives the discrete data a probability ``P(k) = ∫_[0,1)^D p(k + u) du``, and
for any ``q`` (Jensen; Ho et al., 2019, Flow++, §3.1)

    log P(k) >= E_{u ~ q(·|k)} [log p(k + u) - log q(u | k)],

with equality when ``q(u | k) = p(k + u) / P(k)``, the model's own density inside the bin. Uniform dequantization
(``q = 1``, the reference's) is the special case with no ``log q`` term. A truncated normal around the bin centre
concentrates ``u`` where a smooth ``p`` puts its mass, and a *variational* dequantizer learns ``q(u | k)`` per point
and can reach the bound's equality where its family holds ``p(k + u) / P(k)``.

Every dequantizer maps standard normal draws ``n`` (per-sample streams, as everywhere in the project) to ``u`` and
returns ``log q(u | k)`` summed over dimensions; :func:`scoresde.likelihood.bits_per_dim` subtracts it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .transforms import uniform_from_normal

__all__ = ["Dequantizer", "UniformDequantizer", "TruncatedNormalDequantizer", "VariationalDequantizer"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Dequantizer(abc.ABC):
    """Draws ``u ∈ [0, 1)`` above discrete values and gives ``log q(u | k)`` (nats, summed over dims)."""

    @abc.abstractmethod
    def sample(self, raw: Tensor, normal: Tensor) -> tuple[Tensor, Tensor]:
        """``u`` shaped like ``raw: (B, *D)`` from standard normals ``normal`` of that shape, and ``log q``: ``(B,)``."""


class UniformDequantizer(Dequantizer):
    """``u ~ U[0, 1)^D``: ``log q = 0``."""

    def sample(self, raw: Tensor, normal: Tensor) -> tuple[Tensor, Tensor]:
        u = uniform_from_normal(normal)
        return u, u.new_zeros(raw.shape[0])

    def __repr__(self) -> str:
        return "UniformDequantizer()"


def _truncated_normal(normal: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """``N(mean, std²)`` truncated to ``[0, 1]`` by the inverse CDF of ``Φ(normal)`` (differentiable in ``mean`` and
    ``std``), and its log-density per element (float64)."""
    a, b = (0.0 - mean) / std, (1.0 - mean) / std
    Fa, Fb = torch.special.ndtr(a), torch.special.ndtr(b)
    v = torch.special.ndtr(normal.double())
    r = torch.special.ndtri((Fa + v * (Fb - Fa)).clamp(1e-300, 1 - 1e-16))
    u = (mean + std * r).clamp(0.0, 1.0 - 2.0**-40)
    log_q = -0.5 * r * r - LOG_SQRT_2PI - std.log() - (Fb - Fa).log()
    return u, log_q


class TruncatedNormalDequantizer(Dequantizer):
    """``u ~ N(½, std²)`` truncated to the unit bin (``std → ∞``: uniform)."""

    def __init__(self, std: float = 0.3) -> None:
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.std = float(std)

    def sample(self, raw: Tensor, normal: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.full_like(normal, 0.5, dtype=torch.float64)
        u, log_q = _truncated_normal(normal, mean, torch.full_like(mean, self.std))
        return u, log_q.flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"TruncatedNormalDequantizer(std={self.std:g})"


class VariationalDequantizer(nn.Module, Dequantizer):
    """``q(u | k)``: per dimension a normal truncated to the bin whose mean and standard deviation a network reads off
    the discrete point, ``(mean - ½, log std) = net(k / (levels - 1))``, trained by maximizing the bound
    (:meth:`loss`). The family holds the exact answer for Gaussian models: ``p(k + u) / P(k)`` is ``N(mu - k, s²)``
    truncated to the bin.

    Args:
        levels: discrete values per dim (to scale the input to ``[0, 1]``).
        net: ``(B, *D) -> (B, 2, *D)``; default: an MLP on flat points (``hidden`` units, for vector data).
        dim: the flat dimension for the default net.
    """

    def __init__(self, levels: int, dim: int | None = None, net: nn.Module | None = None, hidden: int = 64) -> None:
        super().__init__()
        if net is None:
            if dim is None:
                raise ValueError("give dim (the flat data dimension) for the default network, or a net")
            net = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim))
        self.levels, self.net = int(levels), net

    def _params(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(raw.float() / (self.levels - 1)).double().reshape(raw.shape[0], 2, *raw.shape[1:])
        # the mean may leave the bin (a bin on a density's flank); clamped where the truncation stays well posed
        return (0.5 + out[:, 0]).clamp(-2.0, 3.0), torch.exp(out[:, 1].clamp(-7.0, 3.0))

    def sample(self, raw: Tensor, normal: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self._params(raw)
        u, log_q = _truncated_normal(normal, mean, std)
        return u, log_q.flatten(1).sum(1)

    def loss(self, raw: Tensor, normal: Tensor, log_density: Callable[[Tensor], Tensor]) -> Tensor:
        """``-mean(log p(raw + u) - log q(u | raw))``: the negative bound in nats per point, for ``log_density`` of the
        continuous model over ``y = raw + u`` (in raw units; differentiable)."""
        u, log_q = self.sample(raw, normal)
        return -(log_density(raw.double() + u) - log_q).mean()
