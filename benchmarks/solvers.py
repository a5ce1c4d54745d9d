"""Sample quality against NFE for every solver, with the exact score of an analytic mixture as the network, and the
solver loop's own cost against bare network calls.

Part 1 (quality): for NFE budgets 5 … 1000, each solver configuration draws samples of
  * ``ring``: a 2-D ring of 8 Gaussians (multi-modal), VP SDE;
  * ``aniso64``: a 64-D mixture of 3 Gaussians whose covariance spectrum spans three decades, VP SDE;
and reports the Fréchet distance to the exact mean/covariance, the mode-mass error and the sliced Wasserstein distance
to an independent exact sample set, next to each metric's noise floor (the same metric on exact samples; mean of 10).
All solvers start from the same x_T. If installed (``pip install -e ".[bench]"``, see docs/benchmarks.md),
k-diffusion's samplers and diffusers' schedulers are driven by the same exact score at the same NFE, and the table
prints our best Fréchet distance over theirs at each NFE (below 1: ours is better).

Part 2 (overhead): a tiny MLP score at batch 4096; 100 steps of each fixed-step solver against as many bare network
calls as the solver makes (same inputs, no_grad), median of repeats.

    python benchmarks/solvers.py [--n N] [--nfe 5 10 20 50 100 250 1000] [--out benchmarks/results/solvers.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from scoresde import VPSDE, GaussianMixture, ScoreModel, sample
from scoresde._utils import append_dims
from scoresde.metrics import frechet_gaussian, mode_mass_error, sliced_wasserstein
from scoresde.nets import MLP
from scoresde.noise import PerSampleNoise, derive_seeds

ROOT = Path(__file__).resolve().parents[1]

# name: (solver, options, grid, steps for a budget of `nfe` score calls)
OURS: dict[str, tuple[str, dict, str, Callable[[int], int]]] = {
    "euler_maruyama": ("euler_maruyama", {}, "uniform", lambda n: n),
    "reverse_diffusion": ("reverse_diffusion", {}, "uniform", lambda n: n),
    "ancestral": ("ancestral", {}, "log_snr", lambda n: n),
    "pc(annealed)": ("pc", {"corrector": "annealed_langevin"}, "uniform", lambda n: n // 2),
    "srk": ("srk", {}, "uniform", lambda n: (n - 1) // 3),
    "ode(rk4)": ("ode", {"method": "rk4"}, "log_snr", lambda n: n // 4),
    "ddim": ("ddim", {}, "log_snr", lambda n: n),
    "dpm_solver-2": ("dpm_solver", {"order": 2}, "log_snr", lambda n: n // 2),
    "dpm_solver-3": ("dpm_solver", {"order": 3}, "log_snr", lambda n: n // 3),
    "dpm_solver_pp-2m": ("dpm_solver_pp", {"order": 2}, "log_snr", lambda n: n),
    "dpm_solver_pp-2m(karras)": ("dpm_solver_pp", {"order": 2}, "karras", lambda n: n),
    "dpm_solver_pp-3m": ("dpm_solver_pp", {"order": 3}, "log_snr", lambda n: n - 1),
    "heun(karras)": ("heun", {}, "karras", lambda n: (n + 1) // 2),
}


DETERMINISTIC_RUNS = {
    "ode(rk4)", "ddim", "dpm_solver-2", "dpm_solver-3", "dpm_solver_pp-2m", "dpm_solver_pp-2m(karras)",
    "dpm_solver_pp-3m", "heun(karras)", "kd:euler", "kd:heun", "kd:dpm_2", "kd:lms", "kd:dpmpp_2m",
    "kd:dpmpp_3m_sde(eta=0)", "df:ddim", "df:dpmsolver++2m", "df:dpmsolver++2m(karras)", "df:dpmsolver++3m", "df:unipc",
}


def targets() -> dict[str, GaussianMixture]:
    return {"ring": GaussianMixture.ring(), "aniso64": GaussianMixture.random(64, k=3, cond=1e3, seed=0)}


def metrics(x: torch.Tensor, gm: GaussianMixture, ref: torch.Tensor) -> dict[str, float]:
    x = x.double()
    if not torch.isfinite(x).all():
        return {"frechet": math.inf, "mode_mass": math.inf, "sliced_w2": math.inf}
    return {
        "frechet": frechet_gaussian(x, gm.mean, gm.cov),
        "mode_mass": mode_mass_error(x, gm),
        "sliced_w2": sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)),
    }


def transport_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Per-dimension RMS distance to the exact probability-flow transport of the same x_T (deterministic runs only):
    the solver's own error, free of the sampling noise that dominates the distribution metrics."""
    return float(((x.double() - ref) ** 2).flatten(1).mean(1).mean().sqrt())


def floors(gm: GaussianMixture, n: int, ref: torch.Tensor, reps: int = 10) -> dict[str, float]:
    runs = [metrics(gm.sample(n, generator=torch.Generator().manual_seed(1000 + r)), gm, ref) for r in range(reps)]
    return {k: statistics.mean(r[k] for r in runs) for k in runs[0]}


# ---- peers ------------------------------------------------------------------------------------------------------------


def load_k_diffusion_sampling() -> types.ModuleType | None:
    """k-diffusion's ``sampling`` module alone: the package's ``__init__`` imports torchvision (no CPU build here), and
    ``sampling`` needs only ``utils.append_dims`` from the rest of it."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = types.ModuleType("_kdiff")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("_kdiff.utils")
    utils.append_dims = append_dims
    sys.modules.update({"_kdiff": pkg, "_kdiff.utils": utils})
    sub = importlib.util.spec_from_file_location("_kdiff.sampling", Path(pkg.__path__[0]) / "sampling.py")
    module = importlib.util.module_from_spec(sub)
    sys.modules["_kdiff.sampling"] = module
    sub.loader.exec_module(module)
    return module


class Counter:
    def __init__(self, fn: Callable) -> None:
        self.fn, self.nfe = fn, 0

    def __call__(self, *args, **kwargs):
        self.nfe += 1
        return self.fn(*args, **kwargs)


def k_diffusion_runs(kd, gm, sde, x_T, nfe, t_end):
    """EDM-space denoiser D(x̂, ŝ) from the exact score: x̂ = x/alpha, ŝ = sigma/alpha = e^{-lambda}."""
    sig = lambda t: math.exp(-float(sde.log_snr(torch.tensor([t], dtype=torch.float64))[0]))  # noqa: E731
    s_max, s_min = sig(sde.T), sig(t_end)
    score = gm.score_fn(sde)

    def denoiser(x_hat, s_hat):
        t = sde.t_from_log_snr(-torch.log(s_hat.double()))
        a, s = (append_dims(c(t), x_hat.ndim).to(x_hat.dtype) for c in (sde.alpha, sde.sigma))
        x = a * x_hat
        return (x + s**2 * score(x, t.to(x.dtype))) / a

    x_hat = x_T / float(sde.alpha(torch.tensor([sde.T]))[0])
    runs = {
        "kd:euler": (kd.sample_euler, lambda n: n),
        "kd:heun": (kd.sample_heun, lambda n: n // 2),
        "kd:dpm_2": (kd.sample_dpm_2, lambda n: n // 2),
        "kd:lms": (kd.sample_lms, lambda n: n),
        "kd:dpmpp_2m": (kd.sample_dpmpp_2m, lambda n: n),
        "kd:dpmpp_3m_sde(eta=0)": (lambda m, x, s, **kw: kd.sample_dpmpp_3m_sde(m, x, s, eta=0.0, **kw), lambda n: n),
        "kd:dpmpp_3m_sde": (kd.sample_dpmpp_3m_sde, lambda n: n),
        "kd:dpmpp_2m_sde": (kd.sample_dpmpp_2m_sde, lambda n: n),
    }
    out = {}
    for name, (fn, steps_of) in runs.items():
        steps = steps_of(nfe)
        if steps < 1:
            continue
        # Karras sigmas from s_max to s_min without k-diffusion's final jump to 0: every run ends at t_end.
        sigmas = kd.get_sigmas_karras(steps + 1, s_min, s_max, rho=7.0)[:-1]
        torch.manual_seed(0)  # k-diffusion's SDE samplers draw from the global RNG
        model = Counter(denoiser)
        with torch.no_grad():
            x = fn(model, x_hat.clone(), sigmas, disable=True)
        out[name] = (x * float(sde.alpha(torch.tensor([t_end], dtype=torch.float64))[0]), model.nfe)  # x = alpha x̂
    return out


DIFFUSERS_BETAS = dict(num_train_timesteps=1000, beta_start=0.1 / 1000, beta_end=20 / 1000, beta_schedule="linear")


def diffusers_end_time(sde) -> float:
    """The continuous t whose alpha² equals diffusers' alphas_cumprod[0] (where their schedulers stop)."""
    acp0 = 1 - DIFFUSERS_BETAS["beta_start"]
    return float(sde.t_from_log_snr(torch.tensor([0.5 * math.log(acp0 / (1 - acp0))], dtype=torch.float64))[0])


def diffusers_runs(gm, sde, x_T, nfe):
    """diffusers' discrete-time schedulers with an exact eps-model: each of their timesteps is evaluated at the
    continuous t whose alpha² equals their alphas_cumprod entry. They stop at alphas_cumprod[0] (t ≈ 1e-3)."""
    try:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
    except ImportError:
        return {}
    score = gm.score_fn(sde)
    common = DIFFUSERS_BETAS
    end = dict(final_sigmas_type="sigma_min")  # stop at their smallest training noise level, not at 0
    configs = {
        "df:ddim": (DDIMScheduler, dict(set_alpha_to_one=False, clip_sample=False, timestep_spacing="trailing")),
        "df:dpmsolver++2m": (DPMSolverMultistepScheduler, dict(solver_order=2, timestep_spacing="trailing", **end)),
        "df:dpmsolver++2m(karras)": (DPMSolverMultistepScheduler, dict(solver_order=2, use_karras_sigmas=True, **end)),
        "df:dpmsolver++3m": (DPMSolverMultistepScheduler, dict(solver_order=3, timestep_spacing="trailing", **end)),
        "df:unipc": (UniPCMultistepScheduler, dict(timestep_spacing="trailing", **end)),
    }
    out = {}
    for name, (cls, kw) in configs.items():
        sched = cls(**common, **kw)
        sched.set_timesteps(nfe)
        acp = sched.alphas_cumprod.double()
        calls = 0
        x = x_T.clone()
        for tau in sched.timesteps:
            lam = 0.5 * torch.log(acp[int(tau)] / (1 - acp[int(tau)]))
            t = sde.t_from_log_snr(lam.reshape(1)).expand(x.shape[0])
            eps = -sde.sigma(t).to(x.dtype)[:, None] * score(x, t.to(x.dtype))
            calls += 1
            x = sched.step(eps, tau, x).prev_sample
        out[name] = (x, calls)
    return out


# ---- part 1 -------------------------------------------------------------------------------------------------------------


SAMPLES = {"ring": 10_000, "aniso64": 5_000}  # enough that solver differences stand out of the sampling noise


def quality(n: int | None, budgets: list[int]) -> dict:
    kd = load_k_diffusion_sampling()
    result = {"n": n or SAMPLES, "budgets": budgets, "targets": {}, "peers": {"k_diffusion": kd is not None}}
    for tname, gm in targets().items():
        size = n or SAMPLES[tname]
        sde = VPSDE()
        ref = gm.sample(size, generator=torch.Generator().manual_seed(7))
        fl = floors(gm, size, ref)
        # Exact draws of p_T, so the table measures the solvers: the N(0, I) prior is not exactly p_T, and on aniso64
        # (means ~16 from the origin, alpha_T mu ~ 0.1) that mismatch alone puts every ODE solver ~5x above the floor.
        T = torch.full((size,), sde.T, dtype=torch.float64)
        mean, std = sde.marginal_prob(gm.sample(size, generator=torch.Generator().manual_seed(3)), T)
        x_T = (mean + std[:, None] * PerSampleNoise(derive_seeds(0, 0, size))(mean)).float()
        exact = {  # the exact probability-flow transport of x_T to each end time (dopri5, tight, float64)
            t: sample(gm.score_fn(sde), sde, x_T.shape, solver="ode", rtol=1e-9, atol=1e-9, x_init=x_T.double(),
                      t_end=t, dtype=torch.float64).x
            for t in (sde.sampling_eps, diffusers_end_time(sde))
        }
        rows: dict[str, dict[int, dict]] = {}
        for nfe in budgets:
            runs: dict[str, tuple[torch.Tensor, int]] = {}
            for name, (solver, opts, grid, steps_of) in OURS.items():
                steps = steps_of(nfe)
                if steps < 1:
                    continue
                res = sample(gm.score_fn(sde), sde, x_T.shape, solver=solver, steps=steps, grid=grid, x_init=x_T,
                             seeds=derive_seeds(1, 0, size), **opts)
                runs[name] = (res.x, res.nfe)
            if kd is not None:
                runs.update(k_diffusion_runs(kd, gm, sde, x_T, nfe, sde.sampling_eps))
            runs.update(diffusers_runs(gm, sde, x_T, nfe))
            for name, (x, used) in runs.items():
                row = {"nfe": used, **metrics(x, gm, ref)}
                if name in DETERMINISTIC_RUNS:
                    end = diffusers_end_time(sde) if name.startswith("df:") else sde.sampling_eps
                    row["transport"] = transport_error(x, exact[end])
                rows.setdefault(name, {})[nfe] = row
            print(f"  {tname} NFE {nfe}: {len(runs)} runs", file=sys.stderr, flush=True)
        result["targets"][tname] = {"n": size, "floors": fl, "rows": rows}
    return result


def best(rows: dict, nfe: int, prefix: Callable[[str], bool], key: str = "frechet") -> tuple[str, float]:
    cands = [(r[nfe][key], k) for k, r in rows.items() if prefix(k) and nfe in r and key in r[nfe]]
    if not cands:
        return "-", math.nan
    v, k = min(cands)
    return k, v


def is_ours(name: str) -> bool:
    return ":" not in name


def print_quality(q: dict) -> None:
    for tname, t in q["targets"].items():
        fl = t["floors"]
        print(f"\n{tname} ({t['n']} samples): Fréchet distance (floor {fl['frechet']:.2g}; mode-mass floor {fl['mode_mass']:.2g}; "
              f"sliced-W2 floor {fl['sliced_w2']:.2g})")
        header = f"{'solver':28s}" + "".join(f"{b:>10d}" for b in q["budgets"])
        print(header)
        for name, r in t["rows"].items():
            print(f"{name:28s}" + "".join(f"{r[b]['frechet']:10.2g}" if b in r else f"{'':10s}" for b in q["budgets"]))
        print(f"{'our best / floor':28s}" + "".join(f"{best(t['rows'], b, is_ours)[1] / fl['frechet']:10.2f}" for b in q["budgets"]))
        peers = any(not is_ours(k) for k in t["rows"])
        if peers:
            ratios = [best(t["rows"], b, is_ours)[1] / best(t["rows"], b, lambda k: not is_ours(k))[1] for b in q["budgets"]]
            print(f"{'our best / their best':28s}" + "".join(f"{r:10.2f}" for r in ratios))
            for b in q["budgets"]:
                o, p = best(t["rows"], b, is_ours), best(t["rows"], b, lambda k: not is_ours(k))
                print(f"    NFE {b:4d}: ours {o[0]} {o[1]:.3g}   theirs {p[0]} {p[1]:.3g}")
        print(f"\n{tname}: transport error of deterministic runs (RMS per dim to the exact flow of the same x_T)")
        print(header)
        for name, r in t["rows"].items():
            if name in DETERMINISTIC_RUNS:
                print(f"{name:28s}" + "".join(f"{r[b]['transport']:10.2g}" if b in r else f"{'':10s}" for b in q["budgets"]))
        if peers:
            ratios = [best(t["rows"], b, is_ours, "transport")[1] / best(t["rows"], b, lambda k: not is_ours(k), "transport")[1]
                      for b in q["budgets"]]
            print(f"{'our best / their best':28s}" + "".join(f"{r:10.2f}" for r in ratios))
            for b in q["budgets"]:
                o = best(t["rows"], b, is_ours, "transport")
                p = best(t["rows"], b, lambda k: not is_ours(k), "transport")
                print(f"    NFE {b:4d}: ours {o[0]} {o[1]:.3g}   theirs {p[0]} {p[1]:.3g}")


def plot_quality(q: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(q["targets"]), figsize=(13, 5))
    for ax, (tname, t) in zip(axes, q["targets"].items()):
        for name, r in t["rows"].items():
            b = sorted(r)
            y = [max(r[k]["frechet"], 1e-8) for k in b]
            ax.loglog([r[k]["nfe"] for k in b], y, ("-o" if is_ours(name) else "--x"), ms=3, lw=1, label=name)
        ax.axhline(t["floors"]["frechet"], color="k", lw=2, label="noise floor")
        ax.set(title=tname, xlabel="NFE (counted)", ylabel="Fréchet distance to the exact moments")
        ax.set_ylim(bottom=t["floors"]["frechet"] / 3)
    axes[-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ---- part 2 -------------------------------------------------------------------------------------------------------------

FIXED = {
    "euler_maruyama": ("euler_maruyama", {}),
    "reverse_diffusion": ("reverse_diffusion", {}),
    "ancestral": ("ancestral", {}),
    "ddim": ("ddim", {}),
    "ddim(eta=1)": ("ddim", {"eta": 1.0}),
    "dpm_solver-3": ("dpm_solver", {"order": 3}),
    "dpm_solver_pp-2m": ("dpm_solver_pp", {}),
    "heun": ("heun", {}),
    "ode(rk4)": ("ode", {"method": "rk4"}),
    "pc(langevin)": ("pc", {}),
    "srk": ("srk", {}),
}


def overhead(batch: int = 4096, steps: int = 100, repeats: int = 9) -> dict:
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(MLP([2], width=64, depth=2), sde).eval()
    x = torch.randn(batch, 2)
    t = torch.full((batch,), 0.5)
    rows = {}
    with torch.no_grad():
        for _ in range(20):
            model(x, t)
        for name, (solver, opts) in FIXED.items():
            nfe = sample(model, sde, (batch, 2), solver=solver, steps=steps, seeds=derive_seeds(0, 0, batch), **opts).nfe
            ts_bare, ts_solver = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(nfe):
                    model(x, t)
                ts_bare.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sample(model, sde, (batch, 2), solver=solver, steps=steps, seeds=derive_seeds(0, 0, batch), **opts)
                ts_solver.append(time.perf_counter() - t0)
            # Interleaved runs; the minimum is the least noisy estimate of each cost on a shared machine.
            bare, solve = min(ts_bare), min(ts_solver)
            pairs = statistics.median(s / b for s, b in zip(ts_solver, ts_bare))
            rows[name] = {"nfe": nfe, "bare_s": bare, "solver_s": solve, "ratio": solve / bare, "ratio_median_pair": pairs}
    return {"batch": batch, "steps": steps, "repeats": repeats, "rows": rows}


def print_overhead(o: dict) -> None:
    print(f"\nsolver loop cost: tiny MLP score, batch {o['batch']}, {o['steps']} steps (min of {o['repeats']} interleaved runs)")
    print(f"{'solver':20s}{'NFE':>6s}{'bare calls [ms]':>18s}{'sample() [ms]':>16s}{'ratio':>8s}{'median pair':>13s}")
    for name, r in o["rows"].items():
        print(f"{name:20s}{r['nfe']:6d}{1e3 * r['bare_s']:18.1f}{1e3 * r['solver_s']:16.1f}{r['ratio']:8.2f}"
              f"{r['ratio_median_pair']:13.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="samples per run (default: 10000 for ring, 5000 for aniso64)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100, 250, 1000])
    ap.add_argument("--skip-quality", action="store_true", help="only the overhead part (keeps earlier quality results)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "solvers.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "figures" / "solvers_quality.png")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    result = {"machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if not args.skip_quality:
        result["quality"] = quality(args.n, args.nfe)
        print_quality(result["quality"])
        plot_quality(result["quality"], args.plot)
    elif args.out.exists():  # keep the quality results of an earlier run
        result["quality"] = json.loads(args.out.read_text()).get("quality")
    result["overhead"] = overhead()
    print_overhead(result["overhead"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}" + ("" if args.skip_quality else f" and {args.plot}"))


if __name__ == "__main__":
    main()
