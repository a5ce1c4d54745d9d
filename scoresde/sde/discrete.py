"""Discrete-time VP schedules (DDPM's beta tables) as continuous-time SDEs, in DPM-Solver's convention.

A table ``beta_0 … beta_{N-1}`` gives ``alphas_cumprod[n] = prod_{i <= n} (1 - beta_i)`` (Ho et al., 2020). Timestep
``n`` sits at ``t_n = (n + 1) / N``, with ``alpha(t_n)² = alphas_cumprod[n]``; between grid points the half log-SNR
``lambda(t) = log(alpha_t / sigma_t)`` is linear in ``t`` (and extrapolated linearly below ``t_0 = 1/N``), so
``alpha_t² = sigmoid(2 lambda)``, ``sigma_t² = sigmoid(-2 lambda)``, and ``t_from_log_snr`` inverts the interpolant
exactly. As for any VP SDE, ``f(t) = d log alpha_t / dt = sigma_t² lambda'(t)`` and ``g(t)² = -2 f(t)``.

The networks of such models take the timestep ``n``; the continuous version is ``c_noise = N t - 1`` (``time_input
"timestep"``, the default for these SDEs), which is ``n`` on the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils import append_dims
from .base import SDE

__all__ = ["DiscreteVPSDE", "linear_betas", "scaled_linear_betas", "cosine_betas"]


def linear_betas(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear table (Ho et al., 2020): ``beta`` evenly spaced from ``beta_start`` to ``beta_end``, float64."""
    return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)


def scaled_linear_betas(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """The latent-diffusion table: ``sqrt(beta)`` evenly spaced, float64."""
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), steps, dtype=torch.float64) ** 2


def _cosine_alpha_bar(u: Tensor, s: float) -> Tensor:
    """``alpha_bar(u) = cos²(((u + s)/(1 + s)) π/2)``, unnormalised (improved DDPM, eq. 17)."""
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM's cosine table (Nichol & Dhariwal, 2021): ``beta_n = min(1 - abar((n+1)/N) / abar(n/N),
    max_beta)``, float64 (diffusers' ``squaredcos_cap_v2``)."""
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    abar = _cosine_alpha_bar(u, s)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


class DiscreteVPSDE(SDE):
    """A VP SDE through the points of a discrete ``beta`` table (see the module docstring).

    Args:
        betas: ``beta_0 … beta_{N-1}``, each in ``(0, 1)``.

    ``alphas_cumprod`` is kept in float64; ``DiscreteVPSDE.linear()``, ``.scaled_linear()`` and ``.cosine()`` build
    the usual tables. ``sampling_eps`` is ``t_0 = 1/N`` (timestep 0).
    """

    noise_condition = "timestep"
    piecewise_in_t = True

    def __init__(self, betas: Tensor | Sequence[float]) -> None:
        b = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if b.numel() < 2 or not bool(torch.isfinite(b).all()) or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(f"betas must be a table of at least 2 values in (0, 1), got {b.numel()} values")
        self.betas = b
        self.alphas_cumprod = torch.cumprod(1 - b, 0)
        self.num_timesteps = N = b.numel()
        self.T, self.sampling_eps = 1.0, 1.0 / N
        self._t = torch.arange(1, N + 1, dtype=torch.float64) / N  # t_n = (n + 1) / N
        # lambda_n = ½ log(abar / (1 - abar)); decreasing in n
        self._lam = 0.5 * (torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod))
        if not bool((self._lam[1:] < self._lam[:-1]).all()):
            raise ValueError("alphas_cumprod must decrease strictly (every beta > 0)")

    @classmethod
    def linear(cls, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVPSDE:
        """DDPM's schedule (``linear`` in diffusers)."""
        return cls(linear_betas(steps, beta_start, beta_end))

    @classmethod
    def scaled_linear(cls, steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteVPSDE:
        """Latent diffusion's schedule (``scaled_linear`` in diffusers)."""
        return cls(scaled_linear_betas(steps, beta_start, beta_end))

    @classmethod
    def cosine(cls, steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteVPSDE:
        """Improved DDPM's schedule (``squaredcos_cap_v2`` in diffusers)."""
        return cls(cosine_betas(steps, s, max_beta))

    def __repr__(self) -> str:
        return (
            f"DiscreteVPSDE(N={self.num_timesteps}, beta_0={float(self.betas[0]):g}, beta_N={float(self.betas[-1]):g})"
        )

    def time_of(self, n: Tensor) -> Tensor:
        """``t_n = (n + 1) / N`` of timesteps ``n`` (any real ``n``): float64."""
        return (torch.as_tensor(n, dtype=torch.float64) + 1) / self.num_timesteps

    def timestep_of(self, t: Tensor) -> Tensor:
        """The (continuous) timestep ``n = N t - 1`` of times ``t``: the networks' input."""
        return t * self.num_timesteps - 1

    # ---- the interpolant: lambda(t) piecewise linear through (t_n, lambda_n) ------------------------------------
    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Left knot index ``i`` (0 … N-2, the end segments extended), slope and ``lambda`` at the left knot."""
        knots, lam = self._t.to(t.device), self._lam.to(t.device)
        i = (torch.searchsorted(knots, t.to(torch.float64).contiguous(), right=True) - 1).clamp(0, len(knots) - 2)
        slope = (lam[i + 1] - lam[i]) / (knots[i + 1] - knots[i])
        return i, slope, lam[i] + slope * (t.to(torch.float64) - knots[i])

    def _log_snr(self, t: Tensor) -> Tensor:
        return self._segment(t)[2].to(_float(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        knots, table = self._t.to(lam.device), self._lam.to(lam.device)
        neg = (-table).contiguous()  # increasing
        i = (torch.searchsorted(neg, (-lam.to(torch.float64)).contiguous(), right=True) - 1).clamp(0, len(neg) - 2)
        frac = (lam.to(torch.float64) - table[i]) / (table[i + 1] - table[i])
        return (knots[i] + frac * (knots[i + 1] - knots[i])).to(_float(lam))

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(2 * self._segment(t)[2]).sqrt().to(_float(t))

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-2 * self._segment(t)[2]).sqrt().to(_float(t))

    def _f(self, t: Tensor) -> Tensor:
        """``f(t) = d log alpha / dt = sigma_t² lambda'(t)`` (negative)."""
        _, slope, lam = self._segment(t)
        return torch.sigmoid(-2 * lam) * slope

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return append_dims(self._f(t), x.ndim).to(x.dtype) * x

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(-2 * self._f(t)).to(_float(t))


def _float(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float64
