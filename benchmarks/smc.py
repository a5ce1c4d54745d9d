"""SMC-Diff against the exact conditional of Gaussian mixtures (exact mixture score, VP SDE, float64, 100 steps).

Two problems, each with its exact conditional from ``GaussianMixture.condition``:
  * **two modes** (DESIGN.md §7): means (−2, −1) and (2, 1), sd 0.4, ``x_2 = 0.6`` observed; exact
    ``P(component 2 | y) = 0.9994``. Rows: replacement, RePaint (r = 10) and SMC with K ∈ {1, 4, 16, 64, 256} for
    Euler–Maruyama, the reverse-diffusion predictor and ancestral sampling (also at 500 steps); the column is the share
    of completions in component 2.
  * **four modes in 8-D**: components that differ little in the 4 observed coordinates and much in the 4 hidden ones
    (exact conditional weights 0.505, 0.362, 0.133, 0.001 against a prior of 1/4 each). Columns: Fréchet distance of
    the hidden part to the exact conditional and the mode-mass error (TV); the floor is the same for exact samples.

Every value is the mean ± sd over ``--seeds`` seeds. ``evals`` is score evaluations per completion: NFE × K for SMC
(one call per step on B·K rows), NFE for replacement and RePaint.

    python benchmarks/smc.py [--n 1000] [--seeds 3] [--out benchmarks/results/smc.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from scoresde import VPSDE, GaussianMixture
from scoresde.inverse import inpaint, smc
from scoresde.metrics import frechet_gaussian, mode_mass_error

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
KS = (1, 4, 16, 64, 256)
STEPS = 100


def two_modes() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    gm = GaussianMixture([1, 1], [[-2.0, -1.0], [2.0, 1.0]], [0.16, 0.16])
    return gm, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.6])


def four_modes() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    observed = torch.tensor([[0.0, 0, 0, 0], [0.6, 0, 0, 0], [0, 0.6, 0, 0], [-0.6, -0.6, 0, 0]], dtype=F64)
    means = torch.cat([observed, 2.0 * torch.randn(4, 4, generator=g, dtype=F64)], 1)
    gm = GaussianMixture(torch.ones(4), means, torch.full((4,), 0.09))
    return gm, torch.cat([torch.ones(4), torch.zeros(4)]), torch.tensor([0.25, 0.1, 0, 0, 0, 0, 0, 0])


def complete(gm, mask, x0, method: str, k: int, solver: str, n: int, seed: int, steps: int = STEPS):
    sde = VPSDE()
    y = x0.expand(n, -1).clone()
    g = torch.Generator().manual_seed(seed)
    if method == "smc":
        r = smc(gm.score_fn(sde), sde, y, mask, particles=k, solver=solver, steps=steps, generator=g, dtype=F64)
        return r.x, r.nfe * k
    r = inpaint(gm.score_fn(sde), sde, y, mask, method=method, resample=k if method == "repaint" else None,
                solver=solver, steps=steps, generator=g, dtype=F64)
    return r.x, r.nfe


def _stats(values: list[float]) -> tuple[float, float]:
    v = torch.tensor(values, dtype=F64)
    return float(v.mean()), float(v.std()) if len(values) > 1 else 0.0


def methods() -> list[tuple[str, int]]:
    return [("replacement", 1), ("repaint", 10)] + [("smc", k) for k in KS]


def two_mode_table(n: int, seeds: int) -> list[dict]:
    gm, mask, x0 = two_modes()
    rows = []
    # ancestral's 100-step kernel biases the weights (more particles do not help); at 500 steps it does not
    runs = [("euler_maruyama", STEPS), ("reverse_diffusion", STEPS), ("ancestral", STEPS), ("ancestral", 500)]
    for solver, steps in runs:
        for method, k in methods():
            if (method == "repaint" and solver != "euler_maruyama") or (steps != STEPS and k == 256):
                continue
            m = n if k < 256 else max(n // 2, 1)
            t0, shares = time.perf_counter(), []
            for s in range(seeds):
                x, evals = complete(gm, mask, x0, method, k, solver, m, s, steps)
                shares.append(float((x[:, 0] > 0).double().mean()))
            mean, sd = _stats(shares)
            rows.append({"problem": "two_modes", "solver": solver, "steps": steps, "method": method, "k": k, "n": m,
                         "evals": evals,
                         "p_component_2": mean, "p_sd": sd, "seconds": time.perf_counter() - t0})
            print(f"two modes  {solver:18s} {steps:4d} steps {method:12s} K/r={k:<4d} evals {evals:6d}  P(2) {mean:.4f} ± {sd:.4f}",
                  flush=True)
    return rows


def four_mode_table(n: int, seeds: int) -> list[dict]:
    gm, mask, x0 = four_modes()
    cond, _ = gm.condition(mask.bool(), x0[:4].double())
    rows = []
    refs = [cond.sample(n, generator=torch.Generator().manual_seed(100 + s), dtype=F64) for s in range(seeds)]
    fd, tv = _stats([frechet_gaussian(r, cond.mean, cond.cov) for r in refs]), _stats(
        [mode_mass_error(r, cond) for r in refs])
    rows.append({"problem": "four_modes_8d", "solver": "-", "method": "exact samples", "k": 0, "n": n, "evals": 0,
                 "fd": fd[0], "fd_sd": fd[1], "mode_tv": tv[0], "mode_tv_sd": tv[1]})
    for method, k in methods():
        t0, fds, tvs = time.perf_counter(), [], []
        for s in range(seeds):
            x, evals = complete(gm, mask, x0, method, k, "euler_maruyama", n, s)
            fds.append(frechet_gaussian(x[:, 4:], cond.mean, cond.cov))
            tvs.append(mode_mass_error(x[:, 4:], cond))
        fd, tv = _stats(fds), _stats(tvs)
        rows.append({"problem": "four_modes_8d", "solver": "euler_maruyama", "method": method, "k": k, "n": n,
                     "evals": evals, "fd": fd[0], "fd_sd": fd[1], "mode_tv": tv[0], "mode_tv_sd": tv[1],
                     "seconds": time.perf_counter() - t0})
        print(f"four modes {method:12s} K/r={k:<4d} evals {evals:6d}  FD {fd[0]:.4f} ± {fd[1]:.4f}  "
              f"TV {tv[0]:.3f} ± {tv[1]:.3f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="observations (completions) per seed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/smc.json")
    args = p.parse_args()
    rows = two_mode_table(args.n, args.seeds) + four_mode_table(args.n, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "steps": STEPS,
                                    "seeds": args.seeds, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
