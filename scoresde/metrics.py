"""Sample-quality and score-accuracy metrics measured against a known truth (the analytic mixture)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import append_dims
from .analytic import GaussianMixture
from .sde import SDE

__all__ = [
    "frechet_gaussian",
    "mode_mass_error",
    "cross_entropy_gap",
    "sliced_wasserstein",
    "score_error",
    "mean_stderr",
]


def mean_stderr(per_point: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean of ``per_point: (N,)`` (NaN error for one point)."""
    n = len(per_point)
    return float(per_point.mean()), float(per_point.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _sqrtm_psd(C: Tensor) -> Tensor:
    lam, U = torch.linalg.eigh(C)
    return U @ torch.diag_embed(lam.clamp_min(0).sqrt()) @ U.mT


def frechet_gaussian(samples: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Fréchet (2-Wasserstein) distance² between ``N(mean_s, cov_s)`` fitted to ``samples: (N, *D)`` and ``N(mean, cov)``.

    ``‖m_s - m‖² + tr(C_s + C - 2 (C^½ C_s C^½)^½)``, in float64.
    """
    x = samples.detach().flatten(1).to(torch.float64).cpu()
    m, C = mean.to(torch.float64).cpu(), cov.to(torch.float64).cpu()
    m_s, C_s = x.mean(0), torch.cov(x.T).reshape(len(m), len(m))
    S = _sqrtm_psd(C)
    cross = torch.linalg.eigvalsh(S @ C_s @ S).clamp_min(0).sqrt().sum()
    return float((m_s - m).pow(2).sum() + torch.trace(C_s) + torch.trace(C) - 2 * cross)


def mode_mass_error(samples: Tensor, mixture: GaussianMixture) -> float:
    """Total variation ``½ Σ_k |share_k - w_k|`` between the share of samples per component (most likely component
    under ``p_0``) and the mixture weights."""
    x = samples.detach().to(torch.float64).cpu()
    labels = mixture.responsibilities(x).argmax(1)
    share = torch.bincount(labels, minlength=mixture.n_components).to(torch.float64) / len(labels)
    return float(0.5 * (share - mixture.weights).abs().sum())


def cross_entropy_gap(samples: Tensor, mixture: GaussianMixture, reference: Tensor | float) -> float:
    """Cross-entropy gap in bits/dim: ``(E_ref log p_0 - E_samples log p_0) / (D ln 2)`` with ``p_0`` the exact density.

    ``reference: (M, *D)`` are exact samples (a large set estimates the entropy ``-E log p_0``), or that mean
    ``E_ref log p_0`` in nats as a float, computed once for many calls. 0 for exact samples up to sampling noise;
    positive when the samples put mass where ``p_0`` is low (between the modes of a smeared model), which the Fréchet
    distance to the mean and covariance and the mode masses cannot see.
    """
    log_p = float(mixture.log_prob(samples.detach().to(torch.float64).cpu()).mean())
    if isinstance(reference, Tensor):
        reference = float(mixture.log_prob(reference.detach().to(torch.float64).cpu()).mean())
    return (reference - log_p) / (mixture.dim * math.log(2))


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, *, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance between two equally sized sample sets ``(N, *D)``: the root mean over random
    directions of the squared W2 distance of the 1-D projections."""
    a, b = x.detach().flatten(1).to(torch.float64).cpu(), y.detach().flatten(1).to(torch.float64).cpu()
    if a.shape != b.shape:
        raise ValueError(
            f"sliced_wasserstein needs equally shaped sample sets, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    theta = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(0).values, (b @ theta).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())


@torch.no_grad()
def score_error(
    score_fn: ScoreFn,
    mixture: GaussianMixture,
    sde: SDE,
    n: int = 4096,
    *,
    t_eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    """Relative sigma-weighted score error ``sqrt(E sigma_t² ‖s - s*‖² / E sigma_t² ‖s*‖²)`` over ``t ~ U(t_eps, T)``
    and ``x_t`` from the diffused mixture, with ``s*`` the exact score. 0 is exact; 1 is as bad as predicting zero."""
    x0 = mixture.sample(n, generator=generator)
    t = t_eps + (sde.T - t_eps) * torch.rand(n, generator=generator, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    sigma = append_dims(std, x0.ndim)
    x_t = mean + sigma * torch.randn(x0.shape, generator=generator)
    exact = mixture.score(x_t.double(), t, sde)
    model = score_fn(x_t, t.float()).double()
    s2 = sigma.double() ** 2
    return float(((s2 * (model - exact) ** 2).sum() / (s2 * exact**2).sum()).sqrt())
