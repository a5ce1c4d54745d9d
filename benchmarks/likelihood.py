"""Probability-flow likelihood at matched accuracy: ours against the scipy RK45 batch solve and k-diffusion.

Every method solves the same ODE from ``t_eps = 1e-5`` to ``T`` in float64 with the exact score of an analytic mixture
as the network, and every method's prior term is the exact ``log p_T(z)``, so the error is the solver's alone:
  * ``trace=exact``: error against the exact ``log p_{t_eps}(x)``;
  * ``trace=hutchinson``: every method gets the *same* Rademacher probe per sample, so all estimate the same number;
    the error is against that estimate solved at ``rtol = atol = 1e-11`` (dopri8).

Cases: ``ring2d`` (the 2-D ring, VP), ``mix16d`` (16-D, 4 components, covariance eigenvalues over two decades; VP
and sub-VP), ``mix64d`` (64-D, VP, Hutchinson only), and ``+net`` variants whose score calls also pay for a width-512
MLP's forward and backward (``exact + 0 × MLP``: the same answer at a trained model's cost).

Methods:
  * ``ours``: ``scoresde.log_likelihood`` as shipped (dopri5 with a step size per sample; the divergence through
    autograd, as for a network: the mixture's own divergence hook is hidden from it);
  * ``ours+hook``: the same with the mixture's exact ``divergence`` (``trace=exact`` rows only);
  * ``scipy-rk45``: the reference code's style, ``scipy.integrate.solve_ivp(RK45)`` on the flattened batch with a
    numpy round trip at every evaluation (drift and divergence from one forward pass);
  * ``kd``: k-diffusion's ``log_likelihood`` (Hutchinson only; its variables ``x/alpha``, ``sigma/alpha``, with the
    change of variables back to ``x`` added exactly). Skipped without k-diffusion (docs/benchmarks.md).

**Matched accuracy.** For each accuracy level (mean, worst-sample |bits/dim error|) each method walks a tolerance
ladder (``rtol = atol``, 1e-2 down to 1e-8) and stops at the first tolerance that meets both. The chosen
configurations are then timed interleaved (``--repeats`` rounds, each method once per round) and the medians
reported, with each peer's time over ours (> 1: ours is faster) and evaluations per sample.

    python benchmarks/likelihood.py [--n 256] [--repeats 5] [--cases ring2d-vp mix16d-vp ...]
                                    [--out benchmarks/results/likelihood.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

from scoresde import VPSDE, GaussianMixture, SubVPSDE, log_likelihood
from scoresde._utils import append_dims
from scoresde.likelihood import divergence
from scoresde.nets import MLP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers import load_k_diffusion_sampling  # noqa: E402  (k-diffusion's sampling module without torchvision)

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
LN2 = math.log(2.0)
T_EPS = 1e-5


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
def ours(score, sde, x, probes, tol):
    noise = None if probes is None else (lambda _x: probes[0])
    res = log_likelihood(score, sde, x, t_eps=T_EPS, rtol=tol, atol=tol,
                         trace="exact" if probes is None else "hutchinson", noise=noise)
    return res.z, res.integral, float(res.nfe_per_sample.double().mean())


def hidden(score):
    """The score without its ``divergence`` hook (so the likelihood takes autograd's trace, as for a network)."""
    return lambda x, t: score(x, t)


# ---- driver -------------------------------------------------------------------------------------------------------
LADDER = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8]
LEVELS = [(1e-3, 1e-2), (1e-4, 1e-3), (1e-5, 1e-4)]  # (mean, worst) |bits/dim error| to reach


def cases() -> dict[str, dict]:
    ring, m16 = GaussianMixture.ring(), GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2)
    m64 = GaussianMixture.random(64, k=4, cond=100.0, scale=0.5, seed=3)
    return {
        "ring2d-vp": dict(gm=ring, sde=VPSDE(), traces=("exact", "hutchinson")),
        "mix16d-vp": dict(gm=m16, sde=VPSDE(), traces=("exact", "hutchinson")),
        "mix16d-subvp": dict(gm=m16, sde=SubVPSDE(), traces=("exact", "hutchinson")),
        "mix64d-vp": dict(gm=m64, sde=VPSDE(), traces=("hutchinson",)),
        "ring2d-vp+net": dict(gm=ring, sde=VPSDE(), traces=("exact", "hutchinson"), net=True),
        "mix16d-vp+net": dict(gm=m16, sde=VPSDE(), traces=("hutchinson",), net=True),
    }


def run_case(name: str, case: dict, n: int, kd, repeats: int) -> list[dict]:
    gm, sde = case["gm"], case["sde"]
    exact_score = gm.score_fn(sde)
    score = hidden(exact_score) if not case.get("net") else with_network_cost(exact_score, gm.dim)
    x = gm.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    B, D = x.shape
    log_pT = lambda z: gm.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=F64), sde)  # noqa: E731
    probes = torch.where(torch.randn(1, B, D, generator=torch.Generator().manual_seed(1), dtype=F64) >= 0, 1.0, -1.0)
    rows = []
    for trace in case["traces"]:
        p = None if trace == "exact" else probes
        if trace == "exact":
            truth = gm.log_prob(x, torch.full((B,), T_EPS, dtype=F64), sde)
        else:
            ref = log_likelihood(exact_score, sde, x, t_eps=T_EPS, rtol=1e-11, atol=1e-11, method="dopri8",
                                 trace="hutchinson", noise=lambda _x: probes[0])
            truth = ref.integral + log_pT(ref.z)
        z_tight = None
        methods: dict[str, Callable] = {"ours": lambda tol: ours(score, sde, x, p, tol)}
        if trace == "exact" and not case.get("net"):
            methods["ours+hook"] = lambda tol: ours(exact_score, sde, x, None, tol)
        methods["scipy-rk45"] = lambda tol: scipy_rk45(score, sde, x, p, tol)
        if trace == "hutchinson" and kd is not None:
            z_tight = ours(exact_score, sde, x, probes, 1e-9)[0]  # x_T for the identity in kd_integral

            def kd_run(tol):
                ll, nfe = k_diffusion(kd, score, sde, x, probes, tol)
                return z_tight, kd_integral(ll, z_tight, sde, D), nfe

            methods["kd"] = kd_run
        # walk each method's ladder until the tightest level is met (or the ladder ends)
        chosen: dict[tuple[str, int], tuple[float, float, float, float]] = {}
        for method, fn in methods.items():
            for tol in LADDER:
                z, integral, nfe = fn(tol)
                err = (integral + log_pT(z) - truth).abs() / (D * LN2)
                mean, worst = float(err.mean()), float(err.max())
                for i, (m_lvl, w_lvl) in enumerate(LEVELS):
                    if (method, i) not in chosen and mean <= m_lvl and worst <= w_lvl:
                        chosen[(method, i)] = (tol, mean, worst, nfe)
                if all((method, i) in chosen for i in range(len(LEVELS))):
                    break
            print(f"  {name} {trace} {method}: ladder done", file=sys.stderr)
        # time the chosen configurations, interleaved, one level at a time
        for i, (m_lvl, w_lvl) in enumerate(LEVELS):
            picks = {m: chosen[(m, i)] for m in methods if (m, i) in chosen}
            times: dict[str, list[float]] = {m: [] for m in picks}
            for _ in range(repeats):
                for m, (tol, *_rest) in picks.items():
                    start = time.perf_counter()
                    methods[m](tol)
                    times[m].append(time.perf_counter() - start)
            for m in methods:
                row = {"case": name, "trace": trace, "level_mean": m_lvl, "level_max": w_lvl, "method": m}
                if m in picks:
                    tol, mean, worst, nfe = picks[m]
                    row.update(tol=tol, bpd_err_mean=mean, bpd_err_max=worst, nfe_per_sample=nfe,
                               ms_per_sample=1e3 * statistics.median(times[m]) / B)
                rows.append(row)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Each peer's median time over ours at the same accuracy level (> 1: ours is faster)."""
    for r in rows:
        key = (r["case"], r["trace"], r["level_mean"])
        mine = next(o for o in rows if (o["case"], o["trace"], o["level_mean"]) == key and o["method"] == "ours")
        if "ms_per_sample" in r and "ms_per_sample" in mine:
            r["time_over_ours"] = r["ms_per_sample"] / mine["ms_per_sample"]


def print_table(rows: list[dict]) -> None:
    head = (f"{'case':14} {'trace':10} {'level (mean/max)':16} {'method':11} {'tol':>6} {'err mean':>9} "
            f"{'err max':>9} {'NFE/pt':>7} {'ms/pt':>7} {'t/ours':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        level = f"{r['level_mean']:.0e}/{r['level_max']:.0e}"
        if "tol" not in r:
            print(f"{r['case']:14} {r['trace']:10} {level:16} {r['method']:11} {'not reached on the ladder':>40}")
            continue
        ratio = f"{r['time_over_ours']:6.2f}" if r["method"] != "ours" and "time_over_ours" in r else " " * 6
        print(f"{r['case']:14} {r['trace']:10} {level:16} {r['method']:11} {r['tol']:6.0e} {r['bpd_err_mean']:9.2e} "
              f"{r['bpd_err_max']:9.2e} {r['nfe_per_sample']:7.1f} {r['ms_per_sample']:7.3f} {ratio}")
    print("Each method at the loosest tolerance that meets the level's mean and worst-sample error; times are medians "
          "of interleaved rounds; t/ours: the row's time over ours (> 1: ours is faster)")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (medians reported)")
    ap.add_argument("--cases", nargs="+", default=list(cases()), choices=list(cases()))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "likelihood.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kd = load_k_diffusion_sampling()
    if kd is None:
        print("k-diffusion not installed: its rows are skipped (docs/benchmarks.md)", file=sys.stderr)
    rows = []
    all_cases = cases()
    for name in args.cases:
        rows += run_case(name, all_cases[name], args.n, kd, args.repeats)
    add_ratios(rows)
    print_table(rows)
    result = {
        "n": args.n, "timing_repeats": args.repeats, "t_eps": T_EPS, "ladder": LADDER, "levels": LEVELS,
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
