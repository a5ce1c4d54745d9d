"""One registry of samplers. Add yours by writing one :class:`Solver` subclass and one entry in ``SOLVERS``
(or calling :func:`register_solver`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Solver as Solver
from .base import SolverSDEIncompatible as SolverSDEIncompatible
from .base import State as State
from .correctors import CORRECTORS as CORRECTORS
from .correctors import AnnealedLangevin as AnnealedLangevin
from .correctors import Corrector as Corrector
from .correctors import Langevin as Langevin
from .correctors import PredictorCorrector as PredictorCorrector
from .correctors import get_corrector as get_corrector
from .fast import DDIM as DDIM
from .fast import DPMSolver as DPMSolver
from .fast import DPMSolverPP as DPMSolverPP
from .fast import Heun as Heun
from .ode import ProbabilityFlow as ProbabilityFlow
from .sde import SRK as SRK
from .sde import Ancestral as Ancestral
from .sde import EulerMaruyama as EulerMaruyama
from .sde import Milstein as Milstein
from .sde import ReverseDiffusion as ReverseDiffusion
from .sde import ReversibleHeun as ReversibleHeun
from .sde import TorchSDE as TorchSDE
from .timesteps import TIME_GRIDS as TIME_GRIDS
from .timesteps import get_timesteps as get_timesteps

SOLVERS: dict[str, type[Solver]] = {
    # reverse-time SDE
    "euler_maruyama": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "ancestral": Ancestral,
    "srk": SRK,
    "milstein": Milstein,
    "reversible_heun": ReversibleHeun,
    "torchsde": TorchSDE,
    "pc": PredictorCorrector,
    # probability-flow ODE
    "ode": ProbabilityFlow,
    "ddim": DDIM,
    "dpm_solver": DPMSolver,
    "dpm_solver_pp": DPMSolverPP,
    "heun": Heun,
}
"""Solver classes by name."""


def register_solver(name: str, cls: type[Solver]) -> None:
    """Add ``cls`` to :data:`SOLVERS` under ``name`` (refuses to overwrite an existing name)."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"register_solver needs a Solver subclass, got {cls!r}")
    if name in SOLVERS:
        raise ValueError(f"a solver named {name!r} is already registered ({SOLVERS[name].__name__})")
    SOLVERS[name] = cls


def get_solver(solver: str | Solver, **options: Any) -> Solver:
    """A solver instance from a registered name plus options, or the given instance itself.

    Raises:
        ValueError: unknown name (the message lists the registered ones) or unknown option (lists the valid ones).
    """
    return _build(solver, options, SOLVERS, Solver, "solver")


def _build(obj: Any, options: dict[str, Any], registry: dict[str, type], base: type, kind: str) -> Any:
    """``registry[obj](**options)`` with errors that list the valid names and options; instances pass through."""
    if isinstance(obj, base):
        if options:
            raise ValueError(f"options {sorted(options)} were given with a {kind} instance; set them on the instance")
        return obj
    if not isinstance(obj, str):
        raise TypeError(f"{kind} must be a name or a {base.__name__} instance, got {type(obj).__name__}")
    try:
        cls = registry[obj]
    except KeyError:
        raise ValueError(f"unknown {kind} {obj!r}; available: {', '.join(sorted(registry))}") from None
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"{kind} {obj!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(valid)) or '(none)'}"
        )
    return cls(**options)
