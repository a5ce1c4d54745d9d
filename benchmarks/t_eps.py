"""Where the likelihood ODE should start: the cut-off ``t_eps`` measured on exact targets and on a trained model.

For each SDE (VP, sub-VP, VE), target (the 2-D ring; the 16-D mixture) and ``t_eps``, ``log_likelihood`` runs at its
default tolerances with the fitted prior (``fit_prior`` on 50,000 training points) and the exact score, and the
table splits the |bits/dim error| against the data's ``log p_0`` into
  * ``cut-off``: the exact ``|log p_eps - log p_0|`` (the mixture at both times), what ``t_eps`` itself costs;
  * ``total``: the run's error against ``log p_0`` (cut-off, solver and prior together);
  * ``taylor``: the same run with ``cutoff="taylor"`` (the second-order correction to ``t = 0``);
and the evaluations per point. With ``--ckpt`` (a ``scoresde fit`` checkpoint of ``ToyDataModule``'s ring, e.g. the
README's main job: ``runs/toy_vp/checkpoints/last.ckpt``) it adds the trained model's gap to the exact bits/dim on
test points at each ``t_eps``, with and without the correction: a learned score is poor at small ``t``.

    python benchmarks/t_eps.py [--n 500] [--t-eps 1e-3 1e-4 1e-5 1e-6 1e-7] [--ckpt runs/toy_vp/checkpoints/last.ckpt]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch

from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE, fit_prior, log_likelihood

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
LN2 = math.log(2.0)


def exact_rows(n: int, grid: list[float]) -> list[dict]:
    targets = {"ring2d": GaussianMixture.ring(), "mix16d": GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2)}
    rows = []
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        for name, mix in targets.items():
            train = mix.sample(50_000, generator=torch.Generator().manual_seed(1), dtype=F64)
            x = mix.sample(n, generator=torch.Generator().manual_seed(2), dtype=F64)
            b = x.shape[1] * LN2
            log_p0 = mix.log_prob(x)
            prior = fit_prior(sde, train)
            for t_eps in grid:
                if t_eps >= sde.T:
                    continue
                cut = mix.log_prob(x, torch.full((n,), t_eps, dtype=F64), sde) - log_p0
                plain = log_likelihood(mix.score_fn(sde), sde, x, t_eps=t_eps, prior=prior)
                fixed = log_likelihood(mix.score_fn(sde), sde, x, t_eps=t_eps, prior=prior, cutoff="taylor")
                rows.append({
                    "sde": type(sde).__name__, "target": name, "t_eps": t_eps,
                    "cutoff_mean": float(cut.abs().mean()) / b,
                    "total_mean": float((plain.logp - log_p0).abs().mean()) / b,
                    "total_max": float((plain.logp - log_p0).abs().max()) / b,
                    "taylor_mean": float((fixed.logp - log_p0).abs().mean()) / b,
                    "taylor_max": float((fixed.logp - log_p0).abs().max()) / b,
                    "nfe": float(plain.nfe_per_sample.double().mean()),
                })
                r = rows[-1]
                print(f"{r['sde']:9} {name:7} t_eps={t_eps:.0e} cut-off {r['cutoff_mean']:.2e} total {r['total_mean']:.2e}"
                      f"/{r['total_max']:.2e} taylor {r['taylor_mean']:.2e}/{r['taylor_max']:.2e} NFE {r['nfe']:.0f}",
                      flush=True)
    return rows


def trained_rows(ckpt: str, n: int, grid: list[float]) -> list[dict]:
    from scoresde.lightning.commands._common import load_data, load_model

    model, dm = load_model(ckpt), load_data(None, ckpt)
    raw = dm.test_raw[:n]
    x = dm.transform.forward(raw).double()
    exact = dm.target.log_prob(raw.double())
    b = x.shape[1] * LN2
    score = lambda x, t: model.score_model(x.float(), t.float()).double()  # noqa: E731
    rows = []
    for t_eps in grid:
        plain = log_likelihood(score, model.sde, x, t_eps=t_eps, prior=model.fitted_prior)
        fixed = log_likelihood(score, model.sde, x, t_eps=t_eps, prior=model.fitted_prior, cutoff="taylor")
        rows.append({"t_eps": t_eps, "gap": float((exact - plain.logp).mean()) / b,
                     "gap_taylor": float((exact - fixed.logp).mean()) / b,
                     "nfe": float(plain.nfe_per_sample.double().mean())})
        r = rows[-1]
        print(f"trained  t_eps={t_eps:.0e} gap to exact {r['gap']:+.4f} bits/dim, with taylor {r['gap_taylor']:+.4f},"
              f" NFE {r['nfe']:.0f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--t-eps", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
    ap.add_argument("--ckpt", default=None, help="a toy ring checkpoint for the trained-model rows")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/t_eps.json")
    args = ap.parse_args()
    result = {"n": args.n, "machine": platform.platform(), "torch": torch.__version__,
              "exact": exact_rows(args.n, args.t_eps)}
    if args.ckpt:
        result["trained"] = trained_rows(args.ckpt, args.n, args.t_eps)
        result["ckpt"] = args.ckpt
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
