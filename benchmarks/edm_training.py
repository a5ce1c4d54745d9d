"""EDM's training setup against today's default, at equal training steps, on the ring (exact answers known).

Setups (the same VP SDE, network width, optimiser, EMA with warm-up, steps, batches and sampler):
  * ``dsm``: ``experiments/toy_vp.yaml``: eps prediction, ``sigma2`` weighting, ``t ~ U(1e-5, 1)``;
  * ``edm``: ``experiments/toy_vp_edm.yaml``: EDM's preconditioned denoiser with the ring's ``σ_d = 1.4``,
    ``ln σ ~ N(-1.2, 1.2²)`` (EDM's CIFAR-10 values) and the weight ``λ(σ)``;
  * ``edm-shifted``: the same with ``P_mean`` moved by ``ln(σ_d / 0.5)`` to -0.17, so that ``σ / σ_d`` has the
    distribution EDM's CIFAR-10 run gives it.

Each (setup, seed) trains with ``scoresde fit`` (the setups interleaved within each seed) and is then measured on its
EMA weights: the relative σ-weighted score error against the exact score (``t`` uniform, and ``t`` from EDM's
log-normal, so that neither weighting is favoured), the Fréchet distance, mode-mass error and cross-entropy gap of
4000 samples (Euler–Maruyama, 500 steps) next to their floors (exact samples of the same size), and bits/dim of test
points through the probability-flow ODE against the exact density. Reported: the median over seeds, and the
per-seed ratio edm/dsm.

    python benchmarks/edm_training.py [--seeds 0 1 2] [--steps 3000] [--out benchmarks/results/edm_training.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from scoresde import DSMLoss, GaussianMixture, log_likelihood, metrics
from scoresde.lightning.cli import cli
from scoresde.lightning.commands._common import load_model

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {
    "dsm": ["--config", str(ROOT / "experiments/toy_vp.yaml")],
    "edm": ["--config", str(ROOT / "experiments/toy_vp_edm.yaml")],
    "edm-shifted": ["--config", str(ROOT / "experiments/toy_vp_edm.yaml"), "--model.loss.init_args.P_mean", "-0.17"],
}
METRICS = ("score_err_uniform", "score_err_lognormal", "frechet", "mode_mass_error", "cross_entropy_gap_bpd", "bpd_gap")


def fit(args: list[str], seed: int, steps: int, root: Path) -> Path:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli(["fit", *args, "--seed_everything", str(seed), "--trainer.max_steps", str(steps),
             "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    finally:
        os.chdir(cwd)
    return root


@torch.no_grad()
def lognormal_score_error(model, ring: GaussianMixture, n: int, seed: int) -> float:
    """The relative σ-weighted score error with ``t`` from EDM's log-normal (``P_mean = -1.2``, ``P_std = 1.2``)."""
    g = torch.Generator().manual_seed(seed)
    t, _ = DSMLoss(weighting="edm", sampling="log_normal").sample_t(model.sde, n, generator=g)
    x0 = ring.sample(n, generator=g)
    mean, std = model.sde.marginal_prob(x0, t)
    x_t = mean + std[:, None] * torch.randn(x0.shape, generator=g)
    exact, s = ring.score(x_t.double(), t, model.sde), model(x_t, t.float()).double()
    s2 = std.double()[:, None] ** 2
    return float(((s2 * (s - exact) ** 2).sum() / (s2 * exact**2).sum()).sqrt())


def measure(root: Path, seed: int, n_bpd: int) -> dict[str, float]:
    summary = json.loads(next(root.rglob("summary.json")).read_text())
    model = load_model(next(root.rglob("last.ckpt")))
    ring = GaussianMixture.ring()
    x = ring.sample(n_bpd, generator=torch.Generator().manual_seed(10_000 + seed))
    res = log_likelihood(model.score_model, model.sde, x, rtol=1e-5, atol=1e-5)
    bpd_model = float(-res.logp.mean()) / (2 * math.log(2))
    bpd_exact = float(-ring.log_prob(x.double()).mean()) / (2 * math.log(2))
    return {
        "score_err_uniform": summary["score_rel_error"],
        "score_err_lognormal": lognormal_score_error(model, ring, 4096, seed),
        "frechet": summary["frechet"],
        "frechet_floor": summary["frechet_floor"],
        "mode_mass_error": summary["mode_mass_error"],
        "mode_mass_floor": summary["mode_mass_floor"],
        "cross_entropy_gap_bpd": summary["cross_entropy_gap_bpd"],
        "cross_entropy_gap_floor_p90": summary["cross_entropy_gap_floor_p90"],
        "bpd": bpd_model,
        "bpd_gap": bpd_model - bpd_exact,
        "train_seconds": summary["train_seconds"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--n-bpd", type=int, default=500)
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/edm_training.json")
    a = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in a.setups}
    for seed in a.seeds:  # interleaved: every setup once per seed, before the next seed
        for name in a.setups:
            with tempfile.TemporaryDirectory() as tmp:
                rows[name].append(measure(fit(SETUPS[name], seed, a.steps, Path(tmp)), seed, a.n_bpd))
                print(name, seed, {k: round(v, 4) for k, v in rows[name][-1].items()}, flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    keys = list(rows[a.setups[0]][0])
    print(f"\nring, {a.steps} steps, median over seeds {a.seeds}")
    print(f"{'metric':<28}" + "".join(f"{s:>12}" for s in a.setups))
    for k in keys:
        print(f"{k:<28}" + "".join(f"{med(s, k):>12.4g}" for s in a.setups))
    ratios = {
        s: {k: statistics.median(e[k] / d[k] for e, d in zip(rows[s], rows["dsm"])) for k in METRICS}
        for s in a.setups if s != "dsm" and "dsm" in rows
    }
    for s, r in ratios.items():
        print(f"median per-seed ratio {s}/dsm: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({
        "machine": platform.platform(), "threads": torch.get_num_threads(), "steps": a.steps, "seeds": a.seeds,
        "runs": rows, "medians": {s: {k: med(s, k) for k in keys} for s in a.setups}, "ratios_vs_dsm": ratios,
    }, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
