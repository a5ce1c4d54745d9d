"""The digits demo of controllable generation: class-conditional grids at several guidance scales and inpainted digits.

    python scripts/guidance_demo.py --ckpt runs/digits_vp_cond/checkpoints/last.ckpt --out docs/figures

Needs a class-conditional digits checkpoint (``scoresde fit --config experiments/digits_vp_cond.yaml``). The samples
are judged by a classifier that has nothing to do with scoresde: scikit-learn's logistic regression fitted on the
training split's clean digits (97.3% accurate on the test split). Writes

- ``digits_guidance.png``: one grid per guidance scale, a column per class;
- ``digits_inpainting.png``: test digits with the right half (or the top half) masked, completed by replacement and
  by RePaint;
- ``digits_guidance.json``: the judge's accuracy on samples per scale and, for inpainting, the squared error on the
  missing half and how often the completed digit keeps its class.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from scoresde import plotting
from scoresde.inverse import inpaint
from scoresde.lightning.commands.inpaint import load_mask
from scoresde.lightning.commands._common import load_data, load_model
from scoresde.noise import derive_seeds


def judge(dm):
    """Logistic regression on the clean training digits (0…16 grey levels, flattened)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000, C=0.1)
    clf.fit(dm.train_raw.flatten(1).numpy(), dm.train_labels.numpy())
    acc = float((clf.predict(dm.test_raw.flatten(1).numpy()) == dm.test_labels.numpy()).mean())
    return clf, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--scales", default="0,1,2,4")
    p.add_argument("--per_class", type=int, default=20, help="samples per class and scale")
    p.add_argument("--solver", default="euler_maruyama")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--n_inpaint", type=int, default=100)
    p.add_argument("--inpaint_steps", type=int, default=250)
    p.add_argument("--resample", type=int, default=10)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    model = load_model(args.ckpt)
    dm = load_data(None, args.ckpt)
    if model.num_classes is None or dm.test_labels is None:
        raise SystemExit("the demo needs a class-conditional checkpoint trained on labelled digits (digits_vp_cond.yaml)")
    clf, judge_acc = judge(dm)
    report: dict = {"ckpt": str(args.ckpt), "judge_test_accuracy": judge_acc, "solver": args.solver, "steps": args.steps}
    print(f"judge (logistic regression) test accuracy {judge_acc:.3f}")

    # ---- class-conditional grids --------------------------------------------------------------------------------
    K = model.num_classes
    n = K * args.per_class
    labels = torch.arange(n) % K
    panels, report["guidance"] = [], []
    for w in [float(s) for s in args.scales.split(",")]:
        t0 = time.time()
        res = model.sample(n, solver=args.solver, steps=args.steps, seeds=derive_seeds(0, 0, n), labels=labels,
                           guidance_scale=w, progress=False)
        raw = model.transform.inverse(res.x)
        acc = float((clf.predict(raw.flatten(1).numpy()) == labels.numpy()).mean())
        report["guidance"].append({"scale": w, "accuracy": acc, "nfe": res.nfe, "seconds": time.time() - t0})
        print(f"w = {w:g}: judge accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
        panels.append((f"w = {w:g}: {100 * acc:.0f}% judged right", raw[: 8 * K].float() / 16))
    plotting.image_panels(panels, out / "digits_guidance.png", ncol=K,
                          title="class-conditional digits (column = class), classifier-free guidance scale w")

    # ---- inpainting ---------------------------------------------------------------------------------------------
    raw = dm.test_raw[: args.n_inpaint]
    y = model.transform.forward(raw, u=torch.full(raw.shape, 0.5))
    truth = dm.test_labels[: args.n_inpaint].numpy()
    report["inpainting"] = []
    pictures = []
    for mask_name in ("right", "top"):
        mask = load_mask(mask_name, model.data_shape)
        rows = [raw[:8].float() / 16, raw[:8].float() / 16 * mask + 0.5 * (1 - mask)]  # originals, what is observed
        for method, r in (("replacement", None), ("repaint", args.resample)):
            t0 = time.time()
            res = inpaint(model.score_model, model.sde, y, mask, method=method, resample=r, steps=args.inpaint_steps,
                          seeds=derive_seeds(1, 0, len(y)))
            done = model.transform.inverse(res.x)
            miss = (1 - mask).bool().expand_as(raw)
            mse = float(((done.float() - raw.float()) / 16)[miss].pow(2).mean())
            keep = float((clf.predict(done.flatten(1).numpy()) == truth).mean())
            report["inpainting"].append({"mask": mask_name, "method": method, "resample": r or 1, "mse_missing": mse,
                                         "class_kept": keep, "nfe": res.nfe, "seconds": time.time() - t0})
            print(f"{mask_name:5s} {method:11s}: MSE on the missing half {mse:.4f}, class kept {keep:.3f} "
                  f"({time.time() - t0:.0f} s)")
            rows.append(done[:8].float() / 16)
        pictures.append((f"{mask_name} half missing", torch.cat(rows)))
    plotting.image_panels(pictures, out / "digits_inpainting.png", ncol=8,
                          title="rows: test digits, observed, replacement, RePaint (the model's null label)")
    (out / "digits_guidance.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'digits_guidance.png'}, {out / 'digits_inpainting.png'}, {out / 'digits_guidance.json'}")


if __name__ == "__main__":
    main()
