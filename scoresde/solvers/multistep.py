"""Multistep solvers of the probability-flow ODE from the few-step literature, written once for any
``x_t = alpha_t x_0 + sigma_t eps``: UniPC, DEIS and iPNDM.

Notation as in :mod:`.fast`: a step goes from ``s`` (``ctx.now``) to ``t`` (``ctx.next``), ``lambda = log(alpha/sigma)``
and ``h = lambda_t - lambda_s > 0``; EDM's noise level is ``sigma_hat = sigma / alpha = e^{-lambda}`` and
``x_hat = x / alpha``, in which the flow reads ``dx_hat / dsigma_hat = eps(x, t)``. Earlier model outputs live in
``State.history`` as ``(coefficients, output)`` pairs, newest first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from .._typing import ScoreFn
from ..sde import SDE
from .base import Coefficients, Solver, State, Step, eps_and_x0, multistep_order

__all__ = ["UniPC", "DEIS", "IPNDM", "lagrange_weights", "exp_moments"]

Point = tuple[Coefficients, Tensor]
"""An earlier model output with the schedule values of its time."""


def lagrange_weights(nodes: Sequence[float], moments: Sequence[float]) -> list[float]:
    """Quadrature weights ``w_j = ∫ w(tau) l_j(tau) dtau`` of the Lagrange basis ``l_j`` on ``nodes``, given the
    moments ``M_k = ∫ w(tau) tau^k dtau`` (``k < len(nodes)``): the solution of ``sum_j tau_j^k w_j = M_k``."""
    k = len(nodes)
    V = np.vander(np.asarray(nodes, dtype=np.float64), k, increasing=True)  # V[j, k] = tau_j^k
    return [float(w) for w in np.linalg.solve(V.T, np.asarray(moments[:k], dtype=np.float64))]


def exp_moments(h: float, k: int) -> list[float]:
    """``M_i = ∫_0^1 e^{-h tau} tau^i dtau`` for ``i < k`` and ``h > 0``: a power series for ``h < 1`` (where the
    recursion would cancel), else ``M_0 = -expm1(-h) / h``, ``M_i = (i M_{i-1} - e^{-h}) / h``."""
    if h < 1.0:
        out = []
        for i in range(k):
            term, total, n = 1.0, 1.0 / (i + 1), 0
            while abs(term) > 1e-18:
                n += 1
                term *= -h / n
                total += term / (i + n + 1)
            out.append(total)
        return out
    out = [-math.expm1(-h) / h]
    for i in range(1, k):
        out.append((i * out[-1] - math.exp(-h)) / h)
    return out


@dataclass(frozen=True)
class _UniPCMemory:
    """What UniPC's corrector needs of the previous step: its start, its order and the outputs it used."""

    x: Tensor
    start: Coefficients
    order: int
    points: tuple[Point, ...]


@dataclass
class UniPC(Solver):
    """UniPC (Zhao et al., 2023): the UniP-p predictor (Algorithm 2 with the ``B(h)`` of eq. 11 and the coefficients
    of Theorem 3.1) followed, one step later, by the UniC corrector (Algorithm 1), which reuses the model output at the
    predicted point, so it costs no extra evaluation. The final step is not corrected (its output would need one more
    evaluation).

    A step from ``s`` to ``t`` with data prediction uses ``hh = -h`` (noise prediction ``hh = h``) and
    ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^hh - 1) m_0 - alpha_t B(h) sum_i rho_i D_i``, ``D_i = (m_i - m_0)/r_i``,
    ``r_i = (lambda_i - lambda_s)/h``; ``rho`` solves ``R rho = b`` with ``R_ki = r_i^{k-1}`` (``r_p = 1``) and
    ``b_k = k! hh phi_{k+1}(hh) / B(h)``, ``phi`` the exponential-integrator functions (the paper's eq. 8). ``B(h) = hh`` (``bh1``) or ``e^hh - 1``
    (``bh2``). As in the reference implementations, the order-2 predictor takes ``rho = ½`` and the order-1 corrector
    ``rho = ½``. Multistep warm-up starts at order 1; with ``lower_order_final`` the last steps lower the order to the
    steps left. The declared order is the proven global one: with the corrector ``order + 1``, at most 3 (the
    first, order-1 step caps it), without it at most 2; at order 3 the cap's error constant is tiny on the exact
    targets and the measured slope is 3.8–3.9 (``tests/test_few_step.py``).

    Args:
        order: predictor order p, 1–3 (2 is the reference default).
        variant: ``"bh1"`` or ``"bh2"`` (the reference default for data prediction).
        prediction: ``"data"`` (x̂_0, UniPC's default) or ``"noise"`` (eps).
        corrector: apply UniC.
        lower_order_final: lower the order on the final steps.
    """

    order: int = 2
    variant: str = "bh2"
    prediction: str = "data"
    corrector: bool = True
    lower_order_final: bool = True

    stochastic = False
    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"unipc order must be 1, 2 or 3, got {self.order!r}")
        if self.variant not in ("bh1", "bh2"):
            raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {self.variant!r}")
        if self.prediction not in ("data", "noise"):
            raise ValueError(f"unipc prediction must be 'data' or 'noise', got {self.prediction!r}")

    @property
    def convergence_order(self) -> float:
        return float(min(self.order + 1, 3) if self.corrector else min(self.order, 2))

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        x = state.x
        eps, x0 = eps_and_x0(score_fn, x, ct)
        m = x0 if self.prediction == "data" else eps
        memory: _UniPCMemory | None = state.history[0] if state.history else None
        points: tuple[Point, ...] = ()
        if memory is not None:
            if self.corrector:
                x = self._update(memory.x, memory.start, ct, memory.points, memory.order, m)
            points = memory.points
        points = ((ct, m), *points)[: self.order]
        k = multistep_order(self.order, len(points), ctx, self.lower_order_final, None)
        x_next = self._update(x, ct, cn, points, k, None)
        return State(x_next, history=(_UniPCMemory(x, ct, k, points),), denoised=x0)

    def _update(
        self, x: Tensor, cs: Coefficients, cn: Coefficients, points: tuple[Point, ...], order: int, m_t: Tensor | None
    ) -> Tensor:
        """The predictor (``m_t is None``) or the corrector (with ``m_t``, the output at ``cn``) of order ``order``
        from ``x`` at ``cs`` to ``cn``, with the outputs ``points`` (``points[0]`` at ``cs``)."""
        h = cn.lam - cs.lam
        hh = -h if self.prediction == "data" else h
        m0 = points[0][1]
        rks = [(c.lam - cs.lam) / h for c, _ in points[1:order]]
        D = [(mi - m0) / r for (_, mi), r in zip(points[1:order], rks)]
        h_phi_1 = math.expm1(hh)
        B_h = hh if self.variant == "bh1" else h_phi_1
        R, b = [], []
        h_phi_k, factorial = h_phi_1 / hh - 1, 1
        for i in range(1, order + 1):
            R.append([r ** (i - 1) for r in [*rks, 1.0]])
            b.append(h_phi_k * factorial / B_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        if m_t is None:  # UniP
            if order == 1:
                rhos: list[float] = []
            elif order == 2:
                rhos = [0.5]
            else:
                rhos = list(np.linalg.solve(np.array(R)[:-1, :-1], np.array(b)[:-1]))
            terms = [*D]
        else:  # UniC
            rhos = [0.5] if order == 1 else list(np.linalg.solve(np.array(R), np.array(b)))
            terms = [*D, m_t - m0]
        if self.prediction == "data":
            base, scale = (cn.sigma / cs.sigma) * x - cn.alpha * h_phi_1 * m0, cn.alpha * B_h
        else:
            base, scale = (cn.alpha / cs.alpha) * x - cn.sigma * h_phi_1 * m0, cn.sigma * B_h
        for rho, term in zip(rhos, terms):
            base = base - (scale * float(rho)) * term
        return base


@dataclass
class DEIS(Solver):
    """DEIS with the exponential Adams–Bashforth step (Zhang & Chen, 2023, tAB-DEIS, eq. 14, in log-SNR time, the
    form diffusers calls ``log-rho`` DEIS): the noise prediction is extrapolated by the Lagrange polynomial through
    the last ``k`` outputs in ``lambda``, and the exact solution
    ``x_t = (alpha_t/alpha_s) x_s - alpha_t ∫_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda``
    is integrated exactly: ``x_t = (alpha_t/alpha_s) x_s - sigma_t h e^h sum_j w_j eps_j`` with
    ``w_j = ∫_0^1 e^{-h tau} l_j(tau) dtau`` on the nodes ``tau_j = (lambda_j - lambda_s)/h``. Order 1 is DDIM.
    Warm-up and ``lower_order_final`` (on runs under 15 steps) as in DPM-Solver++. The warm-up's first-order first
    step caps the global order at 2 (order 3 measures 2.4 under VE and 2.9 under VP over 64–512 steps, and is more
    accurate than order 2 at every budget there); the declared order is that cap.

    Args:
        order: 1, 2 or 3.
        lower_order_final: lower the order on the final steps of short runs.
    """

    order: int = 3
    lower_order_final: bool = True

    stochastic = False
    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError(f"deis order must be 1, 2 or 3, got {self.order!r}")

    @property
    def convergence_order(self) -> float:
        return float(min(self.order, 2))

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        eps, x0 = eps_and_x0(score_fn, state.x, ct)
        points: tuple[Point, ...] = ((ct, eps), *state.history)[: self.order]
        k = multistep_order(self.order, len(points), ctx, self.lower_order_final, 15)
        h = cn.lam - ct.lam
        w = lagrange_weights([(c.lam - ct.lam) / h for c, _ in points[:k]], exp_moments(h, k))
        x_next = (cn.alpha / ct.alpha) * state.x
        scale = cn.sigma * h * math.exp(h)
        for wj, (_, e) in zip(w, points):
            x_next = x_next - (scale * wj) * e
        return State(x_next, history=points[: self.order - 1], denoised=x0)


AB_COEFFICIENTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
"""Adams–Bashforth coefficients for equal steps, newest output first."""


@dataclass
class IPNDM(Solver):
    """Improved PNDM (Zhang & Chen, 2023, §4 and App. B; Liu et al., 2022's PNDM without its Runge–Kutta start):
    Adams–Bashforth on the probability-flow ODE in EDM's variables, ``dx_hat/dsigma_hat = eps``, with a lower-order
    warm-up (order ``min(order, outputs known)``) and one evaluation per step:
    ``x_hat_t = x_hat_s + (sigma_hat_t - sigma_hat_s) sum_j c_j eps_{s_j}``.

    ``variable_step=False`` uses the equal-step coefficients (55, -59, 37, -9)/24 on any grid, as the method was
    published; on a smooth grid that is not uniform in ``sigma_hat`` (Karras, log-SNR) the mismatch between the
    steps leaves a local error of order 3, so the method is second order (measured 1.9–2.0). ``variable_step=True``
    (iPNDM-v, k-diffusion's ``lms``) integrates the Lagrange polynomial through the earlier outputs in ``sigma_hat``
    exactly. Either way the warm-up's first Euler step caps the global order at 2 (declared); iPNDM-v's slope over
    64–512 steps is 3.7 under VP, where that step's error constant is tiny, and 2.5 under VE.

    Args:
        order: the Adams–Bashforth order, 1–4 (4 as published).
        variable_step: the variable-step coefficients.
    """

    order: int = 4
    variable_step: bool = False

    stochastic = False
    evaluations_per_step = 1

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"ipndm order must be 1, 2, 3 or 4, got {self.order!r}")

    @property
    def convergence_order(self) -> float:
        """The proven global order: at most 2 (see the class docstring)."""
        return float(min(self.order, 2))

    def step(self, score_fn: ScoreFn, sde: SDE, state: State, ctx: Step) -> State:
        ct, cn = ctx.now, ctx.next
        eps, x0 = eps_and_x0(score_fn, state.x, ct)
        points: tuple[Point, ...] = ((ct, eps), *state.history)[: self.order]
        s_hat = math.exp(-ct.lam)
        delta = math.exp(-cn.lam) - s_hat
        weights: Sequence[Any]
        if self.variable_step:
            nodes = [(math.exp(-c.lam) - s_hat) / delta for c, _ in points]
            weights = lagrange_weights(nodes, [1 / (i + 1) for i in range(len(points))])
        else:
            weights = AB_COEFFICIENTS[len(points)]
        # x_t = alpha_t x̂_t = (alpha_t/alpha_s) x_s + alpha_t Δ sum_j c_j eps_j, without forming x̂ = x / alpha, which
        # under VP is ~150 x at T and would cost float32 samples two to three digits
        x_next = (cn.alpha / ct.alpha) * state.x
        for wj, (_, e) in zip(weights, points):
            x_next = x_next + (cn.alpha * delta * wj) * e
        return State(x_next, history=points[: self.order - 1], denoised=x0)
