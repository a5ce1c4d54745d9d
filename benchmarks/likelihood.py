"""Probability-flow likelihood: error against exact answers and wall time per sample, ours against peers.

Targets (float64, the exact score of an analytic mixture as the network, VP SDE, ``t_eps = 1e-5``):
  * ``ring2d``: the 2-D ring of 8 Gaussians;
  * ``mix16d``: a 16-D mixture of 4 Gaussians whose covariance eigenvalues span two decades.

Every method solves the same ODE from ``t_eps`` to ``T`` at the same ``rtol = atol``, and every method's prior term is
replaced by the exact ``log p_T(z)``, so the error is the solver's alone:
  * ``trace=exact``: error against the exact ``log p_{t_eps}(x)``;
  * ``trace=hutchinson``: every method gets the *same* Rademacher probe per sample, so all estimate the same number;
    the error is against that estimate solved at ``rtol = atol = 1e-11`` (dopri8).

Methods:
  * ``ours``: ``scoresde.log_likelihood`` (torchdiffeq dopri5, one batch system, per-sample mixed error norm);
  * ``ours(batch-rms)``: the same solve with torchdiffeq's default batch-wide RMS norm (the design alternative);
  * ``ours(per-sample)``: one independent solve per sample (the other design alternative; on a subset);
  * ``scipy-rk45``: the reference code's style: ``scipy.integrate.solve_ivp(RK45)`` on the flattened batch, with a
    numpy round trip at every evaluation (drift and divergence from one forward pass, which favours it);
  * ``kd``: k-diffusion's ``log_likelihood`` (Hutchinson only; EDM variables ``x/alpha``, ``sigma/alpha``; the
    change of variables back to ``x`` is added exactly). Needs the ``bench`` extra; skipped if absent.

``ring2d+net`` repeats ``ring2d`` with a network's cost added to every score call (``exact + 0 × MLP``: the same
answer, the cost of a width-512 MLP's forward and backward), the regime of trained models, where score evaluations
dominate and the solver's own overhead matters less.

Reported per row: mean and max |error| in bits/dim over the samples, mean NFE, milliseconds per sample (fastest of
``--repeats`` runs). Ratios: the peer's time over ours at the same tolerance, and at matched accuracy (our fastest
row, any tolerance, whose mean, or worst-sample, error is no larger than the peer's).

    python benchmarks/likelihood.py [--n 256] [--tols 1e-3 3e-4 1e-4 3e-5 1e-5] [--net-tols 1e-3 1e-4 1e-5]
                                    [--repeats 3] [--out benchmarks/results/likelihood.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

from scoresde import VPSDE, GaussianMixture, log_likelihood
from scoresde._utils import append_dims
from scoresde.likelihood import divergence
from scoresde.nets import MLP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers import load_k_diffusion_sampling  # noqa: E402  (k-diffusion's sampling module without torchvision)

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
LN2 = math.log(2.0)
T_EPS = 1e-5
PER_SAMPLE_SUBSET = 32


def targets() -> dict[str, GaussianMixture]:
    return {"ring2d": GaussianMixture.ring(), "mix16d": GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2)}


def with_network_cost(score: Callable, dim: int) -> Callable:
    """The exact score plus ``0 ×`` an MLP's output (width 512, 4 blocks): the same answer, at the cost of a network
    forward and backward per evaluation, so that score evaluations dominate as they do for trained models."""
    torch.manual_seed(0)
    net = MLP([dim], width=512, depth=4).double()
    return lambda x, t: score(x, t) + 0.0 * net(x, t)


# ---- peers --------------------------------------------------------------------------------------------------------
def scipy_rk45(score, sde, x, probes, tol):
    """The reference code's solve: one scipy RK45 system for the whole batch, numpy <-> torch at every evaluation."""
    B, D = x.shape
    flow = sde.probability_flow(score)
    nfe = 0

    def ode_func(t: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xt = torch.from_numpy(y[: B * D].reshape(B, D)).requires_grad_(True)
        v = flow.drift(xt, torch.full((B,), t, dtype=F64))
        div = divergence(v, xt, probes)
        return np.concatenate([v.detach().numpy().ravel(), div.detach().numpy()])

    y0 = np.concatenate([x.numpy().ravel(), np.zeros(B)])
    sol = integrate.solve_ivp(ode_func, (T_EPS, sde.T), y0, rtol=tol, atol=tol, method="RK45")
    z = torch.from_numpy(sol.y[: B * D, -1].reshape(B, D))
    return z, torch.from_numpy(sol.y[B * D :, -1]), nfe


def k_diffusion(kd, score, sde, x, probes, tol):
    """k-diffusion's ``log_likelihood`` on the EDM denoiser of the exact score; returns the ``x``-space integral."""
    B, D = x.shape
    s_of = lambda t: math.exp(-float(sde.log_snr(torch.tensor([t], dtype=F64))[0]))  # noqa: E731  sigma/alpha
    a_of = lambda t: float(sde.alpha(torch.tensor([t], dtype=F64))[0])  # noqa: E731

    def denoiser(x_hat, s_hat):
        t = sde.t_from_log_snr(-torch.log(s_hat))
        a, s = (append_dims(c(t), x_hat.ndim) for c in (sde.alpha, sde.sigma))
        return (a * x_hat + s**2 * score(a * x_hat, t)) / a

    randint_like = torch.randint_like
    torch.randint_like = lambda *a, **k: (probes[0] + 1) / 2  # k-diffusion draws v = 2·randint(0, 2) - 1
    try:
        calls = 0

        def counted(*a, **k):
            nonlocal calls
            calls += 1
            return denoiser(*a, **k)

        ll, _ = kd.log_likelihood(counted, x / a_of(T_EPS), s_of(T_EPS), s_of(sde.T), atol=tol, rtol=tol)
    finally:
        torch.randint_like = randint_like
    return ll, calls


def kd_integral(ll, z, sde, D):
    """The x-space integral from k-diffusion's total ``ll = log N(x̂_T; 0, s_max²) + Δ``: ``Δ + D (log α_T − log α_eps)``
    (``log p_x(x) = log p_x̂(x/α) − D log α`` at both ends). k-diffusion does not return ``x̂_T``; only its prior term
    needs it, so ``z = α_T x̂_T`` comes from a tight solve of ours; the integral Δ is k-diffusion's own."""
    a_T, a_eps = (float(sde.alpha(torch.tensor([t], dtype=F64))[0]) for t in (sde.T, T_EPS))
    s_max = float(sde.sigma(torch.tensor([sde.T], dtype=F64))[0]) / a_T
    prior_hat = torch.distributions.Normal(0.0, s_max).log_prob(z / a_T).sum(1)
    return ll - prior_hat + D * (math.log(a_T) - math.log(a_eps))


# ---- ours ---------------------------------------------------------------------------------------------------------
def ours(score, sde, x, probes, tol, norm: str = "per-sample"):
    opts = {"method_options": {"norm": _batch_rms}} if norm == "batch-rms" else {}
    noise = None if probes is None else (lambda _x: probes[0])
    res = log_likelihood(score, sde, x, t_eps=T_EPS, rtol=tol, atol=tol,
                         trace="exact" if probes is None else "hutchinson", noise=noise, **opts)
    return res.z, res.integral, res.nfe


def _batch_rms(r: torch.Tensor) -> torch.Tensor:
    return r.pow(2).mean().sqrt()  # torchdiffeq's default norm for a single tensor state


def ours_per_sample(score, sde, x, probes, tol):
    zs, ints, nfe = [], [], 0
    for i in range(x.shape[0]):
        z, integral, n = ours(score, sde, x[i : i + 1], None if probes is None else probes[:, i : i + 1], tol)
        zs.append(z), ints.append(integral)
        nfe += n
    return torch.cat(zs), torch.cat(ints), nfe / x.shape[0]


# ---- driver -------------------------------------------------------------------------------------------------------
def timed(fn: Callable, *args, repeats: int = 1):
    """``fn(*args)`` and its fastest wall time over ``repeats`` runs (the runs are deterministic)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return out, best


def run_target(name: str, gm: GaussianMixture, n: int, tols: list[float], kd, repeats: int, net_cost: bool = False,
               per_sample: bool = True) -> list[dict]:
    sde = VPSDE()
    score = gm.score_fn(sde) if not net_cost else with_network_cost(gm.score_fn(sde), gm.dim)
    x = gm.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    B, D = x.shape
    log_pT = lambda z: gm.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=F64), sde)  # noqa: E731
    exact = gm.log_prob(x, torch.full((B,), T_EPS, dtype=F64), sde)
    gen = torch.Generator().manual_seed(1)
    probes = torch.where(torch.randn(1, B, D, generator=gen, dtype=F64) >= 0, 1.0, -1.0).to(F64)
    ref = log_likelihood(score, sde, x, t_eps=T_EPS, rtol=1e-11, atol=1e-11, method="dopri8", trace="hutchinson",
                         noise=lambda _x: probes[0])
    truth = {"exact": exact, "hutchinson": ref.integral + log_pT(ref.z)}
    rows = []
    for trace in ("exact", "hutchinson"):
        p = None if trace == "exact" else probes
        for tol in tols:
            runs = {
                "ours": lambda: ours(score, sde, x, p, tol),
                "ours(batch-rms)": lambda: ours(score, sde, x, p, tol, norm="batch-rms"),
                "ours(per-sample)": lambda: ours_per_sample(score, sde, x[:PER_SAMPLE_SUBSET],
                                                            None if p is None else p[:, :PER_SAMPLE_SUBSET], tol),
                "scipy-rk45": lambda: scipy_rk45(score, sde, x, p, tol),
            }
            if not per_sample:
                del runs["ours(per-sample)"]
            for method, fn in runs.items():
                (z, integral, nfe), wall = timed(fn, repeats=1 if method == "ours(per-sample)" else repeats)
                m = z.shape[0]
                err = (integral + log_pT(z) - truth[trace][:m]).abs() / (D * LN2)
                rows.append(_row(name, trace, tol, method, err, nfe, wall / m))
            if trace == "hutchinson" and kd is not None:
                (ll, nfe), wall = timed(k_diffusion, kd, score, sde, x, probes, tol, repeats=repeats)
                z_ours, _, _ = ours(score, sde, x, probes, 1e-9)  # x_T for the identity in kd_integral
                integral = kd_integral(ll, z_ours, sde, D)
                err = (integral + log_pT(z_ours) - truth[trace]).abs() / (D * LN2)
                rows.append(_row(name, trace, tol, "kd", err, nfe, wall / B))
            print(f"  {name} {trace} tol={tol:g} done", file=sys.stderr)
    return rows


def _row(target, trace, tol, method, err, nfe, sec) -> dict:
    return {"target": target, "trace": trace, "tol": tol, "method": method, "bpd_err_mean": float(err.mean()),
            "bpd_err_max": float(err.max()), "nfe": float(nfe), "ms_per_sample": 1e3 * sec}


def add_ratios(rows: list[dict]) -> None:
    """time(peer)/time(ours) at the same tolerance and at matched accuracy (>1: ours is faster)."""
    for r in rows:
        if r["method"] == "ours":
            continue
        same = [o for o in rows if o["method"] == "ours" and (o["target"], o["trace"]) == (r["target"], r["trace"])]
        at_tol = next(o for o in same if o["tol"] == r["tol"])
        r["speed_ratio_same_tol"] = r["ms_per_sample"] / at_tol["ms_per_sample"]
        r["err_ratio_same_tol"] = r["bpd_err_mean"] / max(at_tol["bpd_err_mean"], 1e-300)
        for stat in ("mean", "max"):  # our fastest row at least as accurate, on average / in the worst sample
            good = [o["ms_per_sample"] for o in same if o[f"bpd_err_{stat}"] <= r[f"bpd_err_{stat}"]]
            r[f"speed_ratio_matched_{stat}_err"] = r["ms_per_sample"] / min(good) if good else None


def print_table(rows: list[dict]) -> None:
    head = (f"{'target':11} {'trace':10} {'tol':>6} {'method':17} {'err mean':>9} {'err max':>9} {'NFE':>5} "
            f"{'ms/sample':>9} {'t/ours':>7} {'@mean':>6} {'@max':>6}")
    print(head)
    print("-" * len(head))

    def ratio(r: dict, key: str, width: int) -> str:
        if r["method"] == "ours":
            return " " * width
        return f"{r[key]:{width}.2f}" if r.get(key) is not None else f"{'—':>{width}}"

    for r in rows:
        print(f"{r['target']:11} {r['trace']:10} {r['tol']:6.0e} {r['method']:17} {r['bpd_err_mean']:9.2e} "
              f"{r['bpd_err_max']:9.2e} {r['nfe']:5.0f} {r['ms_per_sample']:9.3f} {ratio(r, 'speed_ratio_same_tol', 7)} "
              f"{ratio(r, 'speed_ratio_matched_mean_err', 6)} {ratio(r, 'speed_ratio_matched_max_err', 6)}")
    print("errors: |bits/dim error| against exact answers (module docstring), mean and worst sample. Ratios are the "
          "row's time per sample over ours (> 1: ours is faster): t/ours at the same tolerance; @mean, @max against "
          "our fastest row (any tolerance) whose mean / worst error is no larger (—: none is)")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4, 3e-5, 1e-5])
    ap.add_argument("--net-tols", type=float, nargs="*", default=[1e-3, 1e-4, 1e-5],
                    help="tolerances for ring2d with a network's cost added to each score call (none: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="time each solve this many times and keep the fastest")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "likelihood.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kd = load_k_diffusion_sampling()
    if kd is None:
        print("k-diffusion not installed: its rows are skipped (pip install -e '.[bench]')", file=sys.stderr)
    rows = []
    for name, gm in targets().items():
        rows += run_target(name, gm, args.n, args.tols, kd, args.repeats)
    if args.net_tols:  # the regime of trained models: the network's cost dominates every evaluation
        rows += run_target("ring2d+net", targets()["ring2d"], args.n, args.net_tols, kd, 1, net_cost=True, per_sample=False)
    add_ratios(rows)
    print_table(rows)
    result = {
        "n": args.n, "tols": args.tols, "timing_repeats": args.repeats, "t_eps": T_EPS, "per_sample_subset": PER_SAMPLE_SUBSET,
        "peers": {"k_diffusion": kd is not None, "scipy": True},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return result


if __name__ == "__main__":
    main()
