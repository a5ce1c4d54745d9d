"""The continuous-time variational bound on ``log p`` of the reverse SDE (Song et al., 2021, "Maximum likelihood
training of score-based diffusion models", Theorem 1 and its denoising form; Kingma et al., 2021, VDM, eq. 17).

For data ``x`` and ``x_t = alpha_t x + sigma_t eps`` the model's reverse SDE satisfies ``-log p^SDE(x) <= L(x)`` with

    L(x) = -E[log pi(x_T)] + ∫_eps^T { ½ (g²/sigma²) E[‖eps_hat(x_t, t) - eps‖² - D] - ∇·f } dt,

``eps_hat = -sigma_t s(x_t, t)`` and ``∇·f = D c(t)`` for the linear drift ``f = c(t) x``, whose integral is
``D log(alpha_T / alpha_eps)``. With the half log-SNR ``lambda = log(alpha/sigma)``, ``dlambda/dt = -g²/(2 sigma²)``,
so the time integral is ``∫ E[‖eps_hat - eps‖² - D] dlambda`` over ``[lambda_T, lambda_eps]``. Drawing ``lambda``
uniformly there is importance sampling of ``t`` with density ``∝ g²/sigma²`` (the likelihood weighting's own): each
draw contributes ``(lambda_eps - lambda_T) (‖eps_hat - eps‖² - D)``, with no ``1/t`` blow-up near ``t_eps``.

The draws are stratified: one ``lambda`` in each of ``n_t`` equal strata, which halved the estimator's variance on the
ring against independent draws (antithetic ``eps`` gained nothing at twice the cost). The standard error pairs
neighbouring strata, ``sqrt(Σ_j (h_2j - h_2j+1)²) / n_t``, which is unbiased where neighbouring strata share a mean
and conservative otherwise.

Control variate: ``E‖eps‖² = D`` at every ``t``, so ``‖eps_hat - eps‖² - D`` and ``‖eps_hat‖² - 2 eps_hat·eps`` have
the same mean. The first has little variance at low SNR (``eps_hat ≈ eps``), the second at high SNR
(``eps_hat ≈ 0``); each draw uses ``(1 - w)`` of the first and ``w = alpha²/(alpha² + sigma²)`` of the second, which
leaves the mean unchanged.

With the exact score and the exact ``p_T`` as ``pi`` the bound is tight: ``L(x) = E[-log p_eps(x_eps)]`` over
``x_eps ~ N(alpha_eps x, sigma_eps² I)``, i.e. ``-log p_eps(x)`` up to ``O(sigma_eps²)`` (``tests/test_variational.py``
checks it on the analytic mixtures). With any other score the bound lies above the data's entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._typing import NoiseFn, ScoreFn
from ._utils import append_dims, check_batch
from .likelihood import GaussianPrior, check_t_eps, nats_to_bits_per_dim
from .noise import standard_normal
from .sde import SDE
from .transforms import uniform_from_normal

__all__ = ["ELBOResult", "elbo"]


@dataclass
class ELBOResult:
    """Per-sample output of :func:`elbo`, all ``(B,)`` in nats.

    Attributes:
        logp: the lower bound ``-L(x)`` on ``log p^SDE(x)`` (a Monte Carlo estimate of it).
        stderr: its standard error over the ``n_t`` stratified time draws (module docstring).
        prior: ``E[log pi(x_T)]`` (in closed form for a Gaussian prior).
        diffusion: the estimate of ``∫ ½ (g²/sigma²) E[‖eps_hat - eps‖² - D] dt``.
        drift: ``D log(alpha_T / alpha_eps)``, the drift's part (exact).
        n_t: time draws per sample.
    """

    logp: Tensor
    stderr: Tensor
    prior: Tensor
    diffusion: Tensor
    drift: Tensor
    n_t: int

    def bits_per_dim(self, dim: int, offset: float = 0.0) -> Tensor:
        """The bound in bits/dim, ``-logp / (D ln 2) + offset`` (an upper bound on the model's bits/dim): ``(B,)``."""
        return nats_to_bits_per_dim(self.logp, dim, offset)


def elbo(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    n_t: int = 256,
    t_eps: float = 1e-5,
    prior: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
) -> ELBOResult:
    """The continuous-time variational lower bound on ``log p(x)`` for every sample of ``x: (B, *D)``.

    Args:
        score_fn: ``score_fn(x, t)``, as for :func:`scoresde.log_likelihood`.
        n_t: importance-sampled times (each with its own ``eps``) per sample, even: one per stratum of ``lambda``;
            one score call on the batch each.
        t_eps: the lower end of the time integral.
        prior: ``log pi`` at ``T``; ``None``: the SDE's ``N(0, prior_std² I)``. Gaussian priors (that one and
            :class:`~scoresde.likelihood.GaussianPrior`) enter through ``E[log pi(x_T)]`` in closed form; any other
            callable is averaged over the same ``n_t`` draws of ``x_T``.
        generator, noise: where the time draws and ``eps`` come from (``noise``, e.g. ``PerSampleNoise``, makes each
            sample's value independent of its batch).
    """
    check_batch(x)
    check_t_eps(sde, t_eps)
    if n_t < 2 or n_t % 2:
        raise ValueError(f"n_t must be even and >= 2 (the standard error pairs neighbouring strata), got {n_t}")
    B, D = x.shape[0], x[0].numel()
    ends = torch.tensor([t_eps, sde.T], dtype=torch.float64, device=x.device)
    lam_eps, lam_T = (float(v) for v in sde.log_snr(ends))  # lambda = log(alpha/sigma), decreasing in t
    a_eps, a_T = (float(v) for v in sde.alpha(ends))
    width = lam_eps - lam_T
    draws = []
    with torch.no_grad():
        for k in range(n_t):  # one draw in each of n_t equal strata of lambda
            u = (k + uniform_from_normal(standard_normal(x.new_empty(B, 1), generator, noise)[:, 0])) / n_t
            lam = lam_T + width * u
            t = sde.t_from_log_snr(lam).clamp(t_eps, sde.T)
            alpha, sigma = sde.alpha(t).to(x.dtype), sde.sigma(t).to(x.dtype)
            eps = standard_normal(x, generator, noise)
            xt = append_dims(alpha, x.ndim) * x + append_dims(sigma, x.ndim) * eps
            eps_hat = -append_dims(sigma, x.ndim) * score_fn(xt, t)
            w = (alpha**2 / (alpha**2 + sigma**2)).double()
            low_snr = (eps_hat - eps).flatten(1).pow(2).sum(1).double() - D  # small where eps_hat ≈ eps
            high_snr = (eps_hat.pow(2) - 2 * eps_hat * eps).flatten(1).sum(1).double()  # small where eps_hat ≈ 0
            draws.append(width * ((1 - w) * low_snr + w * high_snr))
    h = torch.stack(draws)  # (n_t, B)
    diffusion = h.mean(0)
    stderr = (h[0::2] - h[1::2]).pow(2).sum(0).sqrt() / n_t  # neighbouring strata paired: slightly conservative
    drift = torch.full_like(diffusion, D * math.log(a_T / a_eps))
    log_prior = _expected_log_prior(sde, prior, x, a_T, float(sde.sigma(ends[1:])[0]), n_t, generator, noise)
    logp = log_prior - diffusion + drift
    return ELBOResult(logp=logp, stderr=stderr, prior=log_prior, diffusion=diffusion, drift=drift, n_t=n_t)


def _expected_log_prior(
    sde: SDE,
    prior: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    a_T: float,
    s_T: float,
    n_t: int,
    generator: torch.Generator | None,
    noise: NoiseFn | None,
) -> Tensor:
    """``E[log pi(alpha_T x + sigma_T eps)]``, ``(B,)`` float64: closed form for Gaussian priors, else averaged."""
    mean = a_T * x.flatten(1).double()
    D = mean.shape[1]
    if prior is None:  # N(0, s² I): -½ (‖m‖² + D sigma_T²) / s² - ½ D log(2 pi s²)
        s2 = sde.prior_std**2
        return -0.5 * (mean.pow(2).sum(1) + D * s_T**2) / s2 - 0.5 * D * math.log(2 * math.pi * s2)
    if isinstance(prior, GaussianPrior):  # log pi(m) - ½ sigma_T² tr(Σ⁻¹)
        chol = prior.chol.to(mean.device)
        trace = (1 / chol).pow(2).sum() if chol.ndim == 1 else torch.cholesky_inverse(chol).diagonal().sum()
        return prior(mean) - 0.5 * s_T**2 * trace
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(n_t):
        total += prior(a_T * x + s_T * standard_normal(x, generator, noise)).double()
    return total / n_t
