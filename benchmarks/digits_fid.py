"""Digits domain FID (scoresde's shipped digits features) of trained digits models, next to its floor.

For each checkpoint, ``scoresde evaluate --ckpt`` draws ``3 × 297`` samples with the model's own sampler and scores
them against the train split's statistics. FID is biased upward for small sets, so the table also gives the mean and
standard deviation over the three sets of 297. The test split's 297 held-out real digits are scored too (the row
``test split (floor)``): the FID of new real digits at that size. It is not a lower bound for samples of a model
that reproduces its train split closely. Optionally it adds bits/dim of the test split (``scoresde likelihood``,
Hutchinson trace).

    python benchmarks/digits_fid.py --ckpt digits_vp=runs/digits_vp/checkpoints/last.ckpt ... [--bpd-limit 64]
                                    [--out benchmarks/results/digits_fid.json]

An entry ``name=CKPT,solver=ddim,steps=4`` samples with that solver and step count instead of the model's own
(``scoresde evaluate --solver --steps``); bits/dim are not computed for such an entry (they do not depend on it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np

from scoresde import evaluation
from scoresde.lightning import DigitsDataModule
from scoresde.lightning.cli import main as scoresde

ROOT = Path(__file__).resolve().parents[1]
SET = 297  # the test split's size


def score_sets(stats: evaluation.ReferenceStats, images: np.ndarray, extract: evaluation.Extractor) -> dict:
    f, logits = evaluation.extract_features(extract, images)
    sets = [evaluation.image_metrics(stats, f[i : i + SET], logits[i : i + SET], kid_subset_size=SET)
            for i in range(0, len(f) - SET + 1, SET)]
    out = {f"{k}_297_mean": statistics.mean(s[k] for s in sets) for k in ("fid", "kid", "precision", "recall",
                                                                          "inception_score")}
    out["fid_297_sd"] = statistics.stdev(s["fid"] for s in sets) if len(sets) > 1 else float("nan")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="name=checkpoint pairs")
    p.add_argument("--n", type=int, default=3 * SET)
    p.add_argument("--bpd-limit", type=int, default=0, help="test points for bits/dim (0: skip)")
    p.add_argument("--bpd-entries", nargs="+", default=None, help="the entries bits/dim are computed for (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/digits_fid.json")
    p.add_argument("--keep", action="store_true", help="keep the other rows already in --out")
    p.add_argument("--figure", type=Path, default=None, help="also tile entries' first 32 samples into this PNG")
    p.add_argument("--figure-entries", nargs="+", default=None, help="the entries in the figure (default: all)")
    a = p.parse_args()
    dm = DigitsDataModule()
    extract = evaluation.feature_extractor("digits")
    stats = evaluation.ReferenceStats.from_features("digits", evaluation.extract_features(extract, dm.train_raw)[0])
    rows: dict[str, dict] = {"test split (floor)": score_sets(stats, dm.test_raw.numpy(), extract)}
    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in a.ckpt:
            name, spec = pair.split("=", 1)
            ckpt, *settings = spec.split(",")
            sampling = [arg for kv in settings for arg in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
            t0 = time.perf_counter()
            out = Path(tmp) / name
            scoresde(["evaluate", "--ckpt", ckpt, *sampling, "--n", str(a.n), "--data", "DigitsDataModule",
                      "--progress", "false", "--kid-subset-size", str(SET), "--out", str(out)])
            record = json.loads((out / "metrics.json").read_text())
            images = np.load(out / "samples" / "samples.npz")["samples"]
            row = {"fid_all": record["fid"], "n": len(images), **score_sets(stats, images, extract),
                   "sample_and_eval_seconds": round(time.perf_counter() - t0, 1)}
            if a.bpd_limit and not sampling and (a.bpd_entries is None or name in a.bpd_entries):
                scoresde(["likelihood", "--ckpt", ckpt, "--split", "test", "--limit", str(a.bpd_limit), "--trace",
                          "hutchinson", "--progress", "false", "--out", str(out / "bpd")])
                summary = json.loads((out / "bpd" / "summary.json").read_text())
                row.update(bpd=summary["bpd"], bpd_stderr=summary["bpd_stderr"])
            rows[name] = row
            panels.append((name, images[:32]))
            print(name, json.dumps(row), flush=True)
    if a.figure is not None:
        import torch

        from scoresde.plotting import image_panels

        top = float(dm.train_raw.max())
        chosen = [(n, x) for n, x in panels if a.figure_entries is None or n in a.figure_entries]
        image_panels([(n, torch.as_tensor(x, dtype=torch.float32) / top) for n, x in chosen], a.figure, ncol=8)
        print(f"wrote {a.figure}")
    keys = ["fid_all", "fid_297_mean", "fid_297_sd", "kid_297_mean", "precision_297_mean", "recall_297_mean",
            "inception_score_297_mean", "bpd"]
    print(f"\n{'':<22}" + "".join(f"{k:>20}" for k in keys))
    for name, row in rows.items():
        print(f"{name:<22}" + "".join(f"{row.get(k, float('nan')):>20.4g}" for k in keys))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.keep and a.out.exists():  # add to an earlier run's rows
        rows = {**json.loads(a.out.read_text()), **rows}
    a.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
