"""Fast samplers written once in log-SNR time for any ``x_t = alpha_t x_0 + sigma_t eps``: DDIM, DPM-Solver,
DPM-Solver++ (ODE and SDE), ER-SDE-Solver, EDM's Heun sampler and Restart sampling.

Notation: a step goes from ``t`` to ``t_next`` (``t_next < t``), ``lambda = log(alpha / sigma)`` increases along it and
``h = lambda_next - lambda_t > 0``; ``eps`` and ``x0`` are the noise and data predictions from one score call
(``eps = -sigma s``, ``x0 = (x - sigma eps) / alpha``). EDM's sigma is ``sigma / alpha = e^{-lambda}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor

from .._typing import ScoreFn
from ..sde import SDE
from .base import Coefficients, Solver, State, Step, eps_and_x0, forward_transition, multistep_order
from .timesteps import karras_levels

__all__ = ["DDIM", "DPMSolver", "DPMSolverPP", "DPMSolverPPSDE", "ERSDE", "Heun", "Restart", "dpm_solver_fast"]


@dataclass
class DDIM(Solver):
    """DDIM (Song et al., 2021a, eq. 12): ``x_s = alpha_s x̂_0 + sqrt(sigma_s² - c²) eps + c z`` with
    ``c = eta sigma_s/sigma_t sqrt(sigma_t² - (alpha_t/alpha_s)² sigma_s²)``.

    ``eta = 0`` is deterministic and equals first-order DPM-Solver, ``x_s = (alpha_s/alpha_t) x - sigma_s (e^h - 1)
    eps``; ``eta = 1`` is ancestral sampling from the exact posterior. The last step adds no noise. Order 1.

    Args:
        eta: noise scale in ``[0, 1]``.
    """

    eta: float = 0.0

    convergence_order = 1.0
    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"ddim eta must lie in [0, 1], got {self.eta!r}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x = state.x
        eps, x0 = eps_and_x0(score_fn, x, ct)
        if self.eta == 0:
            return State((cn.alpha / ct.alpha) * x - cn.sigma * math.expm1(cn.lam - ct.lam) * eps, denoised=x0)
        c = self.eta * cn.sigma / ct.sigma * math.sqrt(forward_transition(ct, cn)[1])
        x_next = cn.alpha * x0 + math.sqrt(cn.sigma**2 - c**2) * eps
        return State(x_next if ctx.is_last else x_next + c * ctx.noise(x), denoised=x0)


@dataclass
class Consistency(Solver):
    """Multistep consistency sampling (Song et al., 2023, Algorithm 1) of a consistency model whose data prediction
    ``x̂_0`` defines ``f(x_t, t) = DDIM(x̂_0, t → t_end)`` (:class:`scoresde.distill.ConsistencyDistillation`). One step
    from ``T`` is ``f(x_T, T)``; with more, each step before the last re-noises the model's sample to the next time,
    ``x_s = alpha_s x̂_0 + sigma_s z`` (the sample at ``t_end`` taken as ``x̂_0``), and the last returns ``f``.
    Any grid works (the paper picks its intermediate times by hand; ``uniform`` is a fair default).
    """

    convergence_order = 0.0  # not a discretisation of an equation: more steps trade noise for refinement
    stochastic = True
    evaluations_per_step = 1

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x = state.x
        eps, x0 = eps_and_x0(score_fn, x, ct)
        if ctx.is_last:
            return State(cn.alpha * x0 + cn.sigma * eps, denoised=x0)  # DDIM to t_end: f(x, t)
        return State(cn.alpha * x0 + cn.sigma * ctx.noise(x), denoised=x0)


@dataclass
class DPMSolver(Solver):
    """Singlestep DPM-Solver (Lu et al., 2022, Algorithms 1 and DPM-Solver-2/3) with noise prediction.

    Order ``k`` takes ``k`` score calls per step at ``lambda_t + r h`` (``r = ½`` for order 2, ``⅓, ⅔`` for order 3),
    mapped back to ``t`` with ``sde.t_from_log_snr``. Order 1 is DDIM. ``orders`` gives every step its own order:
    :func:`dpm_solver_fast` builds DPM-Solver-fast (§3.4), third-order steps with a second- and/or first-order end
    that spend a budget exactly.

    Args:
        order: 1, 2 or 3 (every step).
        orders: one order per step instead (as many as the grid has steps); overrides ``order``.
    """

    order: int = 3
    orders: tuple[int, ...] | None = None

    stochastic = False

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"dpm_solver order must be 1, 2 or 3, got {self.order!r}")
        if self.orders is not None:
            self.orders = tuple(self.orders)
            if not self.orders or any(k not in (1, 2, 3) for k in self.orders):
                raise ValueError(f"dpm_solver orders must be a non-empty list of 1, 2 or 3, got {self.orders!r}")

    @property
    def convergence_order(self) -> float:
        """``order``; with ``orders``, the largest order, at most one above the smallest (a single low-order step's
        local error ``O(h^{k+1})`` bounds the global one)."""
        if self.orders is None:
            return float(self.order)
        return float(min(max(self.orders), min(self.orders) + 1))

    @property
    def evaluations_per_step(self) -> float:
        return float(self.order) if self.orders is None else sum(self.orders) / len(self.orders)

    def _order_at(self, ctx: Step) -> int:
        if self.orders is None:
            return self.order
        if len(self.orders) != ctx.count:
            raise ValueError(f"dpm_solver orders has {len(self.orders)} entries but the grid has {ctx.count} steps")
        return self.orders[ctx.index]

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x = state.x
        h = cn.lam - ct.lam
        order = self._order_at(ctx)
        eps_t, x0 = eps_and_x0(score_fn, x, ct)
        x_next = (cn.alpha / ct.alpha) * x - cn.sigma * math.expm1(h) * eps_t  # DPM-Solver-1
        if order == 1:
            return State(x_next, denoised=x0)
        if order == 2:
            r1 = 0.5
            c1 = Coefficients.at_log_snr(sde, ct.lam + r1 * h)
            u = (c1.alpha / ct.alpha) * x - c1.sigma * math.expm1(r1 * h) * eps_t
            D1 = eps_and_x0(score_fn, u, c1)[0] - eps_t
            return State(x_next - cn.sigma / (2 * r1) * math.expm1(h) * D1, denoised=x0)
        r1, r2 = 1 / 3, 2 / 3
        c1, c2 = (Coefficients.at_log_snr(sde, ct.lam + r * h) for r in (r1, r2))
        u1 = (c1.alpha / ct.alpha) * x - c1.sigma * math.expm1(r1 * h) * eps_t
        D1 = eps_and_x0(score_fn, u1, c1)[0] - eps_t
        u2 = (
            (c2.alpha / ct.alpha) * x
            - c2.sigma * math.expm1(r2 * h) * eps_t
            - c2.sigma * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * D1
        )
        D2 = eps_and_x0(score_fn, u2, c2)[0] - eps_t
        return State(x_next - cn.sigma / r2 * (math.expm1(h) / h - 1) * D2, denoised=x0)


def dpm_solver_fast(nfe: int, order: int = 3) -> DPMSolver:
    """DPM-Solver-fast (Lu et al., 2022, §3.4): singlestep DPM-Solver spending exactly ``nfe`` evaluations in
    ``K = nfe // 3 + 1`` steps of order 3 that end with orders (2, 1), (1) or (2) as ``nfe mod 3`` is 0, 1 or 2
    (``order = 2``: ``K = nfe // 2 + nfe % 2`` steps of order 2, the last of order 1 when ``nfe`` is odd). Use it
    with ``steps = len(solver.orders)`` on the log-SNR grid."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"dpm_solver_fast needs a positive number of evaluations, got {nfe!r}")
    if order not in (2, 3):
        raise ValueError(f"dpm_solver_fast order must be 2 or 3, got {order!r}")
    if order == 2:
        orders = (2,) * (nfe // 2) + (1,) * (nfe % 2)
    elif nfe < 3:
        orders = (2,) if nfe == 2 else (1,)
    else:
        K, r = nfe // 3 + 1, nfe % 3
        orders = (3,) * (K - 2) + (2, 1) if r == 0 else (3,) * (K - 1) + ((1,) if r == 1 else (2,))
    assert sum(orders) == nfe
    return DPMSolver(order=order, orders=orders)


@dataclass
class DPMSolverPP(Solver):
    """Multistep DPM-Solver++ (Lu et al., 2022b, Algorithm 2 and its third-order extension) with data prediction.

    One score call per step; earlier data predictions ``(lambda, x̂_0)`` ride in ``state.history``. The first steps
    use lower orders while history builds up, and with ``lower_order_final`` runs of fewer than 15 steps also lower
    the order on their final steps (``order_i <= steps left``), which keeps few-step sampling stable.
    For ``order = 3`` the first step is by default the singlestep DPM-Solver++(2S) update (``start="2s"``, one extra
    score call): a first-order start (``start="first_order"``, as diffusers and the reference code warm up) would leave
    an ``O(h²)`` error that caps the method at global order 2 (measured slope 2.4), but saves that call, a fifth of a
    5-evaluation budget.

    Args:
        order: 1, 2 (2M, the default) or 3 (3M).
        lower_order_final: lower the order on the final steps of short runs.
        start: how order 3 starts: ``"2s"`` or ``"first_order"``.
    """

    order: int = 2
    lower_order_final: bool = True
    start: str = "2s"

    stochastic = False
    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"dpm_solver_pp order must be 1, 2 or 3, got {self.order!r}")
        if self.start not in ("2s", "first_order"):
            raise ValueError(f"dpm_solver_pp start must be '2s' or 'first_order', got {self.start!r}")

    @property
    def convergence_order(self) -> float:
        return float(self.order) if self.start == "2s" else float(min(self.order, 2))

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x = state.x
        m0 = eps_and_x0(score_fn, x, ct)[1]
        history = ((ct.lam, m0), *state.history)[: self.order]
        k = multistep_order(self.order, len(history), ctx, self.lower_order_final, 15)
        h = cn.lam - ct.lam
        phi_1 = math.expm1(-h)
        if k == 1 and self.order == 3 and self.start == "2s" and ctx.remaining >= 3:
            # DPM-Solver++(2S) with r = ½: x_next = (sigma_n/sigma_t) x - alpha_n (e^{-h} - 1) x̂_0(u, lambda_t + h/2)
            cm = Coefficients.at_log_snr(sde, ct.lam + 0.5 * h)
            u = (cm.sigma / ct.sigma) * x - cm.alpha * math.expm1(-0.5 * h) * m0
            x_next = (cn.sigma / ct.sigma) * x - cn.alpha * phi_1 * eps_and_x0(score_fn, u, cm)[1]
            return State(x_next, history=history[:2], denoised=m0)
        x_next = (cn.sigma / ct.sigma) * x - cn.alpha * phi_1 * m0  # first order (DDIM in data prediction)
        if k >= 2:
            (lam1, m1) = history[1]
            r0 = (ct.lam - lam1) / h
            D1_0 = (m0 - m1) / r0
            if k == 2:
                x_next = x_next - 0.5 * cn.alpha * phi_1 * D1_0
            else:
                (lam2, m2) = history[2]
                r1 = (lam1 - lam2) / h
                D1_1 = (m1 - m2) / r1
                D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
                D2 = 2 * (D1_0 - D1_1) / (r0 + r1)
                phi_2 = phi_1 / h + 1
                phi_3 = phi_2 / h - 0.5
                x_next = x_next + cn.alpha * phi_2 * D1 - cn.alpha * phi_3 * D2
        return State(x_next, history=history[: self.order - 1], denoised=m0)


@dataclass
class DPMSolverPPSDE(Solver):
    """Multistep DPM-Solver++ for the reverse SDE (Lu et al., 2022b, §5 and App. B; the (2M) SDE and (3M) SDE forms
    that k-diffusion introduced), in data prediction with ``eta`` interpolating between the probability-flow ODE
    (``eta = 0``) and the reverse SDE (``eta = 1``).

    With ``hh = (1 + eta) h``, a step is ``x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-hh}) x̂_0 + ...``
    plus the multistep corrections of the earlier ``x̂_0``: order 2 adds ``alpha_t c (x̂_0 - x̂_0') / r`` with
    ``c = ½ (1 - e^{-hh})`` (``midpoint``) or ``c = 1 - (1 - e^{-hh}) / hh`` (``heun``), ``r = h' / h``; order 3 adds
    the second-difference term with ``phi_2(hh)``, ``phi_3(hh)`` after a second-order step. The noise
    ``sigma_t sqrt(1 - e^{-2 eta h}) s_noise z`` is exact for the linear part; the final step adds none. Step for step
    equal to k-diffusion's ``sample_dpmpp_2m_sde`` / ``sample_dpmpp_3m_sde`` given the same noise.

    Weak order 1 for ``eta > 0`` (the data prediction is extrapolated along a rough path); with ``eta = 0`` the
    deterministic order is 2 (the order-3 form uses the common third-order coefficient, formally second order).

    Args:
        order: 2 (2M SDE) or 3 (3M SDE).
        eta: noise scale in ``[0, 1]`` (1: the reverse SDE).
        s_noise: extra factor on the noise (1: exact).
        solver_type: the order-2 correction, ``"midpoint"`` or ``"heun"``.
    """

    order: int = 2
    eta: float = 1.0
    s_noise: float = 1.0
    solver_type: str = "midpoint"

    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if self.order not in (2, 3):
            raise ValueError(f"dpm_solver_pp_sde order must be 2 or 3, got {self.order!r}")
        if not 0.0 <= self.eta <= 1.0 or self.s_noise < 0:
            raise ValueError(f"dpm_solver_pp_sde needs 0 <= eta <= 1 and s_noise >= 0, got {self.eta}, {self.s_noise}")
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"dpm_solver_pp_sde solver_type must be 'midpoint' or 'heun', got {self.solver_type!r}")

    @property
    def stochastic(self) -> bool:
        return self.eta > 0 and self.s_noise > 0

    @property
    def convergence_order(self) -> float:
        return 1.0 if self.stochastic else 2.0

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x = state.x
        m0 = eps_and_x0(score_fn, x, ct)[1]
        h = cn.lam - ct.lam
        eta_h = self.eta * h
        hh = h + eta_h
        one_minus = -math.expm1(-hh)  # 1 - e^{-hh}
        x_next = (cn.sigma / ct.sigma) * math.exp(-eta_h) * x + cn.alpha * one_minus * m0
        earlier = state.history
        if self.order == 2 and earlier:
            lam1, m1 = earlier[0]
            r = (ct.lam - lam1) / h
            c = 0.5 * one_minus if self.solver_type == "midpoint" else 1 - one_minus / hh
            x_next = x_next + (cn.alpha * c / r) * (m0 - m1)
        elif self.order == 3 and earlier:
            phi_2 = 1 - one_minus / hh
            lam1, m1 = earlier[0]
            r0 = (ct.lam - lam1) / h
            d1_0 = (m0 - m1) / r0
            if len(earlier) == 1:
                x_next = x_next + cn.alpha * phi_2 * d1_0
            else:
                lam2, m2 = earlier[1]
                r1 = (lam1 - lam2) / h
                d1_1 = (m1 - m2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / hh - 0.5
                x_next = x_next + cn.alpha * (phi_2 * d1 - phi_3 * d2)
        if self.stochastic and not ctx.is_last:
            x_next = x_next + cn.sigma * math.sqrt(-math.expm1(-2 * eta_h)) * self.s_noise * ctx.noise(x)
        return State(x_next, history=((ct.lam, m0), *earlier)[: self.order - 1], denoised=m0)


@dataclass
class Heun(Solver):
    """EDM's stochastic sampler (Karras et al., 2022, Algorithm 2) in ``x̂ = x / alpha``, ``ŝ = sigma / alpha``, where
    the probability-flow ODE of any Gaussian-marginal SDE reads ``dx̂/dŝ = (x̂ - x̂_0(x, t)) / ŝ``.

    Each step optionally "churns" ``ŝ`` up by ``gamma = min(S_churn / N, √2 - 1)`` when ``S_min <= ŝ <= S_max``
    (never past ``ŝ(T)``), adding fresh noise of scale ``S_noise``, then takes a Heun step; the last step is an Euler
    step, so NFE = 2N - 1. With ``S_churn = 0`` (the default) it is deterministic and second order.

    Args:
        S_churn, S_min, S_max, S_noise: EDM's churn parameters.
    """

    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0

    convergence_order = 2.0
    evaluations_per_step = 2

    def __post_init__(self) -> None:
        if self.S_churn < 0 or self.S_noise < 0 or self.S_min < 0 or self.S_max < self.S_min:
            raise ValueError(
                f"heun needs S_churn >= 0, S_noise >= 0 and 0 <= S_min <= S_max, got S_churn={self.S_churn}, "
                f"S_min={self.S_min}, S_max={self.S_max}, S_noise={self.S_noise}"
            )

    @property
    def stochastic(self) -> bool:
        return self.S_churn > 0

    def _slope(self, score_fn: ScoreFn, x_hat: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        """``dx̂/dŝ = (x̂ - x̂_0) / ŝ`` at ``x̂`` and the time of ``c``, and ``x̂_0``."""
        x0 = eps_and_x0(score_fn, c.alpha * x_hat, c)[1]
        return (x_hat - x0) / math.exp(-c.lam), x0

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x_hat = state.x / ct.alpha
        s_t, s_next = math.exp(-ct.lam), math.exp(-cn.lam)
        gamma = min(self.S_churn / ctx.count, math.sqrt(2) - 1) if self.S_min <= s_t <= self.S_max else 0.0
        if gamma > 0:
            s_T = math.exp(-Coefficients.at(sde, sde.T).lam)
            s_hat = min(s_t * (1 + gamma), s_T)
            x_hat = x_hat + math.sqrt(s_hat**2 - s_t**2) * self.S_noise * ctx.noise(x_hat)
            ct = Coefficients.at_log_snr(sde, -math.log(s_hat))
            s_t = s_hat
        d, x0 = self._slope(score_fn, x_hat, ct)
        x_next = x_hat + (s_next - s_t) * d
        if not ctx.is_last:
            x_next = x_hat + (s_next - s_t) * 0.5 * (d + self._slope(score_fn, x_next, cn)[0])
        return State(cn.alpha * x_next, denoised=x0)


@dataclass
class Restart(Solver):
    """Restart sampling (Xu et al., 2023, Algorithm 1) on EDM's Heun sampler: the probability-flow ODE from ``T``,
    and after the step that reaches ``S_min`` or below (in EDM's ``ŝ = sigma / alpha``), ``restarts`` times: forward noise back up
    to ``S_max``, ``x̂ ← x̂ + sqrt(S_max² - ŝ²) z``, then ``restart_steps`` Heun steps on a Karras (``rho = 7``) grid
    from ``S_max`` down to ``ŝ`` again. The forward noise is exact, so each restart leaves the exact marginal
    unchanged and contracts the accumulated error, at ``restarts · (2 restart_steps - 1)`` extra evaluations.

    Args:
        S_min, S_max: the restart interval in ``ŝ`` (the paper's CIFAR-10 setting is ``[0.06, 0.30]`` for data in
            ``[-1, 1]``).
        restarts: number of restart loops ``K``.
        restart_steps: Heun steps per loop.
    """

    S_min: float = 0.06
    S_max: float = 0.30
    restarts: int = 2
    restart_steps: int = 3

    convergence_order = 2.0
    stochastic = True

    def __post_init__(self) -> None:
        if not 0 < self.S_min < self.S_max:
            raise ValueError(f"restart needs 0 < S_min < S_max, got S_min={self.S_min}, S_max={self.S_max}")
        for name in ("restarts", "restart_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "restarts" else 1):
                raise ValueError(
                    f"restart {name} must be a {'non-negative' if name == 'restarts' else 'positive'} "
                    f"integer, got {value!r}"
                )

    @property
    def evaluations_per_step(self) -> float:
        """2 per step (the last 1), plus the restart loops once per run (counted, not included here)."""
        return 2.0

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        out = Heun().step(score_fn, sde, state, ctx)
        s_t, s_next = math.exp(-ctx.now.lam), math.exp(-ctx.next.lam)
        if not (s_t > self.S_min >= s_next) or self.restarts == 0:
            return out
        x_hat = out.x / ctx.next.alpha
        sub = [
            Coefficients.at_log_snr(sde, -math.log(s))
            for s in karras_levels(self.S_max, s_next, self.restart_steps).tolist()
        ]
        for _ in range(self.restarts):
            x_hat = x_hat + math.sqrt(self.S_max**2 - s_next**2) * ctx.noise(x_hat)
            x = sub[0].alpha * x_hat
            for k in range(self.restart_steps):
                inner = Step(sub[k], sub[k + 1], k, self.restart_steps + 1, ctx.noise)  # never "last": Heun steps
                x = Heun().step(score_fn, sde, State(x), inner).x
            x_hat = x / sub[-1].alpha
        return State(ctx.next.alpha * x_hat, denoised=out.denoised)


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(32)


@dataclass
class ERSDE(Solver):
    """ER-SDE-Solver (Cui et al., 2023, §4 and Alg. 1): the extended reverse-time SDE whose noise is set by a
    noise-scale function ``phi``, solved exactly in its linear part, in EDM's variables ``x_hat = x / alpha``,
    ``sigma_hat = sigma / alpha`` (where every SDE here reads as VE).

    With ``x_hat = x_0 + sigma_hat eps``, the SDE ``dx_hat = (phi'/phi)(x_hat - D) dsigma_hat + eta dW`` with
    ``eta² = 2 sigma_hat² phi'/phi - 2 sigma_hat`` has the data marginals for any ``phi`` with ``phi(s)/s``
    non-decreasing: ``phi(s) = s`` is the probability-flow ODE, ``phi(s) = s²`` the reverse SDE (eq. 6). Its exact
    solution with ``r = phi(sigma_t)/phi(sigma_s)`` is (eq. 11)

        ``x_hat_t = r x_hat_s + phi_t ∫ D d(1/phi) + sqrt(sigma_t² - r² sigma_s²) z``,

    and ``D`` (the data prediction) is interpolated through this and the last ``order - 1`` steps' predictions
    (Newton form in ``sigma_hat``); the weights ``∫ P d(1/phi)`` are exact integrals of polynomials against
    ``d(1/phi)``, integrated by parts and evaluated by 32-point Gauss–Legendre quadrature in ``log sigma_hat``. The last
    step adds no noise.

    Weak order 1 when stochastic (the data prediction is interpolated along a rough path); with
    ``noise_scale="ode"`` it is a deterministic multistep method of order ``order``, capped at 2 by its first-order
    start.

    Args:
        order: 1–3 (ER-SDE-Solver-1/2/3).
        noise_scale: ``"er"`` (the paper's ``phi(s) = s (e^{s^0.3} + 10)``, between the ODE and the SDE), ``"sde"``
            (``phi(s) = s²``) or ``"ode"`` (``phi(s) = s``).
    """

    order: int = 3
    noise_scale: str = "er"

    evaluations_per_step = 1
    NOISE_SCALES: ClassVar[dict[str, Callable[[np.ndarray], np.ndarray]]] = {
        "er": lambda s: s * (np.exp(s**0.3) + 10.0),
        "sde": lambda s: s**2,
        "ode": lambda s: s,
    }

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"er_sde order must be 1, 2 or 3, got {self.order!r}")
        if self.noise_scale not in self.NOISE_SCALES:
            raise ValueError(
                f"er_sde noise_scale must be one of {', '.join(self.NOISE_SCALES)}, got {self.noise_scale!r}"
            )

    @property
    def stochastic(self) -> bool:
        return self.noise_scale != "ode"

    @property
    def convergence_order(self) -> float:
        return 1.0 if self.stochastic else float(min(self.order, 2))

    def _weights(self, s: float, t: float, nodes: list[float]) -> list[float]:
        """``phi(t) ∫_s^t P_k d(1/phi)`` for the Newton polynomials ``P_0 = 1``, ``P_1 = (u - s)``,
        ``P_2 = (u - s)(u - nodes[1])`` (``nodes[0] = s``), by parts: ``[P/phi]_s^t - ∫_s^t P'/phi du``."""
        phi = self.NOISE_SCALES[self.noise_scale]
        log_u = 0.5 * (math.log(s) + math.log(t)) + 0.5 * (math.log(t) - math.log(s)) * _GAUSS_NODES
        u = np.exp(log_u)
        du = 0.5 * (math.log(t) - math.log(s)) * _GAUSS_WEIGHTS * u  # du = u dlog(u)
        phi_t = float(phi(np.array(t)))
        r = phi_t / float(phi(np.array(s)))
        out = [1.0 - r]
        if len(nodes) > 1:
            out.append((t - s) - phi_t * float(np.sum(du / phi(u))))
        if len(nodes) > 2:
            p2_t, dp2 = (t - s) * (t - nodes[1]), 2 * u - s - nodes[1]
            out.append(p2_t - phi_t * float(np.sum(du * dp2 / phi(u))))
        return out

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        s, t = math.exp(-ct.lam), math.exp(-cn.lam)  # sigma_hat at both ends
        x0 = eps_and_x0(score_fn, state.x, ct)[1]
        points = [(s, x0), *state.history][: multistep_order(self.order, len(state.history) + 1, ctx, True, 15)]
        nodes = [p[0] for p in points]
        w = self._weights(s, t, nodes)
        phi = self.NOISE_SCALES[self.noise_scale]
        r = float(phi(np.array(t)) / phi(np.array(s)))
        x_hat = r * (state.x / ct.alpha) + w[0] * x0
        if len(points) > 1:
            d1 = (x0 - points[1][1]) / (s - nodes[1])
            x_hat = x_hat + w[1] * d1
            if len(points) > 2:
                d1_prev = (points[1][1] - points[2][1]) / (nodes[1] - nodes[2])
                x_hat = x_hat + w[2] * (d1 - d1_prev) / (s - nodes[2])
        if self.stochastic and not ctx.is_last:
            x_hat = x_hat + math.sqrt(max(t * t - (r * s) ** 2, 0.0)) * ctx.noise(x_hat)
        history = ((s, x0), *state.history)[: self.order - 1]
        return State(cn.alpha * x_hat, history=history, denoised=x0)
