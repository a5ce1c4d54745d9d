"""A learned variance-preserving noise schedule (Kingma et al., 2021, "Variational diffusion models", VDM).

The schedule is a monotone network ``gamma_eta(t)`` (the negative log-SNR), and

    alpha_t² = sigmoid(-gamma(t)),   sigma_t² = sigmoid(gamma(t)),   SNR(t) = exp(-gamma(t))   (VDM eq. 3–4),

which is a VP SDE: ``-2 log alpha_t = softplus(gamma)``, so ``beta(t) = d/dt softplus(gamma) = gamma'(t)
sigmoid(gamma(t))``, ``f = -½ beta x`` and ``g = sqrt(beta)``. Every solver, the likelihood and guidance use it as
they use any SDE. The endpoints ``gamma(0) = gamma_min`` and ``gamma(1) = gamma_max`` are separate parameters (the
diffusion loss's expectation depends on nothing else, VDM eq. 18); the network only shapes the path between them.

The network (VDM Appendix: a linear part plus a sigmoid MLP, all weights positive, so ``gamma`` increases):

    g̃(t) = w_1 t + Σ_k w_3k sigmoid(w_2k t + b_2k),   w_1, w_2k, w_3k > 0 (softplus of free parameters),
    gamma(t) = gamma_min + (gamma_max - gamma_min) (g̃(t) - g̃(0)) / (g̃(1) - g̃(0)),

with ``gamma'(t)`` in closed form. Half the sigmoid units take ``logit(t)`` instead of ``t`` (slope at least 1, so
``gamma'`` stays finite at the ends): a variance-optimal schedule rises nearly logarithmically within ``1e-4`` of
``t = 1``, which units in ``t`` alone could not follow. It is an ``nn.Module`` as well as an :class:`~scoresde.sde.SDE`, so a
:class:`~scoresde.ScoreModel` holding it trains and checkpoints its parameters with the network's.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import append_dims
from .base import SDE

__all__ = ["MonotoneGamma", "LearnedVPSDE"]


class MonotoneGamma(nn.Module):
    """The monotone network ``gamma_eta(t)`` on ``[0, 1]`` with fixed or learnable endpoints (module docstring).

    Args:
        gamma_min: ``gamma(0)``, the negative log-SNR at ``t = 0`` (VDM: -13.3).
        gamma_max: ``gamma(1)`` (VDM: 5.0).
        hidden: sigmoid units of the MLP part (VDM: 1024).
        learn_endpoints: whether ``gamma_min`` and ``gamma_max`` are parameters (trained by the bound's prior and
            decoder terms) or fixed buffers.

    It starts as the linear schedule ``gamma(t) = gamma_min + (gamma_max - gamma_min) t`` (the MLP's output weights
    start near zero).
    """

    def __init__(
        self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 1024, learn_endpoints: bool = False
    ) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"MonotoneGamma needs gamma_min < gamma_max, got {gamma_min} and {gamma_max}")
        if hidden < 1:
            raise ValueError(f"MonotoneGamma needs hidden >= 1, got {hidden}")
        ends = torch.tensor([float(gamma_min), float(gamma_max)], dtype=torch.float64)
        if learn_endpoints:
            self.ends = nn.Parameter(ends)
        else:
            self.register_buffer("ends", ends)
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.tensor(math.log(math.expm1(1.0)), dtype=torch.float64))  # softplus⁻¹(1)
        # Half the sigmoid units see t, spread over [0, 1] at several steepnesses; half see logit(t), spread over
        # [-12, 12], so the shape can also bend within 1e-5 of either end (where the variance-optimal schedule of
        # data with a small variance at the lowest SNR has a near-logarithmic rise).
        n_t = hidden - hidden // 2
        centers = torch.rand(n_t, generator=g, dtype=torch.float64)
        slopes = torch.exp(torch.empty(n_t, dtype=torch.float64).uniform_(math.log(2.0), math.log(200.0), generator=g))
        self.w2 = nn.Parameter(torch.log(torch.expm1(slopes)))
        self.b2 = nn.Parameter(-slopes * centers)
        self.v2 = nn.Parameter(torch.zeros(hidden // 2, dtype=torch.float64))  # slope 1 + softplus(v2) on logit(t)
        self.c2 = nn.Parameter(torch.empty(hidden // 2, dtype=torch.float64).uniform_(-12.0, 12.0, generator=g))
        self.w3 = nn.Parameter(torch.full((hidden,), -8.0, dtype=torch.float64))  # softplus(-8) ≈ 3e-4

    def extra_repr(self) -> str:
        lo, hi = self.ends.tolist()
        return (
            f"gamma_min={lo:g}, gamma_max={hi:g}, hidden={self.w3.numel()}, learn_endpoints={self.ends.requires_grad}"
        )

    def _raw(self, t: Tensor, detach: bool) -> tuple[Tensor, Tensor]:
        """``g̃(t)`` and ``g̃'(t)``: ``(B,)`` each, in ``t``'s dtype (with the shape parameters detached)."""
        ps = [p.detach() if detach else p for p in (self.w1, self.w2, self.b2, self.v2, self.c2, self.w3)]
        w1, w2, b2, v2, c2, w3 = (p.to(t) for p in ps)
        w1, w2, v2, w3 = F.softplus(w1), F.softplus(w2), 1 + F.softplus(v2), F.softplus(w3)
        s = torch.sigmoid(t[:, None] * w2 + b2)
        inner = (t > 0) & (t < 1)
        u = torch.where(inner, t, 0.5)
        r = torch.sigmoid(torch.logit(u)[:, None] * v2 + c2)
        r = torch.where(inner[:, None], r, t[:, None].expand_as(r))  # the limits 0 and 1 at the ends
        dr = torch.where(inner[:, None], r * (1 - r) * v2 / (u * (1 - u))[:, None], 0.0)  # slope >= 1: finite at ends
        act, dact = torch.cat([s, r], 1), torch.cat([s * (1 - s) * w2, dr], 1)
        return w1 * t + act @ w3, w1 + dact @ w3

    def version(self) -> tuple[int, ...]:
        """The parameters' and endpoints' in-place version counters: what values computed from them are keyed by."""
        return tuple(p._version for p in (*self.parameters(), self.ends))

    def _at_ends(self, t: Tensor, detach: bool) -> Tensor:
        """``g̃(0), g̃(1)`` in ``t``'s dtype; outside autograd kept until a parameter changes (an optimizer step or a
        ``load_state_dict`` bumps its version)."""
        ends = torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device)
        if torch.is_grad_enabled():
            return self._raw(ends, detach)[0]
        key = (t.dtype, t.device, self.version())
        cache = self.__dict__.get("_ends_cache")
        if cache is None or cache[0] != key:
            cache = (key, self._raw(ends, detach)[0])
            self.__dict__["_ends_cache"] = cache
        return cache[1]

    def forward(self, t: Tensor, part: Literal["all", "shape", "ends"] = "all") -> tuple[Tensor, Tensor]:
        """``gamma(t)`` and ``gamma'(t)`` for ``t: (B,)`` in ``[0, 1]``: ``(B,)`` each. ``part="shape"`` detaches the
        endpoints and ``"ends"`` the shape parameters (the two branches of VDM's variance-minimising gradient)."""
        g, dg = self._raw(t, detach=part == "ends")
        g01 = self._at_ends(t, detach=part == "ends")
        lo, hi = (self.ends.detach() if part == "shape" else self.ends).to(t)
        scale = (hi - lo) / (g01[1] - g01[0])
        return lo + scale * (g - g01[0]), scale * dg


class LearnedVPSDE(nn.Module, SDE):
    """The VP SDE of a learned schedule: ``alpha_t² = sigmoid(-gamma(t))``, ``sigma_t² = sigmoid(gamma(t))``,
    ``beta(t) = gamma'(t) sigmoid(gamma(t))`` (module docstring). ``T = 1``; prior ``N(0, I)``.

    Args:
        gamma: the schedule network (default ``MonotoneGamma()``: VDM's endpoints -13.3 and 5, fixed).
    """

    sampling_eps = 1e-3
    noise_condition = "t"
    piecewise_in_t = True
    """Adaptive ODE solvers integrate in ``lambda``: with the exact score the probability-flow ODE in ``lambda`` is the
    same for every schedule with these endpoints (VDM eq. 18's invariance), while in ``t`` a learned shape can rise
    steeply near the ends."""

    def __init__(self, gamma: MonotoneGamma | None = None) -> None:
        nn.Module.__init__(self)
        self.gamma = gamma if gamma is not None else MonotoneGamma()
        self.T = 1.0

    def __repr__(self) -> str:
        return f"LearnedVPSDE({self.gamma.extra_repr()})"

    def _gamma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # The SDE's interface (solvers, likelihood, DSM) sees the current schedule as fixed numbers; the variational
        # loss (scoresde.vdm) trains it by calling the network ``gamma`` itself.
        # Solvers ask at one time for the whole batch: the network then runs on one row, so its cost does not grow
        # with the batch and a sample's schedule values do not depend on the batch it is in.
        with torch.no_grad():
            if t.ndim == 1 and t.numel() > 1 and bool((t == t[0]).all()):
                g, dg = self.gamma(t[:1])
                return g.expand(t.shape).clone(), dg.expand(t.shape).clone()
            return self.gamma(t)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self._gamma(t)[0]).sqrt()

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self._gamma(t)[0]).sqrt()

    def _log_snr(self, t: Tensor) -> Tensor:
        return -0.5 * self._gamma(t)[0]

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # Safeguarded Newton on gamma(t) = -2 lam (gamma' is in closed form) from the bracket of a table of gamma on
        # 1025 times (made once per parameter version): a Newton step that leaves the bracket is replaced by
        # bisection. 2-3 network calls instead of the generic 60 bisections.
        target = -2 * lam
        grid, table = self._inverse_table(lam)
        i = torch.searchsorted(table, target.contiguous()).clamp(1, len(grid) - 1)
        lo, hi = grid[i - 1], grid[i]
        w = ((target - table[i - 1]) / (table[i] - table[i - 1])).clamp(0, 1)
        t = lo + w * (hi - lo)
        for _ in range(40):
            g, dg = self._gamma(t)
            done = (g - target).abs() <= 1e-13 * (1 + target.abs())
            if bool(done.all()):
                break
            above = g > target
            lo, hi = torch.where(above, lo, t), torch.where(above, t, hi)
            step = t - (g - target) / dg
            inside = (step >= lo) & (step <= hi)
            t = torch.where(done, t, torch.where(inside, step, 0.5 * (lo + hi)))
        return t

    def _inverse_table(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Times ``(1025,)`` uniform on ``[0, T]`` and ``gamma`` there, in ``like``'s dtype and device."""
        key = (like.dtype, like.device, self.gamma.version())
        cache = self.__dict__.get("_table_cache")
        if cache is None or cache[0] != key:
            grid = torch.linspace(0.0, self.T, 1025, dtype=like.dtype, device=like.device)
            cache = (key, grid, self._gamma(grid)[0])
            self.__dict__["_table_cache"] = cache
        return cache[1], cache[2]

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t) = gamma'(t) sigmoid(gamma(t))``: ``(B,)``."""
        g, dg = self._gamma(t)
        return dg * torch.sigmoid(g)

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return append_dims(-0.5 * self.beta(t), x.ndim).to(x.dtype) * x

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))
