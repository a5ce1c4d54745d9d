"""``scoresde grid``: search a time grid for a model, a solver and a budget, and save it for ``sample --grid FILE``.

    scoresde grid --ckpt runs/digits_vp/checkpoints/last.ckpt --solver unipc --steps 5 --out grids/unipc5.json
    scoresde sample --ckpt runs/digits_vp/checkpoints/last.ckpt --solver unipc --grid grids/unipc5.json --out s/

The search (``scoresde.solvers.grids.optimise_grid``) draws a calibration batch of ``--n`` prior samples, solves their
probability-flow ODE with dopri5 (the teacher), starts from the best of GITS's dynamic-programming grid and the
log-SNR and Karras grids, and moves the interior times one by one while the solver's endpoint error to the teacher
falls (``--method gits`` keeps GITS's grid). The file records the SDE, the solver, the search's cost and its
calibration error; ``sample`` refuses it for another SDE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...solvers import SOLVERS, get_solver
from ...solvers.grids import calibration_batch, gits_grid, is_grid_file, optimise_grid, save_grid
from ._common import CKPT_HELP, MODEL_CONFIG_HELP, CheckpointSpec, build_parser, load_model, option, parse_config

__all__ = ["GridConfig", "grid_command", "run_grid_search"]


@dataclass(kw_only=True)
class GridConfig:
    """The options of ``scoresde grid``."""

    ckpt: str = option(help=CKPT_HELP)
    model_config: str | None = option(None, MODEL_CONFIG_HELP, "--model-config")
    solver: str = option("unipc", f"a deterministic solver: one of {', '.join(sorted(SOLVERS))}")
    options: dict[str, Any] = option({}, "solver options, e.g. '{order: 3}'; or pass --order 3")
    steps: int = option(help="the grid's number of steps (the solver's budget: steps × its evaluations per step)")
    method: str = option("endpoint", "endpoint (solver-aware search from the best start) or gits")
    n: int = option(1024, "calibration batch size (half searched, half held out)")
    seed: int = option(12345, "seed of the calibration batch")
    fine: int = option(100, "steps of the fine candidate grid of GITS")
    sweeps: int = option(8, "coordinate sweeps of the endpoint search")
    t_end: float | None = option(None, "end time (default: the SDE's sampling_eps)")
    out: str = option(help="the grid file to write (*.json)", result=False)
    device: str | None = option(None, "default: cuda if available, else cpu", result=False)


def run_grid_search(cfg: GridConfig) -> Path:
    """Search the grid and write it to ``cfg.out``; returns the path."""
    if not is_grid_file(cfg.out):
        raise ValueError(f"--out must name a .json grid file, got {cfg.out!r}")
    if cfg.method not in ("endpoint", "gits"):
        raise ValueError(f"--method must be endpoint or gits, got {cfg.method!r}")
    if cfg.n < 1 or cfg.sweeps < 0 or not 1 <= cfg.steps <= cfg.fine:
        raise ValueError(
            f"need --n >= 1, --sweeps >= 0 and 1 <= --steps <= --fine ({cfg.fine}), got "
            f"n={cfg.n}, sweeps={cfg.sweeps}, steps={cfg.steps}"
        )
    solver = get_solver(cfg.solver, **cfg.options)
    if solver.stochastic:
        raise ValueError(f"--solver {cfg.solver} is stochastic; a grid search needs a deterministic solver")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(cfg.ckpt, device, model_config=cfg.model_config)
    if model.data_shape is None:
        raise ValueError(f"{cfg.ckpt} records no data shape")
    solver.check(model.sde)
    solver.check_size(math.prod(model.data_shape))
    x_T = calibration_batch(model.sde, (cfg.n, *model.data_shape), cfg.seed).to(device)
    start = time.perf_counter()
    if cfg.method == "gits":
        found = gits_grid(model.score_model, model.sde, x_T, cfg.steps, t_end=cfg.t_end, fine=cfg.fine)
    else:
        found = optimise_grid(
            model.score_model, model.sde, x_T, cfg.steps, solver, t_end=cfg.t_end, sweeps=cfg.sweeps, fine=cfg.fine
        )
    seconds = time.perf_counter() - start
    spec = CheckpointSpec.parse(cfg.ckpt)
    meta = {
        **found.info,
        "solver": cfg.solver,
        "options": cfg.options,
        "ckpt": str(spec.path.resolve()),
        "ckpt_sha256": spec.digest(),
        "seed": cfg.seed,
        "search_seconds": seconds,
        "search_nfe": found.nfe,
        "cost": found.cost,
    }
    path = save_grid(cfg.out, found.times, model.sde, **meta)
    times = ", ".join(f"{t:.4g}" for t in found.times.tolist())
    print(
        f"{cfg.method} grid of {cfg.steps} steps for {cfg.solver}: t = [{times}] "
        f"({found.nfe} evaluations of {cfg.n} samples, {seconds:.1f} s); wrote {path}"
    )
    return path


def grid_command(argv: Sequence[str]) -> Path:
    """``scoresde grid ...``; ``argv`` excludes the word ``grid``."""
    parser = build_parser(GridConfig, "scoresde grid", __doc__ or "")
    return run_grid_search(parse_config(GridConfig, parser, argv, solver_options=True))
