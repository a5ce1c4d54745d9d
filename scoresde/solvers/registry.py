"""The one registry of samplers and correctors: names to classes, and the one way a name with options (or an instance)
becomes an instance, with the same validation and error messages wherever a solver is accepted (Python, YAML, CLI).

Add a solver by writing one :class:`~scoresde.solvers.base.Solver` subclass and one entry in :data:`SOLVERS` (or
calling :func:`register_solver`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Solver
from .correctors import AnnealedLangevin, Corrector, Langevin, NoPredictor, PredictorCorrector
from .fast import DDIM, ERSDE, Consistency, DPMSolver, DPMSolverPP, DPMSolverPPSDE, Heun, Restart
from .multistep import DEIS, IPNDM, UniPC
from .ode import ProbabilityFlow
from .sde import SRK, AdaptiveReverseSDE, Ancestral, EulerMaruyama, Milstein, ReverseDiffusion, ReversibleHeun, TorchSDE

__all__ = ["SOLVERS", "CORRECTORS", "SolverSpec", "register_solver", "get_solver", "get_corrector"]

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
    "dpm_solver_pp_sde": DPMSolverPPSDE,
    "restart": Restart,
    "adaptive_sde": AdaptiveReverseSDE,
    "er_sde": ERSDE,
    # probability-flow ODE
    "ode": ProbabilityFlow,
    "ddim": DDIM,
    "dpm_solver": DPMSolver,
    "dpm_solver_pp": DPMSolverPP,
    "heun": Heun,
    "unipc": UniPC,
    "deis": DEIS,
    "ipndm": IPNDM,
    # consistency models (scoresde distill with method: consistency)
    "consistency": Consistency,
}
"""Solver classes by name."""

CORRECTORS: dict[str, type[Corrector]] = {"langevin": Langevin, "annealed_langevin": AnnealedLangevin}
"""Corrector classes by name."""

SolverSpec = str | Solver
"""What every entry point takes as a solver: a registered name (plus options) or an instance."""


def register_solver(name: str, cls: type[Solver]) -> None:
    """Add ``cls`` to :data:`SOLVERS` under ``name`` (refuses to overwrite an existing name)."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"register_solver needs a Solver subclass, got {cls!r}")
    if name in SOLVERS:
        raise ValueError(f"a solver named {name!r} is already registered ({SOLVERS[name].__name__})")
    SOLVERS[name] = cls


def get_solver(solver: SolverSpec, **options: Any) -> Solver:
    """A solver instance from a registered name plus options, or the given instance itself.

    A solver whose class declares ``parts`` (predictor–corrector) gets those fields built from names too:
    ``get_solver("pc", predictor="ddim", predictor_options={"eta": 1.0}, corrector="langevin")``; ``"none"`` as the
    predictor gives corrector-only sampling.

    Raises:
        ValueError: unknown name (the message lists the registered ones) or unknown option (lists the valid ones).
    """
    return _build(solver, options, SOLVERS, Solver, "solver")


def get_corrector(corrector: str | Corrector, **options: Any) -> Corrector:
    """A corrector from a registered name plus options, or the given instance."""
    return _build(corrector, options, CORRECTORS, Corrector, "corrector")


def _build(obj: Any, options: dict[str, Any], registry: dict[str, Any], base: type, kind: str) -> Any:
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
    parts: dict[str, str] = getattr(cls, "parts", {})
    valid = {f.name for f in dataclasses.fields(cls)} | {f"{p}_options" for p in parts}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"{kind} {obj!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(valid)) or '(none)'}"
        )
    options = dict(options)
    for part, part_kind in parts.items():
        spec, part_options = options.pop(part, None), options.pop(f"{part}_options", None) or {}
        if spec is None and not part_options:
            continue  # the class default
        if part_kind == "solver" and spec == "none":
            if part_options:
                raise ValueError(f"{part}='none' takes no options, got {sorted(part_options)}")
            options[part] = NoPredictor()
        elif part_kind == "solver":
            options[part] = get_solver(spec if spec is not None else _default_name(cls, part, SOLVERS), **part_options)
        else:
            options[part] = get_corrector(
                spec if spec is not None else _default_name(cls, part, CORRECTORS), **part_options
            )
    return cls(**options)


def _default_name(cls: type, part: str, registry: dict[str, type]) -> str:
    """The registry name of the class that ``cls``'s field ``part`` defaults to (for options without a name)."""
    default = type(getattr(cls(), part))
    return next(k for k, c in registry.items() if c is default)
