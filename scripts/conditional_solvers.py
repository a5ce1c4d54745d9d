"""How a small class-conditional model fares under stochastic and deterministic solvers, against the exact answer.

    python scripts/conditional_solvers.py [--steps 3000] [--out docs/figures/conditional_solvers.json]

Trains two MLPs of the same size on the 4-class ring (``GaussianMixture.ring(4, radius=1, std=0.4)``): one conditional
with label dropout 0.2, one unconditional. Prints the Fréchet distance of 2000 samples to the exact target for four
solvers: the class-1 component for the conditional model at w = 1, the mixture for the unconditional one. Then, for
DDIM, swaps the exact conditional score in below or above a time t_c to locate where the model's error does harm.
About a minute on a 2-core CPU. Numbers in docs/guidance.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch

from scoresde import VPSDE, GaussianMixture, sample
from scoresde.lightning import ScoreModule, ToyDataModule
from scoresde.metrics import frechet_gaussian
from scoresde.nets import MLP

SOLVERS = {"euler_maruyama": {"steps": 200}, "ddim": {"steps": 50}, "ode": {}, "dpm_solver_pp": {"steps": 20}}


def train(target: GaussianMixture, sde: VPSDE, num_classes: int | None, steps: int) -> ScoreModule:
    dm = ToyDataModule("mixture", mixture=target, labels=num_classes is not None, n_train=20_000, n_val=500,
                       n_test=500, batch_size=256)
    net = MLP([2], width=64, depth=2, num_classes=num_classes)
    module = ScoreModule(net, sde, lr=3e-3, warmup_steps=20, ema_decay=0.99, label_dropout=0.2, data_shape=(2,))
    L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=0, gradient_clip_val=1.0).fit(module, datamodule=dm)
    return module.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps per model")
    parser.add_argument("--n", type=int, default=2000, help="samples per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers here as JSON")
    args = parser.parse_args()
    L.seed_everything(0)
    target, sde, n, k = GaussianMixture.ring(4, radius=1.0, std=0.4), VPSDE(), args.n, 1
    component = target.component(k)
    labels = torch.full((n,), k)
    cond, uncond = train(target, sde, 4, args.steps), train(target, sde, None, args.steps)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731  the same noise for every row

    results: dict = {"solvers": {}, "ddim_exact_score_swap": {}}
    print(f"{'solver':16s} {'conditional w=1':>16s} {'unconditional':>14s}   (FD to the exact target)")
    for name, kw in SOLVERS.items():
        xc = cond.sample(n, solver=name, labels=labels, generator=gen(), **kw).x
        xu = uncond.sample(n, solver=name, generator=gen(), **kw).x
        row = {"conditional": frechet_gaussian(xc, component.mean, component.cov),
               "unconditional": frechet_gaussian(xu, target.mean, target.cov)}
        results["solvers"][name] = row
        print(f"{name:16s} {row['conditional']:16.4f} {row['unconditional']:14.4f}")

    def swapped(t_c: float, model_below: bool):
        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            y = torch.full((x.shape[0],), k)
            with torch.no_grad():
                model = cond(x.float(), t.float(), y).to(x.dtype)
            exact = target.score(x.double(), t.double(), sde, y=y).to(x.dtype)
            below = (t < t_c)[:, None]
            return torch.where(below, model, exact) if model_below else torch.where(below, exact, model)
        return score

    print("\nDDIM, 50 steps, conditional: the model on one side of t_c, the exact score on the other")
    for t_c in (0.1, 0.3, 0.6):
        for model_below in (True, False):
            x = sample(swapped(t_c, model_below), sde, (n, 2), solver="ddim", steps=50, generator=gen()).x
            where = "below" if model_below else "above"
            fd = frechet_gaussian(x, component.mean, component.cov)
            results["ddim_exact_score_swap"][f"model {where} t={t_c}"] = fd
            var = ", ".join(f"{v:.3f}" for v in torch.cov(x.double().T).diag().tolist())
            print(f"  model {where} t_c = {t_c}: FD {fd:.4f}, variance ({var}) against 0.16 each")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"train_steps": args.steps, "n": n, **results}, indent=2))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
