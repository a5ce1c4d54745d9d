"""Variance-preserving (VP) and sub-VP SDEs (Song et al., 2021, eqs. 11 and 29), and the cosine VP schedule (Nichol &
Dhariwal, 2021) in continuous time."""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from .._utils import append_dims
from .base import SDE

__all__ = ["VPSDE", "SubVPSDE", "CosineVPSDE"]


class _VPKernel(SDE):
    """The variance-preserving kernel from ``log alpha_t``: ``sigma_t = sqrt(1 - alpha_t²)``, ``lambda_t = log alpha_t -
    ½ log(1 - alpha_t²)``, both through ``expm1`` (stable near ``t = 0``: the naive ``sigma`` is 2.4% off in float32 at
    ``t = 1e-5``)."""

    @abc.abstractmethod
    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """``log alpha_t``: ``(B,)``."""

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_mean_coeff(t))

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))

    def _log_snr(self, t: Tensor) -> Tensor:
        lmc = self.log_mean_coeff(t)
        return lmc - 0.5 * torch.log(-torch.expm1(2 * lmc))


class VPSDE(_VPKernel):
    """VP SDE, the continuous limit of DDPM: ``dx = -½ beta(t) x dt + sqrt(beta(t)) dw`` (eq. 11).

    ``beta(t) = beta_min + t (beta_max - beta_min)``; ``alpha_t = exp(-¼ t² (beta_max - beta_min) - ½ t beta_min)``,
    ``sigma_t = sqrt(1 - alpha_t²)``; prior ``N(0, I)``.

    Args:
        beta_min: ``beta(0)``, with ``0 <= beta_min < beta_max``.
        beta_max: ``beta(T)``.
        T: end time (1 in the paper).
    """

    sampling_eps = 1e-3
    noise_condition = "t"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(
                f"{type(self).__name__} needs 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}"
            )
        if not T > 0:
            raise ValueError(f"{type(self).__name__} needs T > 0, got T={T}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, T={self.T:g})"

    def beta(self, t: Tensor) -> Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)``: ``(B,)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """``log alpha_t = -∫_0^t beta(s) ds / 2 = -¼ t² (beta_max - beta_min) - ½ t beta_min``: ``(B,)``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _t_from_log_mean_coeff(self, lmc: Tensor) -> Tensor:
        # Root of ¼ Δβ t² + ½ β_min t + lmc = 0 in the cancellation-free form t = -2c / (b + sqrt(b² - 4ac)).
        b = 0.5 * self.beta_min
        return -2 * lmc / (b + torch.sqrt(b**2 - (self.beta_max - self.beta_min) * lmc))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha² = 1 / (1 + e^{-2 lambda})  =>  log alpha = -½ softplus(-2 lambda)
        return self._t_from_log_mean_coeff(-0.5 * torch.nn.functional.softplus(-2 * lam))

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return append_dims(-0.5 * self.beta(t), x.ndim).to(x.dtype) * x

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))


class SubVPSDE(VPSDE):
    """Sub-VP SDE (eq. 29): VP drift with ``g(t)² = beta(t) (1 - exp(-2 ∫_0^t beta))``.

    Same mean as VP; std ``sigma_t = 1 - alpha_t²`` (no square root), always below the VP std; prior ``N(0, I)``.
    """

    def _diffusion(self, t: Tensor) -> Tensor:
        # 1 - exp(-2 ∫beta) = 1 - alpha_t⁴ = -expm1(4 log alpha_t)
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_mean_coeff(t)))

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self.log_mean_coeff(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        lmc = self.log_mean_coeff(t)
        return lmc - torch.log(-torch.expm1(2 * lmc))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha / (1 - alpha²) = q = e^lambda  =>  q alpha² + alpha - q = 0  =>  alpha = 2q / (1 + sqrt(1 + 4q²))
        q = torch.exp(lam)
        return self._t_from_log_mean_coeff(torch.log(2 * q) - torch.log1p(torch.sqrt(1 + 4 * q**2)))


class CosineVPSDE(_VPKernel):
    """The continuous cosine VP SDE: ``alpha_t² = abar(t) / abar(0)`` with ``abar(t) = cos²(((t + s)/(1 + s)) π/2)``
    (improved DDPM), ``sigma_t² = 1 - alpha_t²``.

    ``T = 0.9946`` by default (DPM-Solver's choice: ``abar`` vanishes at ``t = 1``, where the drift diverges).
    ``f(t) = d log alpha / dt = -(π/2) tan(θ_t) / (1 + s)`` with ``θ_t = ((t + s)/(1 + s)) π/2``, ``g² = -2 f``.
    """

    noise_condition = "t"

    def __init__(self, s: float = 0.008, T: float = 0.9946) -> None:
        if not s > 0:
            raise ValueError(f"CosineVPSDE needs s > 0, got {s}")
        if not 0 < T < 1:
            raise ValueError(f"CosineVPSDE needs 0 < T < 1 (alpha vanishes at t = 1), got {T}")
        self.s, self.T = float(s), float(T)
        self._log_cos0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def __repr__(self) -> str:
        return f"CosineVPSDE(s={self.s:g}, T={self.T:g})"

    def _theta(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """``log alpha_t = log cos θ_t - log cos θ_0``: ``(B,)``."""
        return torch.log(torch.cos(self._theta(t))) - self._log_cos0

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # log alpha = -½ softplus(-2 lambda); cos θ = alpha cos θ_0
        log_alpha = -0.5 * torch.nn.functional.softplus(-2 * lam)
        theta = torch.arccos(torch.exp(log_alpha + self._log_cos0))
        return theta * (2 / math.pi) * (1 + self.s) - self.s

    def _f(self, t: Tensor) -> Tensor:
        return -(math.pi / 2) / (1 + self.s) * torch.tan(self._theta(t))

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return append_dims(self._f(t), x.ndim).to(x.dtype) * x

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(-2 * self._f(t))
