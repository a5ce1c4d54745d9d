"""Variance-exploding (VE) SDE, the continuous limit of SMLD/NCSN (Song et al., 2021, eq. 9)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SDE

__all__ = ["VESDE"]


class VESDE(SDE):
    """VE SDE: ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw`` with ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.

    ``alpha_t = 1`` and ``sigma_t = sigma(t)``; prior ``N(0, sigma_max² I)``.

    Convention (as in the reference implementation): the perturbation std is ``sigma(t)``, not the strictly exact
    ``sqrt(sigma(t)² - sigma_min²)``. Equivalently, time 0 of the forward SDE holds the data already convolved with
    ``N(0, sigma_min² I)``; every formula in scoresde (transitions, analytic targets, likelihoods) uses this convention
    consistently, so nothing mixes the two.

    Args:
        sigma_min: noise scale at t = 0 (``0 < sigma_min < sigma_max``).
        sigma_max: noise scale at t = T; rule of thumb: the largest pairwise distance in the data
            (50 for CIFAR-10, 90 for CelebA 64, 348 at 256 px, 1348 at 1024 px).
        T: end time.
    """

    sampling_eps = 1e-5
    noise_condition = "log_sigma"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if not T > 0:
            raise ValueError(f"VESDE needs T > 0, got T={T}")
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), float(T)
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, T={self.T:g})"

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def _diffusion(self, t: Tensor) -> Tensor:
        return self._sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t / self.T * self._log_ratio)

    def _log_snr(self, t: Tensor) -> Tensor:
        return -(math.log(self.sigma_min) + t / self.T * self._log_ratio)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return -(lam + math.log(self.sigma_min)) / self._log_ratio * self.T
