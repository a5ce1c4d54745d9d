"""SMC-Diff against RePaint and replacement on half-masked test digits (the digits model of experiments/digits_vp.yaml).

    python scripts/smc_digits.py --ckpt runs/digits_vp/checkpoints/last.ckpt --out docs/figures

For the right half and the top half missing, the first ``--n`` test digits are completed by replacement, RePaint
(r = ``--resample``) and SMC with ``--particles`` particles per digit, every method with Euler–Maruyama on
``--steps`` steps and the same per-digit seeds. RePaint and SMC with K = r cost the same score evaluations per digit.
The completions are judged as in ``scripts/guidance_demo.py``: the squared error on the missing half (pixels in
[0, 1]) and how often scikit-learn's logistic regression, fitted on the clean training digits, gives the completed
digit the original's class. Writes ``digits_smc.png`` and ``digits_smc.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scoresde import plotting
from scoresde.inverse import inpaint
from scoresde.lightning.commands._common import load_data, load_model
from scoresde.lightning.commands.inpaint import load_mask
from scoresde.noise import derive_seeds


def judge(dm):
    """Logistic regression on the clean training digits (0…16 grey levels, flattened)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000, C=0.1)
    clf.fit(dm.train_raw.flatten(1).numpy(), dm.train_labels.numpy())
    return clf, float((clf.predict(dm.test_raw.flatten(1).numpy()) == dm.test_labels.numpy()).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--resample", type=int, default=10)
    p.add_argument("--particles", default="4,10", help="comma-separated K")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model, dm = load_model(args.ckpt), load_data(None, args.ckpt)
    if dm.test_labels is None:  # an unconditional model: the same fixed splits, with their labels
        from scoresde.lightning.data import DigitsDataModule

        labelled = DigitsDataModule(labels=True)
        if not torch.equal(labelled.test_raw, dm.test_raw):
            raise SystemExit("the checkpoint's digits splits differ from the default ones; cannot attach labels")
        dm = labelled
    clf, judge_acc = judge(dm)
    raw = dm.test_raw[: args.n]
    y = model.transform.forward(raw, u=torch.full(raw.shape, 0.5))
    truth = dm.test_labels[: args.n].numpy()
    methods = [("replacement", {}), ("repaint", {"resample": args.resample})]
    methods += [("smc", {"particles": int(k)}) for k in args.particles.split(",")]
    report: dict = {"ckpt": str(args.ckpt), "judge_test_accuracy": judge_acc, "steps": args.steps, "n": args.n,
                    "rows": []}
    pictures = []
    for mask_name in ("right", "top"):
        mask = load_mask(mask_name, model.data_shape)
        rows = [raw[:8].float() / 16, raw[:8].float() / 16 * mask + 0.5 * (1 - mask)]
        for method, opts in methods:
            t0 = time.time()
            res = inpaint(model.score_model, model.sde, y, mask, method=method, steps=args.steps,
                          seeds=derive_seeds(1, 0, len(y)), **opts)
            seconds = time.time() - t0
            done = model.transform.inverse(res.x)
            miss = (1 - mask).bool().expand_as(raw)
            mse = float(((done.float() - raw.float()) / 16)[miss].pow(2).mean())
            keep = float((clf.predict(done.flatten(1).numpy()) == truth).mean())
            evals = res.nfe * opts.get("particles", 1)
            name = {"replacement": "replacement", "repaint": f"RePaint r = {args.resample}"}.get(
                method, f"SMC K = {opts.get('particles')}")
            report["rows"].append({"mask": mask_name, "method": method, **opts, "evals_per_digit": evals,
                                   "mse_missing": mse, "class_kept": keep, "seconds": seconds})
            print(f"{mask_name:5s} {name:16s} evals/digit {evals:5d}: MSE on the missing half {mse:.4f}, "
                  f"class kept {keep:.3f} ({seconds:.0f} s)", flush=True)
            rows.append(done[:8].float() / 16)
        pictures.append((f"{mask_name} half missing", torch.cat(rows)))
    names = ", ".join(["replacement", f"RePaint r={args.resample}"] + [f"SMC K={k}" for k in args.particles.split(",")])
    plotting.image_panels(pictures, out / "digits_smc.png", ncol=8, title=f"rows: test digits, observed, {names}")
    (out / "digits_smc.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'digits_smc.png'}, {out / 'digits_smc.json'}")


if __name__ == "__main__":
    main()
