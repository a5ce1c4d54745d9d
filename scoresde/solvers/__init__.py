"""One registry of samplers. Add yours by writing one :class:`Solver` subclass and one entry in ``SOLVERS``
(or calling :func:`register_solver`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Solver as Solver
from .base import SolverSDEIncompatible as SolverSDEIncompatible
from .base import State as State
from .sde import EulerMaruyama as EulerMaruyama
from .timesteps import TIME_GRIDS as TIME_GRIDS
from .timesteps import get_timesteps as get_timesteps

SOLVERS: dict[str, type[Solver]] = {
    "euler_maruyama": EulerMaruyama,
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
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} were given with a solver instance; set them on the instance")
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a Solver instance, got {type(solver).__name__}")
    try:
        cls = SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(sorted(SOLVERS))}") from None
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"solver {solver!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(valid)) or '(none)'}"
        )
    return cls(**options)
