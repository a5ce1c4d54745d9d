"""The adaptive reverse-SDE solver (``adaptive_sde``, "Gotta Go Fast") against fixed-step stochastic solvers at the
same number of score calls, on the exact cases of ``benchmarks/solvers.py`` (ring and 64-D anisotropic mixture, VP
and VE), with the exact score as the network.

For each tolerance (``atol = rtol / 6``) the adaptive solver runs from exact draws of p_T; its counted NFE (score
calls, each over the whole batch) then sets the step count of Euler–Maruyama (uniform grid) and
DPM-Solver++(2M) SDE (log-SNR grid) on the same x_T. A variant that redraws the increment of a retried step (the
paper's handling of rejections) runs beside it. Reported per case: Fréchet distance (FD), mode total variation and
cross-entropy gap (bits/dim) with their noise floors, the mean score evaluations per sample, and wall seconds;
medians over seeds.

    python benchmarks/adaptive_sde.py [--rtol 0.2 0.1 0.05 0.02] [--seeds 2]
                                      [--out benchmarks/results/adaptive_sde.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers import exact_x_T, floors, metrics, selected_cases  # noqa: E402  (the solver benchmark's cases and metrics)

from scoresde import sample  # noqa: E402
from scoresde.noise import derive_seeds  # noqa: E402
from scoresde.solvers import AdaptiveReverseSDE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class FreshNoise(AdaptiveReverseSDE):
    """A retried step draws a new increment instead of the Brownian bridge value (biased; for comparison)."""

    @staticmethod
    def _brownian_at(path, s, rows, w_now, s_now):  # type: ignore[no-untyped-def]
        return w_now + (s - s_now).sqrt()[:, None] * torch.randn_like(w_now)


def run(score, sde, x_T, seed, **kw):
    """Samples, counted NFE, score evaluations per sample and wall seconds."""
    rows = [0]

    def counted(x, t):
        rows[0] += x.shape[0]
        return score(x, t)

    start = time.perf_counter()
    res = sample(counted, sde, x_T.shape, x_init=x_T, seeds=derive_seeds(seed, 0, len(x_T)), **kw)
    return res.x, res.nfe, rows[0] / len(x_T), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtol", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.02])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/adaptive_sde.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    out: dict = {"rtol": args.rtol, "seeds": args.seeds, "machine": platform.processor() or platform.machine(),
                 "torch": torch.__version__, "cases": {}}
    for cname, gm, sde, n, ref, big in selected_cases(args.cases):
        fl = floors(gm, n, ref, big)
        score = gm.score_fn(sde)
        rows = []
        for rtol in args.rtol:
            per_seed: dict[str, list[dict]] = {}
            for seed in range(args.seeds):
                x_T = exact_x_T(gm, sde, n, 30 + seed, 40 + seed)
                runs = {}
                for name, solver in (("adaptive_sde", AdaptiveReverseSDE(rtol=rtol, atol=rtol / 6)),
                                     ("fresh_noise", FreshNoise(rtol=rtol, atol=rtol / 6))):
                    runs[name] = run(score, sde, x_T, seed, solver=solver, steps=1)
                nfe = runs["adaptive_sde"][1]
                runs["euler_maruyama"] = run(score, sde, x_T, seed, solver="euler_maruyama", steps=nfe)
                runs["dpm_solver_pp_sde"] = run(score, sde, x_T, seed, solver="dpm_solver_pp_sde", steps=nfe,
                                                grid="log_snr")
                for name, (x, used, evals, sec) in runs.items():
                    per_seed.setdefault(name, []).append({"nfe": used, "evals_per_sample": evals, "seconds": sec,
                                                          **metrics(x, gm, ref, big)})
            row = {"rtol": rtol, "atol": rtol / 6}
            for name, rs in per_seed.items():
                row[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            rows.append(row)
            print(f"  {cname} rtol {rtol}: NFE {row['adaptive_sde']['nfe']:.0f}", file=sys.stderr, flush=True)
        out["cases"][cname] = {"n": n, "floors": fl, "rows": rows}
    print_table(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def print_table(out: dict) -> None:
    names = ("adaptive_sde", "fresh_noise", "euler_maruyama", "dpm_solver_pp_sde")
    for cname, c in out["cases"].items():
        f = c["floors"]
        print(f"\n{cname} (n = {c['n']}; floors: FD {f['frechet']['mean']:.4f}, mode TV {f['mode_mass']['mean']:.4f}, "
              f"CE gap {f['ce_gap']['mean']:.4f})")
        print(f"{'rtol':>6} {'NFE':>5} {'evals/sample':>12} " + " ".join(f"{'FD ' + n[:14]:>18}" for n in names)
              + " " + " ".join(f"{'TV ' + n[:14]:>18}" for n in names) + f" {'seconds (adaptive/EM)':>22}")
        for r in c["rows"]:
            a = r["adaptive_sde"]
            print(f"{r['rtol']:>6} {a['nfe']:>5.0f} {a['evals_per_sample']:>12.1f} "
                  + " ".join(f"{r[n]['frechet']:>18.4f}" for n in names) + " "
                  + " ".join(f"{r[n]['mode_mass']:>18.4f}" for n in names)
                  + f" {a['seconds']:>10.2f} / {r['euler_maruyama']['seconds']:<9.2f}")


if __name__ == "__main__":
    main()
