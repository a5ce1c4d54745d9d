"""Langevin correctors and predictor–corrector composition (Song et al., 2021, §4.2 and Algorithms 2–5).

A corrector runs Markov-chain steps that target ``p_t`` at a fixed ``t``; ``pc`` puts one before every predictor step,
as the reference sampler does: ``x ← corrector(x, t)``, then ``x ← predictor(x, t → t_next)``.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._typing import NoiseFn, ScoreFn
from ..sde import SDE
from .base import Coefficients, Solver, State, tvec

__all__ = ["Corrector", "Langevin", "AnnealedLangevin", "CORRECTORS", "get_corrector", "PredictorCorrector"]


@dataclass
class Corrector(abc.ABC):
    """Base class of correctors: ``n_steps`` Langevin-type moves at time ``t``, each one score evaluation.

    Args:
        snr: the target signal-to-noise ratio ``r`` of a move (0.16 CIFAR-10 VE, 0.17 CelebA, 0.075 at 256 px).
        n_steps: moves per time.
    """

    snr: float = 0.16
    n_steps: int = 1

    def __post_init__(self) -> None:
        if not self.snr > 0:
            raise ValueError(f"corrector snr must be positive, got {self.snr!r}")
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(f"corrector n_steps must be a positive integer, got {self.n_steps!r}")

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def step_size(self, score: Tensor, z: Tensor, ct: Coefficients, alpha_i: float) -> Tensor:
        """Langevin step size ``epsilon``: a float tensor broadcastable to ``score``."""

    def correct(self, score_fn: ScoreFn, sde: SDE, x: Tensor, ct: Coefficients, cn: Coefficients, noise: NoiseFn) -> Tensor:
        """``n_steps`` moves ``x ← x + eps s(x, t) + sqrt(2 eps) z`` at time ``ct.t``: ``(B, *D)``.

        ``alpha_i = (alpha_t / alpha_{t_next})²`` is DDPM's ``1 - beta_i`` for VP and sub-VP, and 1 for VE.
        """
        alpha_i, tt = (ct.alpha / cn.alpha) ** 2, tvec(x, ct.t)
        for _ in range(self.n_steps):
            score, z = score_fn(x, tt), noise(x)
            eps = self.step_size(score, z, ct, alpha_i)
            x = x + eps * score + torch.sqrt(2 * eps) * z
        return x


@dataclass
class Langevin(Corrector):
    """Langevin corrector (Algorithm 4/5): ``eps = 2 alpha_i (r ‖z‖ / ‖s‖)²``.

    The norms are per sample (the reference averages them over the batch, which makes a sample depend on its batch).
    """

    def step_size(self, score: Tensor, z: Tensor, ct: Coefficients, alpha_i: float) -> Tensor:
        if score[0].numel() < 16:
            warnings.warn(
                f"the langevin corrector sets each sample's step from ||z|| / ||s||, which is heavy-tailed in "
                f"{score[0].numel()} dimensions (the score vanishes at the modes); use annealed_langevin for low-dimensional data",
                stacklevel=4,
            )
        s_norm = score.flatten(1).norm(dim=1).clamp_min(torch.finfo(score.dtype).tiny)
        eps = 2 * alpha_i * (self.snr * z.flatten(1).norm(dim=1) / s_norm) ** 2
        return eps.view(-1, *([1] * (score.ndim - 1)))


@dataclass
class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics (Song & Ermon, 2019, Algorithm 1, as the reference corrector): the step size comes
    from the noise level, ``eps = 2 alpha_i (r sigma_t)²``, not from the current sample."""

    def step_size(self, score: Tensor, z: Tensor, ct: Coefficients, alpha_i: float) -> Tensor:
        return torch.tensor(2 * alpha_i * (self.snr * ct.sigma) ** 2, dtype=score.dtype, device=score.device)


CORRECTORS: dict[str, type[Corrector]] = {"langevin": Langevin, "annealed_langevin": AnnealedLangevin}
"""Corrector classes by name."""


def get_corrector(corrector: str | Corrector, **options: Any) -> Corrector:
    """A corrector from a registered name plus options, or the given instance."""
    from . import _build

    return _build(corrector, options, CORRECTORS, Corrector, "corrector")


@dataclass
class _NoPredictor(Solver):
    """Leaves ``x`` unchanged: ``pc`` with ``predictor="none"`` is corrector-only sampling (NCSN's annealed Langevin)."""

    order = 0.0
    stochastic = False
    nfe_per_step = 0

    def step(
        self, score_fn: ScoreFn, sde: SDE, state: State, ct: Coefficients, cn: Coefficients, noise: NoiseFn, i: int, n: int
    ) -> State:
        return state


@dataclass
class PredictorCorrector(Solver):
    """Predictor–corrector sampling (Algorithms 2–3): at every step, the corrector at ``t``, then the predictor to
    ``t_next``. Any registered solver with a one-step rule is a predictor; ``"none"`` gives corrector-only sampling.

    Args:
        predictor: a solver name or instance (default ``reverse_diffusion``), or ``"none"``.
        corrector: a corrector name or instance (default ``langevin``).
        predictor_options, corrector_options: options for named ones, e.g. ``{"snr": 0.16, "n_steps": 1}``.
    """

    predictor: str | Solver = "reverse_diffusion"
    corrector: str | Corrector = "langevin"
    predictor_options: dict[str, Any] = field(default_factory=dict)
    corrector_options: dict[str, Any] = field(default_factory=dict)

    stochastic = True

    def __post_init__(self) -> None:
        from . import get_solver

        if self.predictor in (None, "none"):
            self._predictor: Solver = _NoPredictor()
        else:
            self._predictor = get_solver(self.predictor, **self.predictor_options)
            if type(self._predictor).solve is not Solver.solve:
                raise ValueError(
                    f"predictor {self._predictor.name} integrates on its own and cannot be stepped; "
                    "use a one-step solver (euler_maruyama, reverse_diffusion, ancestral, ddim, ...)"
                )
        self._corrector = get_corrector(self.corrector, **self.corrector_options)

    @property
    def order(self) -> float:  # type: ignore[override]
        return self._predictor.order

    @property
    def nfe_per_step(self) -> float:  # type: ignore[override]
        return self._predictor.nfe_per_step + self._corrector.n_steps

    @property
    def name(self) -> str:
        return f"pc({self._predictor.name}+{self._corrector.name})"

    def check(self, sde: SDE) -> None:
        self._predictor.check(sde)

    def step(
        self, score_fn: ScoreFn, sde: SDE, state: State, ct: Coefficients, cn: Coefficients, noise: NoiseFn, i: int, n: int
    ) -> State:
        x = self._corrector.correct(score_fn, sde, state.x, ct, cn, noise)
        return self._predictor.step(score_fn, sde, dataclasses.replace(state, x=x), ct, cn, noise, i, n)
