"""Gaussian-mixture targets whose diffused score, log-density and denoiser are exact.

For data ``p_0 = Σ_k w_k N(mu_k, Sigma_k)`` and any SDE with ``x_t = alpha_t x_0 + sigma_t eps``, the marginal is

    p_t = Σ_k w_k N(alpha_t mu_k, C_k(t)),    C_k(t) = alpha_t² Sigma_k + sigma_t² I.

With ``Sigma_k = U_k diag(lam_k) U_kᵀ`` diagonalised once, ``C_k(t) = U_k diag(alpha_t² lam_k + sigma_t²) U_kᵀ``, so the
score, the log-density and the posterior mean ``E[x_0 | x_t]`` (Tweedie) cost one rotation per component. This is the
ground truth that tests, docs and benchmarks check solvers, losses and likelihoods against; use it to validate yours.

The components are also classes: given the label ``y = k`` the data are ``N(mu_k, Sigma_k)``, so the conditional score
``∇ log p_t(x | y)`` (pass ``y``; ``-1`` means no class), the exact classifier ``p(y | x_t) = r_y`` (the
responsibilities, :meth:`GaussianMixture.log_posterior`) and, for inverse problems, the exact conditional given
observed coordinates or any orthonormal linear observation (:meth:`GaussianMixture.condition`) are closed-form too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from typing import Literal, overload

import torch
from torch import Tensor

from ._typing import ScoreFn
from ._utils import check_batch
from .sde import SDE

__all__ = ["GaussianMixture", "ObservationPosterior"]


def _as_tensor(v: Tensor | Sequence, name: str) -> Tensor:
    try:
        return torch.as_tensor(v, dtype=torch.float64).clone()
    except (TypeError, ValueError) as e:
        raise TypeError(f"GaussianMixture: {name} must be numeric (nested lists or a tensor): {e}") from None


class GaussianMixture:
    """A mixture of ``K`` full-covariance Gaussians in ``D`` dimensions with closed-form diffused quantities.

    Args:
        weights: ``(K,)`` positive, normalised internally.
        means: ``(K, D)``.
        covs: ``(K, D, D)`` symmetric positive definite; or ``(K, D)`` diagonals; or ``(K,)`` isotropic variances.
        shape: the data shape ``(*D)`` samples are returned in (default ``(D,)``); e.g. ``(1, 8, 8)`` for ``D = 64``.

    Every method takes ``x: (B, *shape)`` (flattened internally) and, where it applies, ``t: (B,)`` and an ``sde``;
    without an ``sde`` the quantities are those of the data distribution ``p_0`` itself.
    """

    def __init__(
        self,
        weights: Tensor | Sequence[float],
        means: Tensor | Sequence[Sequence[float]],
        covs: Tensor | Sequence,
        shape: Sequence[int] | None = None,
    ) -> None:
        w, mu, cov = _as_tensor(weights, "weights"), _as_tensor(means, "means"), _as_tensor(covs, "covs")
        if mu.ndim != 2:
            raise ValueError(f"GaussianMixture: means must have shape (K, D), got {tuple(mu.shape)}")
        K, D = mu.shape
        if w.shape != (K,):
            raise ValueError(
                f"GaussianMixture: weights must have shape (K,) = ({K},) to match means, got {tuple(w.shape)}"
            )
        if not bool((w > 0).all()):
            raise ValueError("GaussianMixture: weights must all be positive")
        if cov.shape == (K,):
            cov = cov[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif cov.shape == (K, D):
            cov = torch.diag_embed(cov)
        if cov.shape != (K, D, D):
            raise ValueError(
                f"GaussianMixture: covs must have shape (K, D, D), (K, D) or (K,) with K={K}, D={D}; got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-10):
            raise ValueError("GaussianMixture: each covariance must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if not bool((lam > 0).all()):
            raise ValueError(
                f"GaussianMixture: covariances must be positive definite (smallest eigenvalue {float(lam.min()):.3g})"
            )
        self.shape = tuple(int(s) for s in shape) if shape is not None else (D,)
        if math.prod(self.shape) != D:
            raise ValueError(f"GaussianMixture: shape {self.shape} has {math.prod(self.shape)} entries, expected D={D}")
        self.weights, self.means, self.covs = w / w.sum(), mu, cov
        self._lam, self._U = lam, U  # Sigma_k = U_k diag(lam_k) U_kᵀ
        self._cache: dict[tuple, tuple[Tensor, ...]] = {}

    # ---- constructors ----------------------------------------------------------------------------------------
    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
        """``k`` equal isotropic Gaussians evenly spaced on a circle (the classic 2-D multi-modal toy)."""
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([angles.cos(), angles.sin()], 1)
        return cls(torch.ones(k), means, torch.full((k,), std**2))

    @classmethod
    def random(
        cls,
        dim: int,
        k: int = 3,
        *,
        spread: float = 2.0,
        cond: float = 1e3,
        scale: float = 0.3,
        seed: int = 0,
        shape: Sequence[int] | None = None,
    ) -> GaussianMixture:
        """Random anisotropic mixture in ``dim`` dims: eigenvalues log-spaced over ``cond`` (e.g. three decades).

        Means are ``N(0, spread² I)``, covariances ``scale² U diag(lam) Uᵀ`` with random rotations ``U`` and
        ``lam`` log-uniform in ``[1/cond, 1]``; weights are random but bounded away from zero.
        """
        g = torch.Generator().manual_seed(seed)
        means = spread * torch.randn(k, dim, generator=g, dtype=torch.float64)
        U, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
        lam = scale**2 * torch.logspace(0, -math.log10(cond), dim, dtype=torch.float64)
        covs = U @ torch.diag_embed(lam.expand(k, dim)) @ U.transpose(1, 2)
        weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
        return cls(weights, means, 0.5 * (covs + covs.transpose(1, 2)), shape=shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, shape={self.shape})"

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def mean(self) -> Tensor:
        """Mean of ``p_0``: ``(D,)`` float64."""
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """Covariance of ``p_0`` (law of total covariance): ``(D, D)`` float64."""
        d = self.means - self.mean
        return torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum("k,ki,kj->ij", self.weights, d, d)

    # ---- internals -------------------------------------------------------------------------------------------
    def _params(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(
                p.to(dtype=like.dtype, device=like.device) for p in (self.weights.log(), self.means, self._lam, self._U)
            )
        return self._cache[key]  # type: ignore[return-value]

    def _flat(self, x: Tensor) -> Tensor:
        check_batch(x)
        if x[0].numel() != self.dim:
            raise ValueError(f"x has {x[0].numel()} entries per sample but the mixture has D={self.dim}")
        return x.reshape(x.shape[0], self.dim)

    def _coeffs(self, x: Tensor, t: Tensor | None, sde: SDE | None) -> tuple[Tensor, Tensor]:
        if sde is None:
            if t is not None:
                raise ValueError("pass an sde together with t (or neither, for the data distribution p_0)")
            one = x.new_ones(x.shape[0])
            return one, torch.zeros_like(one)
        if t is None:
            raise ValueError("pass the times t: (B,) together with the sde")
        return sde.alpha(t).to(x.dtype), sde.sigma(t).to(x.dtype)

    def _restrict(self, log_joint: Tensor, y: Tensor | None) -> Tensor:
        """Keep only component ``y_b`` in row ``b`` where ``y_b >= 0`` (conditioning on the class); ``-1`` keeps all."""
        if y is None:
            return log_joint
        y = torch.as_tensor(y, device=log_joint.device)
        if y.shape != log_joint.shape[:1] or y.is_floating_point():
            raise ValueError(f"class labels y must be integers shaped ({log_joint.shape[0]},), got {tuple(y.shape)}")
        if bool(((y < -1) | (y >= self.n_components)).any()):
            raise ValueError(f"class labels must lie in [0, {self.n_components}) or be -1 (no class)")
        keep = (y[:, None] < 0) | (torch.arange(self.n_components, device=y.device)[None] == y[:, None])
        return log_joint.masked_fill(~keep, float("-inf"))

    def _terms(self, x: Tensor, t: Tensor | None, sde: SDE | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per-component quantities at ``x_t``: log r_k (log responsibility numerators), y, var, alpha, U."""
        xf = self._flat(x)
        log_w, mu, lam, U = self._params(xf)
        alpha, sigma = self._coeffs(xf, t, sde)
        a = alpha[:, None, None]
        var = a**2 * lam[None] + (sigma**2)[:, None, None]  # (B, K, D): eigenvalues of C_k(t)
        y = torch.einsum("kdj,bkd->bkj", U, xf[:, None, :] - a * mu[None])  # U_kᵀ (x - alpha mu_k)
        log_n = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return log_w + log_n, y, var, alpha, U

    # ---- public oracle ---------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None, y: Tensor | None = None) -> Tensor:
        """Exact ``log p_t(x)`` in nats: ``(B,)`` (``log p_0`` when ``t`` and ``sde`` are omitted); with class labels
        ``y: (B,)`` the class-conditional ``log p_t(x | y)`` (``-1``: unconditional)."""
        log_joint, *_ = self._terms(x, t, sde)
        out = torch.logsumexp(self._restrict(log_joint, y), dim=1)
        if y is not None:
            y = torch.as_tensor(y, device=out.device)
            log_w = self._params(out)[0]
            out = out - torch.where(y >= 0, log_w[y.clamp_min(0)], torch.zeros_like(out))
        return out

    def score(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None, y: Tensor | None = None) -> Tensor:
        """Exact ``∇_x log p_t(x) = -Σ_k r_k C_k(t)⁻¹ (x - alpha_t mu_k)``: ``(B, *shape)``; with class labels
        ``y: (B,)`` the conditional score ``∇_x log p_t(x | y)`` (component ``y``'s own; ``-1``: unconditional)."""
        log_joint, z, var, _, U = self._terms(x, t, sde)
        r = torch.softmax(self._restrict(log_joint, y), dim=1)  # responsibilities p(k | x_t)
        s = -torch.einsum("kdj,bkj->bd", U, r[..., None] * (z / var))
        return s.reshape(x.shape)

    def log_posterior(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """Exact class posterior ``log p_t(y = k | x_t = x)``: ``(B, K)`` (differentiable in ``x``)."""
        log_joint, *_ = self._terms(x, t, sde)
        return torch.log_softmax(log_joint, dim=1)

    def denoise(self, x: Tensor, t: Tensor, sde: SDE, y: Tensor | None = None) -> Tensor:
        """Exact posterior mean ``E[x_0 | x_t = x] = Σ_k r_k (mu_k + alpha_t Sigma_k C_k(t)⁻¹ (x - alpha_t mu_k))``
        (given the class ``y`` if passed)."""
        log_joint, y_rot, var, alpha, U = self._terms(x, t, sde)
        _, mu, lam, _ = self._params(y_rot)
        r = torch.softmax(self._restrict(log_joint, y), dim=1)
        shrink = alpha[:, None, None] * lam[None] / var
        x0 = torch.einsum("bk,kd->bd", r, mu) + torch.einsum("kdj,bkj->bd", U, r[..., None] * (shrink * y_rot))
        return x0.reshape(x.shape)

    def score_divergence(self, x: Tensor, t: Tensor | None = None, sde: SDE | None = None) -> Tensor:
        """Exact ``∇·s = Δ log p_t(x) = Σ_k r_k (‖C_k⁻¹(x - alpha mu_k)‖² - tr C_k⁻¹) - ‖s‖²``: ``(B,)`` (one pass,
        against ``D`` vector–Jacobian products for autograd's exact trace)."""
        log_joint, z, var, _, U = self._terms(x, t, sde)
        r = torch.softmax(log_joint, dim=1)
        u = z / var  # C_k⁻¹ (x - alpha mu_k) in component k's eigenbasis
        s = -torch.einsum("kdj,bkj->bd", U, r[..., None] * u)
        lap = (r * ((u**2).sum(-1) - (1 / var).sum(-1))).sum(1)
        return lap - (s**2).sum(1)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """The exact score of the diffused mixture as ``score_fn(x, t)`` for samplers and likelihoods; its
        ``divergence(x, t)`` is :meth:`score_divergence` (``log_likelihood`` uses it instead of autograd)."""
        return _ExactScore(self, sde)

    def conditional_score_fn(self, sde: SDE) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        """The exact class-conditional score as ``score_fn(x, t, y)`` (``y = -1``: unconditional), the interface of a
        conditional :class:`~scoresde.ScoreModel` (for ``scoresde.guidance``)."""
        return partial(self._conditional_score_at, sde=sde)

    def _conditional_score_at(self, x: Tensor, t: Tensor, y: Tensor | None = None, *, sde: SDE) -> Tensor:
        return self.score(x, t, sde, y)

    def classifier(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact noise-conditional classifier ``(x, t) -> log p_t(y | x_t)``: ``(B, K)`` logits."""
        return partial(self._log_posterior_at, sde=sde)

    def _log_posterior_at(self, x: Tensor, t: Tensor, *, sde: SDE) -> Tensor:
        return self.log_posterior(x, t, sde)

    def component(self, k: int) -> GaussianMixture:
        """Component ``k`` alone (the class-conditional data distribution ``p_0(x | y = k)``)."""
        if not 0 <= k < self.n_components:
            raise ValueError(f"component index must lie in [0, {self.n_components}), got {k}")
        return GaussianMixture([1.0], self.means[k : k + 1], self.covs[k : k + 1], shape=self.shape)

    def condition(self, observe: Tensor, values: Tensor, noise_std: float = 0.0) -> tuple[GaussianMixture, Tensor]:
        """The exact conditional of ``p_0`` given a linear observation ``v = A x + noise_std · eps``.

        Args:
            observe: a boolean mask ``(*shape)`` of the observed entries, or a matrix ``A: (M, D)`` with orthonormal
                rows (e.g. the grey value of a colour pixel, for colorization; 2×2 average pooling times 2, for a
                low-resolution image).
            values: the observation ``v``: the observed entries ``(M,)`` in flattened order, or ``(*shape)`` from which
                those entries are read.
            noise_std: the observation's noise ``nu`` (0: noiseless). A diffused observation ``z = alpha A x + sigma
                eps`` is ``v = z / alpha`` with ``nu = sigma / alpha`` (a cascade's augmented conditioning).

        Returns:
            ``(mixture, B)``. Noiseless: ``B: (D - M, D)`` has orthonormal rows spanning the unobserved directions
            (for a mask, the unobserved coordinates in order) and ``mixture`` is the exact law of ``B x``. With noise
            every direction stays uncertain: ``B = I`` and ``mixture`` is the law of ``x`` itself. For each
            component, with ``S = A Sigma Aᵀ + nu² I``: ``mu' = mu + Sigma Aᵀ S⁻¹ (v - A mu)``, ``Sigma' = Sigma -
            Sigma Aᵀ S⁻¹ A Sigma``, and weights ``∝ w_k N(v; A mu_k, S_k)``.
        """
        A, B = self._observation_basis(observe)
        if noise_std > 0:
            B = torch.eye(self.dim, dtype=torch.float64)
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
        if v.numel() == self.dim and A.shape[0] != self.dim:
            v = A @ v if observe.dtype != torch.bool else v[observe.flatten().bool()]
        if v.shape != (A.shape[0],):
            raise ValueError(f"values must hold the {A.shape[0]} observed entries (or a full point), got {v.numel()}")
        post = ObservationPosterior(self, A, noise_std)
        weights, mu = post.log_weights(v[None])[0].exp(), post.means(v[None])[0]
        cov_b = B @ post.covs @ B.T
        # components the observation rules out keep a negligible positive weight (the constructor needs w > 0)
        return GaussianMixture(weights.clamp_min(1e-300), mu @ B.T, 0.5 * (cov_b + cov_b.mT)), B

    def _observation_basis(self, observe: Tensor) -> tuple[Tensor, Tensor]:
        """Orthonormal rows ``A`` (observed) and ``B`` (unobserved) that together rotate ``R^D``."""
        observe = torch.as_tensor(observe)
        eye = torch.eye(self.dim, dtype=torch.float64)
        if observe.dtype == torch.bool:
            m = observe.flatten()
            if m.numel() != self.dim or not 0 < int(m.sum()) < self.dim:
                raise ValueError(f"the mask must have {self.dim} entries with some, but not all, observed")
            return eye[m], eye[~m]
        A = observe.to(torch.float64)
        if A.ndim != 2 or A.shape[1] != self.dim or not 0 < A.shape[0] < self.dim:
            raise ValueError(
                f"the observation matrix must be (M, {self.dim}) with 0 < M < {self.dim}, got {tuple(A.shape)}"
            )
        if not torch.allclose(A @ A.T, torch.eye(A.shape[0], dtype=torch.float64), atol=1e-8):
            raise ValueError("the observation matrix must have orthonormal rows (A Aᵀ = I)")
        Q, _ = torch.linalg.qr(torch.cat([A, eye]).T)  # the first M columns span A's rows
        return A, Q[:, A.shape[0] : self.dim].T

    @overload
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = ...,
        dtype: torch.dtype = ...,
        device: torch.device | str | None = ...,
        return_labels: Literal[False] = ...,
        labels: Tensor | None = ...,
    ) -> Tensor: ...

    @overload
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = ...,
        dtype: torch.dtype = ...,
        device: torch.device | str | None = ...,
        return_labels: Literal[True],
        labels: Tensor | None = ...,
    ) -> tuple[Tensor, Tensor]: ...

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        return_labels: bool = False,
        labels: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` exact samples of ``p_0``: ``(n, *shape)`` (and the component labels ``(n,)`` if asked); with
        ``labels: (n,)`` sample ``i`` comes from component ``labels[i]`` (the class-conditional ``p_0(x | y)``)."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if generator is not None and device is None:
            device = generator.device
        if labels is None:
            k = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        else:
            k = torch.as_tensor(labels, device=device).long()
            if k.shape != (n,) or bool(((k < 0) | (k >= self.n_components)).any()):
                raise ValueError(f"labels must be ({n},) component indices in [0, {self.n_components})")
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        lam, U, mu = self._lam.to(device), self._U.to(device), self.means.to(device)
        x = mu[k] + torch.einsum("bij,bj->bi", U[k], lam[k].sqrt() * z)
        x = x.to(dtype).reshape(n, *self.shape)
        return (x, k) if return_labels else x

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities ``p(k | x)`` under ``p_0``: ``(B, K)``."""
        log_joint, *_ = self._terms(x, None, None)
        return torch.softmax(log_joint, dim=1)


class ObservationPosterior:
    """The exact law of ``x`` given a noisy linear observation ``v = A x + nu eps``, for a batch of observations at
    once, and its diffused score (a cascade's stage-2 oracle: ``v`` is the low-resolution image, ``nu = sigma_s /
    alpha_s`` its augmentation).

    For each component, with ``S_k = A Sigma_k Aᵀ + nu² I`` and ``G_k = Sigma_k Aᵀ S_k⁻¹``, the posterior is
    ``N(mu_k + G_k (v - A mu_k), Sigma_k - G_k A Sigma_k)`` with weight ``∝ w_k N(v; A mu_k, S_k)``: the covariances
    do not depend on ``v`` (diagonalised once), the means and weights are linear and Gaussian in it.

    Args:
        mixture: the data distribution.
        A: ``(M, D)`` with orthonormal rows.
        noise_std: ``nu >= 0`` (0: noiseless; the posterior covariances are then singular along ``A``'s rows, which
            the diffused score at ``t > 0`` does not mind).
    """

    def __init__(self, mixture: GaussianMixture, A: Tensor, noise_std: float) -> None:
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        A, _ = mixture._observation_basis(torch.as_tensor(A, dtype=torch.float64))
        self.mixture, self.A, self.noise_std = mixture, A, float(noise_std)
        S = A @ mixture.covs @ A.T + noise_std**2 * torch.eye(A.shape[0], dtype=torch.float64)
        self._gain = mixture.covs @ A.T @ torch.linalg.inv(S)  # (K, D, M)
        cov = mixture.covs - self._gain @ A @ mixture.covs
        self.covs = 0.5 * (cov + cov.mT)
        self._evidence = torch.distributions.MultivariateNormal(mixture.means @ A.T, 0.5 * (S + S.mT))

    @cached_property
    def _eig(self) -> tuple[Tensor, Tensor]:
        """``(lam, U)`` of the posterior covariances, once, when the score or a draw first needs them."""
        lam, U = torch.linalg.eigh(self.covs)
        return lam, U

    def log_weights(self, v: Tensor) -> Tensor:
        """``log p(k | v)``: ``(B, K)`` for observations ``v: (B, M)``."""
        log_joint = self.mixture.weights.log() + self._evidence.log_prob(v.double()[:, None, :])
        return torch.log_softmax(log_joint, dim=1)

    def means(self, v: Tensor) -> Tensor:
        """The components' posterior means ``(B, K, D)``."""
        resid = v.double()[:, None, :] - self.mixture.means @ self.A.T  # (B, K, M)
        return self.mixture.means + torch.einsum("kdm,bkm->bkd", self._gain, resid)

    def score(self, x: Tensor, t: Tensor, sde: SDE, v: Tensor) -> Tensor:
        """``∇_x log p_t(x | v)`` of the diffused posterior at ``x: (B, *shape)``, one observation per row."""
        xf = self.mixture._flat(x).double()
        alpha, sigma = (c.double()[:, None, None] for c in self.mixture._coeffs(xf, t, sde))
        lam, U = (e.to(xf.device) for e in self._eig)
        var = alpha**2 * lam[None] + sigma**2  # (B, K, D)
        z = torch.einsum("kdj,bkd->bkj", U, xf[:, None, :] - alpha * self.means(v))
        log_n = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1))
        r = torch.softmax(self.log_weights(v) + log_n, dim=1)
        return (-torch.einsum("kdj,bkj->bd", U, r[..., None] * (z / var))).reshape(x.shape).to(x.dtype)

    def sample(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One exact draw of ``x | v`` per observation: ``(B, *shape)`` float64."""
        k = torch.multinomial(self.log_weights(v).exp(), 1, generator=generator)[:, 0]
        z = torch.randn(v.shape[0], self.mixture.dim, generator=generator, dtype=torch.float64)
        mu = self.means(v)[torch.arange(v.shape[0]), k]
        lam, U = self._eig
        x = mu + torch.einsum("bij,bj->bi", U[k], lam[k].clamp_min(0).sqrt() * z)
        return x.reshape(v.shape[0], *self.mixture.shape)


class _ExactScore:
    """``score_fn(x, t)`` of a mixture under an SDE, with the divergence hook ``divergence(x, t) -> (B,)``."""

    def __init__(self, mixture: GaussianMixture, sde: SDE) -> None:
        self.mixture, self.sde = mixture, sde

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.score(x, t, self.sde)

    def divergence(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.score_divergence(x, t, self.sde)
