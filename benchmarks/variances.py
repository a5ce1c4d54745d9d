"""Ancestral sampling with DDPM's two variances and Analytic-DPM's optimal one, on exact targets.

For each target (the 2-D ring, the 16-D and 64-D anisotropic mixtures, an isotropic 16-D Gaussian where the optimal
variance makes sampling exact), grid (uniform in ``t``, uniform in log-SNR) and step count (10, 25, 50), the exact
score drives ``ancestral`` with ``variance`` = ``posterior`` (``beta~``), ``large`` (``beta``) and ``analytic``
(``Gamma`` estimated from 2,000 data points by ``scoresde.variances.eps_norm_table``) and ``learned`` (improved
DDPM: an MLP head ``v(x_t, t)`` beside the exact noise, trained by ``scoresde.HybridLoss`` on its 1000-step grid
and used strided on the sampling grid). The table gives the Fréchet
distance of 20,000 samples to the data and, after the next-to-last step, to the exact marginal there (the last step
returns the mean, with no noise, for all three: on a uniform grid that step is long and hides the variance's
effect), with the noise floor of exact samples.

    python benchmarks/variances.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from torch import nn

from scoresde import VPSDE, GaussianMixture, HybridLoss, ScoreModel, sample
from scoresde.nets import MLP
from scoresde.metrics import frechet_gaussian
from scoresde.solvers.sde import Ancestral
from scoresde.variances import eps_norm_table

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
VARIANCES = ("posterior", "large", "analytic", "learned")


class ExactNoiseWithHead(nn.Module):
    """``net(x, 999 t)`` of a learned-variance model: the exact noise of ``mix`` and ``v_raw`` from an MLP."""

    def __init__(self, mix: GaussianMixture, sde: VPSDE) -> None:
        super().__init__()
        self.mix, self.sde = mix, sde
        self.head = MLP(data_shape=(mix.dim,), width=128, depth=2).double()

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        t = c_noise.double() / 999.0
        with torch.no_grad():
            eps = -self.sde.sigma(t)[:, None] * self.mix.score(x.double(), t, self.sde)
        return torch.cat([eps.to(x.dtype), self.head(x, c_noise).to(x.dtype)], 1)


def learned_variance_model(
    mix: GaussianMixture, sde: VPSDE, iters: int = 2000, steps: int = 1000, grid: str = "uniform"
) -> ScoreModel:
    """The exact noise with a variance head trained by ``L_vlb`` on a ``steps``-step grid (improved DDPM's setting:
    1000 uniform steps)."""
    model = ScoreModel(ExactNoiseWithHead(mix, sde), sde, learn_variance=True)
    loss = HybridLoss(steps=steps, lam=1.0, grid=grid)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    gen = torch.Generator().manual_seed(4)
    for _ in range(iters):
        x0 = mix.sample(512, generator=gen, dtype=F64)
        opt.zero_grad()
        loss(model, sde, x0, generator=gen).backward()
        opt.step()
        sched.step()
    return model.eval()


def diffused(mix: GaussianMixture, sde: VPSDE, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    tt = torch.tensor([t], dtype=F64)
    a, s = float(sde.alpha(tt)[0]), float(sde.sigma(tt)[0])
    return a * mix.mean, a * a * mix.cov + s * s * torch.eye(mix.dim, dtype=F64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "variances.json")
    args = ap.parse_args()
    sde = VPSDE()
    targets = {
        "iso16d": GaussianMixture(torch.ones(1), torch.zeros(1, 16), torch.full((1,), 0.5)),
        "ring2d": GaussianMixture.ring(),
        "mix16d": GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2),
        "mix64d": GaussianMixture.random(64, k=6, cond=100.0, scale=0.5, seed=3),
    }
    rows = []
    print(f"{'target':8} {'grid':8} {'steps':>5}  " + "  ".join(f"{v:>19}" for v in VARIANCES) + "   floor", flush=True)
    for name, mix in targets.items():
        data = mix.sample(2000, generator=torch.Generator().manual_seed(0), dtype=F64)
        table = eps_norm_table(mix.score_fn(sde), sde, data, generator=torch.Generator().manual_seed(1))
        learned = learned_variance_model(mix, sde)
        exact = mix.sample(args.n, generator=torch.Generator().manual_seed(5), dtype=F64)
        floor = frechet_gaussian(exact, mix.mean, mix.cov)
        for grid in ("uniform", "log_snr"):
            for steps in (10, 25, 50):
                row = {"target": name, "grid": grid, "steps": steps, "floor": floor}
                for v in VARIANCES:
                    rec: dict = {}

                    def cb(i: int, t: float, state, rec=rec, steps=steps) -> None:
                        if i == steps - 2:
                            rec["t"], rec["x"] = t, state.x.clone()

                    out = sample(
                        learned if v == "learned" else mix.score_fn(sde),
                        sde,
                        (args.n, mix.dim),
                        solver=Ancestral(variance=v, table=table),
                        steps=steps,
                        grid=grid,
                        generator=torch.Generator().manual_seed(2),
                        dtype=F64,
                        callback=cb,
                    )
                    row[v] = frechet_gaussian(out.x, mix.mean, mix.cov)
                    row[v + "_before_last"] = frechet_gaussian(rec["x"], *diffused(mix, sde, rec["t"]))
                if grid == "log_snr" and steps == 25:  # the head trained on the sampling grid itself
                    own = learned_variance_model(mix, sde, steps=steps, grid=grid)
                    out = sample(own, sde, (args.n, mix.dim), solver="ancestral", variance="learned", steps=steps,
                                 grid=grid, generator=torch.Generator().manual_seed(2), dtype=F64)
                    row["learned_own_grid"] = frechet_gaussian(out.x, mix.mean, mix.cov)
                    print(f"{'':8} {'':8} {'':5}  learned on this grid: {row['learned_own_grid']:.4g}", flush=True)
                rows.append(row)
                cells = "  ".join(f"{row[v]:8.4g} ({row[v + '_before_last']:8.4g})" for v in VARIANCES)
                print(f"{name:8} {grid:8} {steps:5d}  {cells}   {floor:.3g}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "n": args.n, "rows": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
