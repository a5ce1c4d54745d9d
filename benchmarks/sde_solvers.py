"""Fast stochastic solvers at 5-100 score evaluations: ER-SDE-Solver (``er_sde``) against SA-Solver (diffusers'
``SASolverScheduler``, run on the same grid, x_T and exact score) and DPM-Solver++(2M/3M) SDE, on the exact cases of
``benchmarks/solvers.py`` (ring and 64-D anisotropic mixture, VP and VE). This is the measurement behind choosing
ER-SDE over SA-Solver for the registry.

Every run starts from the same exact draws of p_T; reported: Fréchet distance (FD), mode total variation and
cross-entropy gap (bits/dim) with their noise floors, medians over seeds.

    python benchmarks/sde_solvers.py [--nfe 5 10 20 50 100] [--seeds 2] [--out benchmarks/results/sde_solvers.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers import _s_hat, exact_x_T, floors, metrics, selected_cases  # noqa: E402  (the solver benchmark's cases and metrics)

from scoresde import sample  # noqa: E402
from scoresde.noise import derive_seeds  # noqa: E402
from scoresde.solvers import get_timesteps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OURS = {
    "er_sde-3": ("er_sde", {}),
    "er_sde-3(sde)": ("er_sde", {"noise_scale": "sde"}),
    "er_sde-2": ("er_sde", {"order": 2}),
    "dpm_solver_pp_sde-2m": ("dpm_solver_pp_sde", {}),
    "dpm_solver_pp_sde-3m": ("dpm_solver_pp_sde", {"order": 3}),
}
SA = {"df:sa-solver(2,2)": (2, 2), "df:sa-solver(3,3)": (3, 3), "df:sa-solver(3,4)": (3, 4)}


def sa_solver(gm, sde, x_T, nfe, grid, orders, seed):
    """diffusers' SA-Solver with tau = 1 (the reverse SDE) on our grid: its sigmas are ŝ = e^{-lambda} of the grid and
    its sample is kept in the VP scaling x̂ / sqrt(1 + ŝ²), as ``benchmarks/solvers.py`` runs diffusers' schedulers."""
    from diffusers import SASolverScheduler

    score, t_end = gm.score_fn(sde), sde.sampling_eps
    ts = get_timesteps(grid, sde, t_end, nfe)
    s_hat, alpha = _s_hat(sde, ts), sde.alpha(ts)
    sched = SASolverScheduler(num_train_timesteps=1000, predictor_order=orders[0], corrector_order=orders[1],
                              tau_func=lambda t: 1)
    sched.set_timesteps(nfe)
    sched.sigmas, sched.timesteps = s_hat.clone(), torch.arange(nfe - 1, -1, -1)
    gen = torch.Generator().manual_seed(seed)
    x_vp = x_T.double() / float(alpha[0]) / math.sqrt(1 + float(s_hat[0]) ** 2)
    for i, label in enumerate(sched.timesteps):
        t = ts[i].expand(x_T.shape[0])
        x = x_vp * float(alpha[i]) * math.sqrt(1 + float(s_hat[i]) ** 2)
        eps = -sde.sigma(t)[:, None] * score(x.to(x_T.dtype), t.to(x_T.dtype)).double()
        x_vp = sched.step(eps, label, x_vp, generator=gen).prev_sample.double()
    return (x_vp * float(alpha[-1]) * math.sqrt(1 + float(s_hat[-1]) ** 2)).to(x_T.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sde_solvers.json")
    args = ap.parse_args()
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit("this benchmark compares with diffusers' SA-Solver: pip install -e '.[bench]'")
    out: dict = {"nfe": args.nfe, "seeds": args.seeds, "machine": platform.processor() or platform.machine(),
                 "torch": torch.__version__, "cases": {}}
    for cname, gm, sde, n, ref, big in selected_cases(args.cases):
        rows: dict[str, dict[int, dict]] = {}
        for nfe in args.nfe:
            per: dict[str, list[dict]] = {}
            for seed in range(args.seeds):
                x_T = exact_x_T(gm, sde, n, 30 + seed, 40 + seed)
                for grid in ("log_snr", "karras"):
                    for name, (solver, opts) in OURS.items():
                        x = sample(gm.score_fn(sde), sde, x_T.shape, solver=solver, steps=nfe, grid=grid, x_init=x_T,
                                   seeds=derive_seeds(seed, 0, n), **opts).x
                        per.setdefault(f"{name}({grid})", []).append(metrics(x, gm, ref, big))
                    for name, orders in SA.items():
                        x = sa_solver(gm, sde, x_T, nfe, grid, orders, seed)
                        per.setdefault(f"{name}({grid})", []).append(metrics(x, gm, ref, big))
            for name, rs in per.items():
                rows.setdefault(name, {})[nfe] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"  {cname} NFE {nfe}", file=sys.stderr, flush=True)
        out["cases"][cname] = {"n": n, "floors": floors(gm, n, ref, big), "rows": rows}
    print_table(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def print_table(out: dict) -> None:
    for key, label in (("frechet", "FD"), ("mode_mass", "mode TV"), ("ce_gap", "CE gap (bits/dim)")):
        for cname, c in out["cases"].items():
            f = c["floors"][key]
            print(f"\n{cname}: {label} (floor mean {f['mean']:.4f}, p90 {f['p90']:.4f})")
            print(f"{'solver':<32}" + "".join(f"{n:>10}" for n in out["nfe"]))
            for name, r in sorted(c["rows"].items(), key=lambda kv: abs(kv[1][out["nfe"][1]][key])):  # |CE gap|: either sign is off
                print(f"{name:<32}" + "".join(f"{r[n][key]:>10.4f}" for n in out["nfe"]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--print"]:  # reprint a stored result: --print FILE
        stored = json.loads(Path(sys.argv[2]).read_text())
        for c in stored["cases"].values():  # JSON keys are strings
            c["rows"] = {k: {int(n): v for n, v in r.items()} for k, r in c["rows"].items()}
        print_table(stored)
    else:
        main()
