"""Solvers of the reverse-time SDE ``dx = [f - g² s] dt + g dw̄`` (Song et al., 2021, eq. 6).

Euler–Maruyama, the reverse-diffusion predictor and ancestral sampling are written here as one-step classes; the
higher-order SDE methods come from torchsde (``srk``, ``milstein``, ``reversible_heun``, ...), run forward in
``s = T - t`` with an explicit Brownian interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from ..noise import PerSampleBrownian, keys_from_noise
from ..sde import SDE
from ..variances import EpsNormTable, analytic_variance
from .base import (
    GaussianStepSolver,
    IntegratorSolver,
    State,
    Step,
    Transition,
    diffusion_at,
    eps_and_x0,
    forward_transition,
    posterior_coefficients,
    tvec,
)

__all__ = [
    "EulerMaruyama",
    "ReverseDiffusion",
    "Ancestral",
    "TorchSDE",
    "SRK",
    "Milstein",
    "ReversibleHeun",
    "AdaptiveReverseSDE",
]


@dataclass
class EulerMaruyama(GaussianStepSolver):
    """Euler–Maruyama on the reverse SDE: ``x ← x + [f - g² s] Δt + g sqrt(|Δt|) z`` with ``Δt = t_next - t < 0``.

    As in the reference implementation, the last step returns the noise-free mean. Weak order 1. The noise is
    additive (``g`` depends on ``t`` only), so along the path the strong order is 1 rather than the general ½; the
    noise-free last step drops a ``g sqrt(h)`` term, so the final sample's pathwise error is ``O(h^½)``
    (``tests/test_solvers.py`` measures both slopes).
    """

    convergence_order = 1.0
    strong_order = 1.0
    stochastic = True
    evaluations_per_step = 1

    def transition(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> Transition:
        ct, cn = ctx.now, ctx.next
        x, tt = state.x, tvec(state.x, ct.t)
        dt = cn.t - ct.t
        score = score_fn(x, tt)
        x_mean = x + (sde.drift(x, tt) - ct.g**2 * score) * dt
        x0 = (x + ct.sigma**2 * score) / ct.alpha  # Tweedie
        return Transition(x_mean, ct.g * math.sqrt(-dt), denoised=x0)


@dataclass
class ReverseDiffusion(GaussianStepSolver):
    """The reverse-diffusion predictor (Song et al., 2021, eq. 46): with the forward step ``x_t = x_s + f + G z``
    from ``sde.discretize``, ``x_s ← x_t - f + G² s(x_t, t) + G z``. The last step returns the mean. Weak order 1.

    The drift of every SDE here is linear in ``x``, so ``f = (a - 1) x`` and ``x_mean = (2 - a) x + G² s``. With the
    base class's ``discretize`` (the perturbation kernel: ``a = alpha_t / alpha_s``, ``G² = sigma_t² - a² sigma_s²``)
    ``a`` and ``G`` come from the step's coefficients; an SDE that overrides ``discretize`` is asked once per step, on
    a row of ones.
    """

    convergence_order = 1.0
    stochastic = True
    evaluations_per_step = 1
    requires = ("discretize",)

    @staticmethod
    def _kernel(sde: SDE, ctx: Step, like: Tensor) -> tuple[float, float]:
        """``(a, G)`` of the forward step from ``ctx.next.t`` up to ``ctx.now.t``."""
        ct, cn = ctx.now, ctx.next
        if type(sde).discretize is SDE.discretize:
            a, G2 = forward_transition(ct, cn)
            return a, math.sqrt(G2)
        one = torch.ones_like(like[:1])
        f, G = sde.discretize(one, tvec(one, ct.t), tvec(one, cn.t))
        return 1.0 + float(f.flatten()[0]), float(G[0])

    def transition(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> Transition:
        x = state.x
        a, G = self._kernel(sde, ctx, x)
        score = score_fn(x, tvec(x, ctx.now.t))
        x_mean = (2.0 - a) * x + G**2 * score
        x0 = (x + ctx.now.sigma**2 * score) / ctx.now.alpha  # Tweedie
        return Transition(x_mean, G, denoised=x0)


@dataclass
class Ancestral(GaussianStepSolver):
    """Ancestral sampling from the exact Gaussian posterior ``q(x_s | x_t, x_0 = x̂_0(x_t))`` (Ho et al., 2020,
    Algorithm 2; Song & Ermon's SMLD ancestral sampler), written once for any ``x_t = alpha_t x_0 + sigma_t eps``.

    With ``a = alpha_t / alpha_s`` and ``G² = sigma_t² - a² sigma_s²`` the posterior mean is
    ``(a sigma_s² x_t + alpha_s G² x̂_0) / sigma_t²`` and its variance ``G² sigma_s² / sigma_t²`` (``variance="posterior"``,
    DDPM's ``beta~``; this is ``ddim`` with ``eta = 1``), ``G²`` (``variance="large"``, DDPM's ``beta``) or
    Analytic-DPM's optimal ``beta~ + c² (sigma_t/alpha_t)² Gamma(t)`` (``variance="analytic"``,
    :mod:`scoresde.variances`; ``table`` holds the model's ``Gamma``, which ``scoresde sample`` takes from the
    checkpoint) or improved DDPM's learned ``exp(v log G² + (1 - v) log beta~)`` per dimension
    (``variance="learned"``, :mod:`scoresde.hybrid`; ``weights`` is the model's ``variance_weight``, which reuses the
    step's score evaluation). The last step returns the mean. Weak order 1.

    Args:
        variance: ``"posterior"``, ``"large"``, ``"analytic"`` or ``"learned"``.
        table: the :class:`~scoresde.variances.EpsNormTable` of the model (``variance="analytic"`` only).
        weights: ``v(x_t, t) -> (B, *D)``, e.g. ``ScoreModel.variance_weight`` (``variance="learned"`` only).
    """

    variance: str = "posterior"
    table: EpsNormTable | None = None
    weights: ScoreFn | None = None

    convergence_order = 1.0
    stochastic = True
    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if self.variance not in ("posterior", "large", "analytic", "learned"):
            raise ValueError(
                f"ancestral variance must be 'posterior', 'large', 'analytic' or 'learned', got {self.variance!r}"
            )
        if self.table is not None and not isinstance(self.table, EpsNormTable):
            raise ValueError(f"ancestral table must be an EpsNormTable (scoresde.variances), got {type(self.table)}")

    def transition(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> Transition:
        ct, cn = ctx.now, ctx.next
        x = state.x
        c_t, c_0, posterior = posterior_coefficients(ct, cn)
        _, x0 = eps_and_x0(score_fn, x, ct)
        mean = c_t * x + c_0 * x0
        if ctx.is_last:  # the mean is returned; no variance is needed (nor, for "analytic", its table)
            return Transition(mean, math.sqrt(posterior), denoised=x0)
        _, G2 = forward_transition(ct, cn)
        if self.variance == "analytic":
            if self.table is None:
                raise ValueError(
                    "ancestral variance='analytic' needs the model's table: scoresde.variances.eps_norm_table(model, "
                    "sde, data) (checkpoints written by `scoresde fit` carry one)"
                )
            std: float | Tensor = math.sqrt(
                analytic_variance(self.table, ct.alpha, ct.sigma, ct.lam, cn.alpha, cn.sigma, posterior)
            )
        elif self.variance == "learned":
            if self.weights is None:
                raise ValueError(
                    "ancestral variance='learned' needs the model's weights: Ancestral(variance='learned', "
                    "weights=model.variance_weight) for a ScoreModel(learn_variance=True)"
                )
            v = self.weights(x, tvec(x, ct.t).to(x.dtype))  # per element: exp(v log G² + (1 - v) log beta~)
            std = torch.exp(0.5 * (v * math.log(G2) + (1 - v) * math.log(posterior)))
        else:
            std = math.sqrt(posterior if self.variance == "posterior" else G2)
        return Transition(mean, std, denoised=x0)


class _FlippedReverseSDE(torch.nn.Module):
    """The reverse SDE in ``s = T - t`` as torchsde wants it: ``dy = [g² s - f] ds + g dW_s`` on flat ``(B, d)``.

    The noise is additive (``g`` depends on time only), which lets SRK use its 2-stage additive scheme (3 drift
    evaluations per step, against 10 for the diagonal scheme). Steps only need ``g_prod = g(t) v``; ``g`` itself, a
    ``(B, d, d)`` multiple of the identity, is an expanded view that torchsde reads once for its shape check.
    """

    noise_type = "additive"

    def __init__(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__()
        self.score_fn, self.sde, self.shape, self.sde_type = score_fn, sde, shape, sde_type

    def _t(self, s: Tensor) -> float:
        return min(max(self.sde.T - float(s), 0.0), self.sde.T)

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        t, x = self._t(s), y.view(self.shape)
        tt = tvec(x, t)
        return (diffusion_at(self.sde, t) ** 2 * self.score_fn(x, tt) - self.sde.drift(x, tt)).flatten(1)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        eye = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
        return (diffusion_at(self.sde, self._t(s)) * eye).expand(y.shape[0], -1, -1)

    def g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return diffusion_at(self.sde, self._t(s)) * v


@dataclass
class TorchSDE(IntegratorSolver):
    """The reverse SDE through ``torchsde.sdeint`` with any of its fixed-step methods, run forward in ``s = T - t``
    with an explicit ``BrownianInterval`` (torchsde's default Brownian motion costs ~1.5 s per call).

    Steps use a fixed ``dt``, so only the ``uniform`` grid is accepted. The Brownian interval is seeded from the
    caller's randomness but draws for the whole batch at once, so these solvers are reproducible but a sample
    depends on its batch (``per_sample_noise = False``). ``sdeint`` evaluates the drift once more to check shapes,
    and the counted NFE includes that call. The last step is stochastic (no noise-free final mean); use
    ``denoise=True`` for a Tweedie finish. Callbacks run after the solve, from the states at the grid times.

    Args:
        method: a torchsde method: ``"srk"`` (strong order 1.5 for additive noise),
            ``"milstein"``, ``"euler"``, ``"reversible_heun"``, ``"midpoint"``, ``"heun"``, ``"euler_heun"``.
    """

    method: str = "srk"

    convergence_order = 1.0
    strong_order: ClassVar[float | None] = None
    stochastic = True
    evaluations_per_step = 1
    per_sample_noise = False
    _STRATONOVICH: ClassVar[tuple[str, ...]] = ("reversible_heun", "midpoint", "heun", "euler_heun", "log_ode")
    _ITO: ClassVar[tuple[str, ...]] = ("euler", "milstein", "srk")

    def __post_init__(self) -> None:
        if self.method not in self._ITO + self._STRATONOVICH:
            raise ValueError(
                f"unknown torchsde method {self.method!r}; available: {', '.join(self._ITO + self._STRATONOVICH)}"
            )

    def integrate(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn, every_step: bool
    ) -> Tensor:
        import torchsde

        h = timesteps[:-1] - timesteps[1:]
        if not torch.allclose(h, h[0].expand_as(h), rtol=1e-9, atol=0):
            raise ValueError(f"solver {self.method!r} (torchsde) steps with a fixed dt; use grid='uniform'")
        # Itô and Stratonovich coincide for additive noise, so each method gets the type it is written for.
        sde_type = "stratonovich" if self.method in self._STRATONOVICH else "ito"
        flipped = _FlippedReverseSDE(score_fn, sde, tuple(x.shape), sde_type)
        s = (sde.T - timesteps).to(device=x.device, dtype=x.dtype)
        y0 = x.flatten(1)
        # Seed the Brownian interval from the caller's randomness (one draw per sample through the noise hook).
        entropy = hash(tuple(noise(x[:, :1].flatten(1)).flatten().tolist())) & 0x7FFFFFFF
        bm = torchsde.BrownianInterval(
            t0=float(s[0]),
            t1=float(s[-1]),
            size=tuple(y0.shape),
            dtype=y0.dtype,
            device=y0.device,
            entropy=entropy,
            dt=float(h[0]),
            levy_area_approximation="space-time" if self.method == "srk" else "none",
        )
        query = s if every_step else s[[0, -1]]
        ys = torchsde.sdeint(flipped, y0, query, bm=bm, method=self.method, dt=float(h[0]))
        return ys.view(len(query), *x.shape)


@dataclass
class SRK(TorchSDE):
    """torchsde's stochastic Runge–Kutta (Rößler, 2010) on the reverse SDE: strong order 1.5 for additive noise."""

    method: str = "srk"
    strong_order = 1.5


@dataclass
class Milstein(TorchSDE):
    """torchsde's Milstein method on the reverse SDE (equal to Euler–Maruyama for additive noise): strong order 1."""

    method: str = "milstein"
    strong_order = 1.0


@dataclass
class ReversibleHeun(TorchSDE):
    """torchsde's reversible Heun method (Kidger et al., 2021) on the reverse SDE, in its Stratonovich form."""

    method: str = "reversible_heun"
    strong_order = 1.0


def _round_mantissa(h: Tensor, bits: int = 24) -> Tensor:
    """``h`` rounded to ``bits`` significant bits. Vectorised and scalar ``pow``/``exp`` differ in the last bit, so a
    step size computed in a batch and alone could differ by an ulp, and near ``t_end`` the step-size recursion
    amplifies that to ~1e-6 in the sample; rounding makes each sample's steps (almost surely) batch-independent."""
    m, e = torch.frexp(h)
    return torch.ldexp(torch.round(torch.ldexp(m, torch.tensor(bits))), e - bits)


@dataclass
class AdaptiveReverseSDE(IntegratorSolver):
    """The reverse SDE with a tolerance instead of a step count: "Gotta Go Fast" (Jolicoeur-Martineau et al., 2021,
    Algorithm 1), with a step size per sample.

    Each attempt from ``t`` to ``t - h`` takes an Euler–Maruyama step ``x' = x - h b(x, t) + g(t) ΔW`` and the
    improved-Euler step ``x'' = ½ [x' + x - h b(x', t - h) + g(t - h) ΔW]`` with the same Brownian increment, where
    ``b = f - g² s`` is the reverse drift (2 score evaluations). The error ``E = RMS((x' - x'') / δ)`` with
    ``δ = max(atol, rtol · max(|x'|, |x'_prev|))`` (eq. 8) decides: ``E ≤ 1`` accepts ``x''`` (extrapolation), and in
    either case ``h ← θ h E^{-r}``. Samples step on their own: each has its own ``t`` and ``h``. The score is always
    called on the whole batch (scores that close over per-sample data, such as class labels or guidance, need it);
    samples that have finished stay put until the last one arrives.

    Unlike the paper, which draws fresh noise after a rejection (measured here: 1.14–1.46× the standard deviation
    of N(0, I) data at loose tolerances), the increments come from one Brownian path per sample
    (:class:`~scoresde.noise.PerSampleBrownian`), so a retried shorter step sees the bridge value and the path stays
    a Brownian motion. The last step is stochastic like the torchsde solvers (``denoise=True`` for a Tweedie finish);
    ``steps`` and the grid are ignored except for the times asked for (which every sample steps onto exactly).

    Args:
        rtol, atol: relative and absolute tolerances (the paper's ε_rel, ε_abs for data in [-1, 1]).
        h_init: first step size, as a fraction of the time span.
        theta, r: safety factor and exponent of the step-size update.
        brownian_tol: resolution of the Brownian path (see :class:`~scoresde.noise.PerSampleBrownian`).
        max_attempts: attempts per sample before giving up with an error.
    """

    rtol: float = 0.05
    atol: float = 0.0078
    h_init: float = 0.01
    theta: float = 0.9
    r: float = 0.9
    brownian_tol: float = 1e-7
    max_attempts: int = 100_000

    stochastic = True
    convergence_order = float("nan")
    evaluations_per_step = float("nan")

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "h_init", "theta", "r", "brownian_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"adaptive_sde {name} must be positive, got {getattr(self, name)}")
        if self.theta >= 1 or self.h_init > 1:
            raise ValueError(
                f"adaptive_sde needs theta < 1 and h_init <= 1, got theta={self.theta}, h_init={self.h_init}"
            )

    @property
    def name(self) -> str:
        return "adaptive_sde"

    def integrate(
        self, score_fn: ScoreFn, sde: SDE, x: Tensor, timesteps: Tensor, noise: NoiseFn, every_step: bool
    ) -> Tensor:
        grid = timesteps.to(dtype=torch.float64, device=x.device)
        targets = grid if every_step else grid[[0, -1]]
        t0, span = float(grid[0]), float(grid[0] - grid[-1])
        B, shape = x.shape[0], (-1, *[1] * (x.ndim - 1))
        brownian = PerSampleBrownian(keys_from_noise(noise, B, x.device), span, x[0].numel(), self.brownian_tol)

        def reverse_drift(y: Tensor, t: Tensor, g: Tensor) -> Tensor:
            return sde.drift(y, t) - g**2 * score_fn(y, t)

        t = torch.full((B,), t0, dtype=torch.float64, device=x.device)
        h = torch.full_like(t, self.h_init * span)
        w = torch.zeros(B, x[0].numel(), dtype=torch.float64, device=x.device)  # W at s = t0 - t
        goal = torch.ones(B, dtype=torch.long, device=x.device)  # index of the next time in targets
        x, x_prev, all_rows = x.clone(), x.clone(), torch.arange(B, device=x.device)
        out = [x.clone()] + [torch.empty_like(x) for _ in targets[1:]]
        for _ in range(self.max_attempts):
            running = goal < len(targets)
            if not bool(running.any()):
                return torch.stack(out)
            # Every call covers the whole batch (a score that closes over per-sample data, a class label or a
            # guidance condition, needs it); finished samples stay where they are (h = 0) and are not updated.
            end = targets[goal.clamp_max(len(targets) - 1)]
            hr = torch.where(running, torch.minimum(h, t - end), torch.zeros_like(h))
            t_new = torch.where(hr >= t - end, end, t - hr)  # land exactly on the time asked for
            w_new = self._brownian_at(brownian, t0 - t_new, all_rows, w, t0 - t)
            dw = (w_new - w).to(x.dtype).view(x.shape)
            hx = hr.to(x.dtype).view(shape)
            g_t, g_n = (sde.diffusion(u).to(x.dtype).view(shape) for u in (t, t_new))
            x_em = x - hx * reverse_drift(x, t, g_t) + g_t * dw  # Euler–Maruyama
            x_ie = 0.5 * (x_em + x - hx * reverse_drift(x_em, t_new, g_n) + g_n * dw)  # improved Euler
            delta = (self.rtol * torch.maximum(x_em.abs(), x_prev.abs())).clamp_min(self.atol)
            err = ((x_em - x_ie) / delta).flatten(1).pow(2).mean(1).sqrt().to(torch.float64)
            ok = running & (err <= 1)
            acc = ok.nonzero().squeeze(1)
            x[acc], x_prev[acc], t[acc], w[acc] = x_ie[acc], x_em[acc], t_new[acc], w_new[acc]
            h = torch.where(running, _round_mantissa(self.theta * hr * err.clamp_min(1e-10).pow(-self.r)), h)
            arrived = acc[t_new[acc] == end[acc]]
            for k in goal[arrived].unique().tolist():
                hit = arrived[goal[arrived] == k]
                out[k][hit] = x[hit]
            goal[arrived] += 1
        raise RuntimeError(
            f"adaptive_sde took {self.max_attempts} attempts without reaching t = {float(grid[-1]):g}; "
            "loosen rtol/atol or raise max_attempts"
        )

    @staticmethod
    def _brownian_at(path: PerSampleBrownian, s: Tensor, rows: Tensor, w_now: Tensor, s_now: Tensor) -> Tensor:
        """``W(s)`` of samples ``rows`` (which sit at ``W(s_now) = w_now``): the path's value, so that a retried step
        sees the Brownian bridge (the tests replace this with fresh noise to show the bias it avoids)."""
        return path(s, rows)
