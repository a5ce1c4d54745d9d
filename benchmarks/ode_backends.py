"""Per-sample step control for the likelihood ODE (issue 18, step 1): torchdiffeq's dopri5 (one step size for the
whole batch, today's ``log_likelihood``), torchode's Dopri5 (a step size per sample) and ``scoresde.integrate``'s
per-sample Dormand–Prince (a step size per sample, finished samples leave the batch), on the exact ring under VP
with the exact score, in float64.

For each tolerance (rtol = atol) and batch size it reports the error of log p_{t_eps} in bits/dim against the exact
value (mean and worst sample; the exact diffused density serves as the prior, so only the solver is measured), the
evaluations per sample, wall seconds (median of interleaved repeats), and batch dependence: the largest change in a
point's bits/dim between solving the first 20 points alone (one at a time) and inside the batch.

    pip install torchode "typeguard<3"      # not part of the default install
    python benchmarks/ode_backends.py [--tol 1e-3 1e-4 1e-5 1e-6] [--batch 200 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from scoresde import VPSDE, GaussianMixture, log_likelihood
from scoresde.likelihood import divergence

ROOT = Path(__file__).resolve().parents[1]
T_EPS = 1e-5


def problem(n: int):
    gm, sde = GaussianMixture.ring(), VPSDE()
    x = gm.sample(n, generator=torch.Generator().manual_seed(0)).double()
    exact = gm.log_prob(x, torch.full((n,), T_EPS, dtype=torch.float64), sde)
    return gm, sde, x, exact


def torchdiffeq_logp(gm, sde, x, tol):
    prior = lambda z: gm.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=z.dtype), sde)  # noqa: E731
    res = log_likelihood(gm.score_fn(sde), sde, x, t_eps=T_EPS, rtol=tol, atol=tol, prior=prior)
    return res.logp, float(res.nfe)


def torchode_logp(gm, sde, x, tol):
    """The same ODE (state ``[x, ∫ div]``, exact divergence) through torchode with a per-sample step size."""
    import torchode as to

    flow, D = sde.probability_flow(gm.score_fn(sde)), x.shape[1]

    def rhs(t, y):
        with torch.enable_grad():
            xt = y[:, :D].detach().requires_grad_(True)
            v = flow.drift(xt, t.clamp(T_EPS, sde.T))
            div = divergence(v, xt, None)
        return torch.cat([v.detach(), div.detach()[:, None]], 1)

    term = to.ODETerm(rhs)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=tol, rtol=tol, term=term))
    B = x.shape[0]
    y0 = torch.cat([x, x.new_zeros(B, 1)], 1)
    t_eval = torch.tensor([T_EPS, sde.T], dtype=torch.float64).expand(B, 2)
    with torch.no_grad():
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
    yT = sol.ys[:, -1]
    logp = gm.log_prob(yT[:, :D], torch.full((B,), sde.T, dtype=torch.float64), sde) + yT[:, D]
    return logp, float(sol.stats["n_f_evals"].double().mean())


def per_sample_logp(gm, sde, x, tol):
    """The same ODE through ``scoresde.integrate.solve_per_sample`` (finished samples leave the batch), with
    ``log_likelihood``'s error norm: the worst of the x part's RMS and the log-density part."""
    from scoresde.integrate import solve_per_sample

    flow, D = sde.probability_flow(gm.score_fn(sde)), x.shape[1]

    def rhs(t, y, rows):
        with torch.enable_grad():
            xt = y[:, :D].detach().requires_grad_(True)
            v = flow.drift(xt, t)
            div = divergence(v, xt, None)
        return torch.cat([v.detach(), div.detach()[:, None]], 1)

    def norm(r):
        return torch.maximum(r[:, :D].pow(2).mean(1).sqrt(), r[:, D].abs())

    y0 = torch.cat([x, x.new_zeros(x.shape[0], 1)], 1)
    with torch.no_grad():
        sol = solve_per_sample(rhs, y0, T_EPS, sde.T, rtol=tol, atol=tol, norm=norm)
    B = x.shape[0]
    logp = gm.log_prob(sol.y[:, :D], torch.full((B,), sde.T, dtype=torch.float64), sde) + sol.y[:, D]
    return logp, float(sol.nfe.double().mean())


BACKENDS = {"torchdiffeq": torchdiffeq_logp, "torchode": torchode_logp, "per_sample": per_sample_logp}


def bpd(logp: torch.Tensor) -> torch.Tensor:
    return -logp / (2 * math.log(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tol", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6])
    ap.add_argument("--batch", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ode_backends.json")
    args = ap.parse_args()
    rows = []
    for B in args.batch:
        gm, sde, x, exact = problem(B)
        for tol in args.tol:
            runs: dict[str, list] = {name: [] for name in BACKENDS}
            for _ in range(args.repeats):  # interleaved
                for name, fn in BACKENDS.items():
                    start = time.perf_counter()
                    logp, nfe = fn(gm, sde, x, tol)
                    runs[name].append((time.perf_counter() - start, logp, nfe))
            for name, rs in runs.items():
                logp = rs[0][1]
                err = (bpd(logp) - bpd(exact)).abs()
                alone = torch.cat([BACKENDS[name](gm, sde, x[i : i + 1], tol)[0] for i in range(20)])
                rows.append({"backend": name, "batch": B, "tol": tol, "seconds": statistics.median(r[0] for r in rs),
                             "nfe_per_sample": rs[0][2], "mean_err_bpd": float(err.mean()),
                             "max_err_bpd": float(err.max()),
                             "batch_dependence_bpd": float((bpd(alone) - bpd(logp[:20])).abs().max())})
                r = rows[-1]
                print(f"B {B:5d} tol {tol:7.0e} {name:12s} {r['seconds']:7.2f} s  NFE/sample {r['nfe_per_sample']:6.0f}  "
                      f"mean err {r['mean_err_bpd']:.2e}  worst {r['max_err_bpd']:.2e}  "
                      f"alone vs batch {r['batch_dependence_bpd']:.1e}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                    "t_eps": T_EPS, "repeats": args.repeats, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
