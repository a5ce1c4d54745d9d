"""The optimal reverse variance in closed form after training (Bao et al., 2022, "Analytic-DPM", Theorem 1).

A reverse step from ``t`` to ``s < t`` of the DDIM family draws ``x_s = alpha_s x̂_0 + sqrt(sigma_s² - lam²) eps_hat +
lam z`` (``lam² = beta~``, DDPM's posterior variance, for ancestral sampling). Written as a function of the true
``x_0``, its mean has the coefficient ``c = alpha_s - sqrt(sigma_s² - lam²) alpha_t / sigma_t`` on ``x_0 - x̂_0``, so
the Gaussian reverse kernel that minimises the KL to the true reverse process (moment matching, averaged over
``x_t``) keeps the mean and takes the variance

    sigma*² = lam² + c² (sigma_t / alpha_t)² Gamma(t),    Gamma(t) = 1 - E‖eps_hat(x_t, t)‖² / D   (Theorem 1)

because ``E‖x_0 - x̂_0‖² = (sigma_t/alpha_t)² E‖eps - eps_hat‖²`` and ``E‖eps - eps_hat‖² = D - E‖eps_hat‖²`` for the
conditional mean ``eps_hat = E[eps | x_t]``. ``Gamma`` lies in ``[0, 1]`` (clipped there): ``Gamma = 0`` gives ``lam²`` (DDPM's ``beta~``) and ``Gamma = 1`` the
upper bound of Theorem 2, ``lam² + (sqrt(beta̅_n/alpha_n) - sqrt(beta̅_{n-1} - lam²))²`` in DDPM's notation.

``Gamma(t)`` is a property of the trained model and the data: :func:`eps_norm_table` estimates it once from a data
sample on a grid of log-SNR and the ancestral sampler interpolates it (``ancestral`` with ``variance="analytic"``).
For ``N(0, s² I)`` data ``eps_hat = sigma_t x_t / (alpha_t² s² + sigma_t²)`` and ``Gamma(t) = alpha_t² s² / (alpha_t²
s² + sigma_t²)`` exactly; the reverse kernel is then exactly Gaussian and ancestral sampling with ``sigma*²`` is exact at
any number of steps (``tests/test_variances.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims, check_batch
from .noise import standard_normal
from .sde import SDE

__all__ = ["EpsNormTable", "eps_norm_table", "analytic_variance"]


@dataclass(frozen=True, repr=False)
class EpsNormTable:
    """``Gamma = 1 - E‖eps_hat‖²/D`` at increasing half log-SNRs ``lam: (K,)``, with its standard error.

    Attributes:
        lam: float64 grid of ``lambda = log(alpha/sigma)``, increasing.
        gamma: ``Gamma`` at each grid point, clipped to ``[0, 1]``.
        stderr: the Monte Carlo standard error of each value (over the data points).
        n: data points per grid value.
    """

    lam: Tensor
    gamma: Tensor
    stderr: Tensor
    n: int

    def __repr__(self) -> str:
        return f"EpsNormTable({len(self.lam)} log-SNRs in [{float(self.lam[0]):.3g}, {float(self.lam[-1]):.3g}], n={self.n})"

    def at(self, lam: float) -> float:
        """``Gamma`` at half log-SNR ``lam``, linear between grid points and constant beyond the ends."""
        grid = self.lam
        if lam <= float(grid[0]):
            return float(self.gamma[0])
        if lam >= float(grid[-1]):
            return float(self.gamma[-1])
        i = int(torch.searchsorted(grid, torch.tensor([lam], dtype=grid.dtype))[0])
        w = (lam - float(grid[i - 1])) / float(grid[i] - grid[i - 1])
        return float((1 - w) * self.gamma[i - 1] + w * self.gamma[i])

    def state(self) -> dict[str, Any]:
        """A plain dict for a checkpoint."""
        return {"lam": self.lam, "gamma": self.gamma, "stderr": self.stderr, "n": self.n}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpsNormTable:
        return cls(state["lam"].double(), state["gamma"].double(), state["stderr"].double(), int(state["n"]))


@torch.no_grad()
def eps_norm_table(
    score_fn: ScoreFn,
    sde: SDE,
    x0: Tensor,
    *,
    t_min: float | None = None,
    size: int = 64,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> EpsNormTable:
    """Estimate ``Gamma(t) = 1 - E‖eps_hat(x_t, t)‖²/D`` from data ``x0: (N, *D)`` at ``size`` log-SNRs, uniform from
    ``lambda(T)`` to ``lambda(t_min)`` (default: the SDE's ``sampling_eps``); one noise draw per data point and time.
    Costs ``N · size`` score evaluations, in batches of ``batch_size``."""
    check_batch(x0, "x0")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    t_lo = sde.sampling_eps if t_min is None else float(t_min)
    ends = torch.tensor([sde.T, t_lo], dtype=torch.float64)
    lam_T, lam_0 = sde.log_snr(ends).tolist()
    lam = torch.linspace(lam_T, lam_0, size, dtype=torch.float64)
    times = sde.t_from_log_snr(lam)
    D, N = x0[0].numel(), x0.shape[0]
    means, errs = [], []
    for t in times.tolist():
        norms = []
        for xb in x0.split(batch_size):
            tt = torch.full((xb.shape[0],), t, dtype=torch.float64, device=xb.device)
            mean, std = sde.marginal_prob(xb, tt)
            z = standard_normal(xb, generator)
            x_t = mean + append_dims(std, xb.ndim) * z
            eps = -append_dims(std, xb.ndim) * score_fn(x_t, tt.to(xb.dtype))
            norms.append(eps.flatten(1).pow(2).sum(1).double().cpu() / D)
        r = torch.cat(norms)
        means.append(1 - float(r.mean()))
        errs.append(float(r.std()) / math.sqrt(N))
    gamma = torch.tensor(means, dtype=torch.float64).clamp(0.0, 1.0)
    return EpsNormTable(lam, gamma, torch.tensor(errs, dtype=torch.float64), N)


def analytic_variance(
    table: EpsNormTable, alpha_t: float, sigma_t: float, lam_t: float, alpha_s: float, sigma_s: float, lam2: float
) -> float:
    """``sigma*² = lam2 + c² (sigma_t/alpha_t)² Gamma(t)`` with ``c = alpha_s - sqrt(sigma_s² - lam2) alpha_t/sigma_t``
    (module docstring), for a step from ``t`` (``alpha_t, sigma_t``, half log-SNR ``lam_t``) to ``s``."""
    c = alpha_s - math.sqrt(max(sigma_s**2 - lam2, 0.0)) * alpha_t / sigma_t
    return lam2 + c * c * (sigma_t / alpha_t) ** 2 * table.at(lam_t)
