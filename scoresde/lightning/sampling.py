"""``scoresde sample``: draw samples from a trained checkpoint with any registered solver.

    scoresde sample --ckpt runs/toy_vp/checkpoints/last.ckpt --solver dpm_solver_pp --steps 20 --n 10000 --out samples/
    scoresde sample --ckpt last.ckpt --solver ddim --eta 0.5 --grid log_snr --n 50000 --batch-size 500 --out ddim/
    scoresde sample --config experiments/sample.yaml          # the same keys in YAML; solver options under `options:`

Samples are written in shards of ``--batch-size`` (``shard_00000.npz``, ...), each atomically, so an interrupted run
resumes where it stopped. Sample ``j`` uses the seed ``derive_seeds(seed, j)``, so the result does not depend on the
batch size or on which shards were drawn in which run. At the end the shards are merged into ``samples.npz``
(``samples``: uint8 images in the dataset's original range for discrete data, float arrays otherwise) and a picture
``samples.png`` is drawn.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from .. import plotting
from .._utils import atomic_path, file_digest
from ..noise import derive_seeds
from ..solvers import SOLVERS, TIME_GRIDS, get_solver
from .loading import load_model
from .module import ScoreModule

__all__ = ["build_parser", "sample_command", "run_sampling"]

RUN_KEYS = ("ckpt", "solver", "steps", "grid", "options", "n", "batch_size", "seed", "denoise", "t_end")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="scoresde sample", description=__doc__.split("\n\n")[0], default_meta=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    p.add_argument("--ckpt", type=str, required=True, help="checkpoint written by `scoresde fit` (EMA weights)")
    p.add_argument("--solver", type=str | None, default=None, help=f"one of: {', '.join(sorted(SOLVERS))} (default: the model's)")
    p.add_argument("--steps", type=int | None, default=None, help="solver steps (default: the model's sample_steps)")
    p.add_argument("--grid", type=str, default="uniform", help=f"time grid: {', '.join(TIME_GRIDS)}")
    p.add_argument("--options", type=dict[str, Any], default={}, help="solver options, e.g. '{eta: 0.5}'; or pass --eta 0.5")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--batch_size", "--batch-size", type=int, default=256, help="samples per batch and per shard")
    p.add_argument("--seed", type=int, default=0, help="run seed; sample j uses derive_seeds(seed, j)")
    p.add_argument("--denoise", type=bool, default=False, help="finish with Tweedie's denoising step")
    p.add_argument("--t_end", type=float | None, default=None, help="end time (default: the SDE's sampling_eps)")
    p.add_argument("--out", type=str, required=True, help="output directory")
    p.add_argument("--device", type=str | None, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    return p


def _split_solver_options(argv: Sequence[str], parser: ArgumentParser) -> tuple[list[str], dict[str, Any]]:
    """Separate ``--name value`` pairs that are not the command's own options: they are solver options."""
    known = {s for a in parser._actions for s in a.option_strings}
    rest, options, i = [], {}, 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        key = arg.split("=", 1)[0]
        if arg.startswith("--") and key not in known:
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise SystemExit(f"scoresde sample: option {arg} needs a value")
            options[key[2:].replace("-", "_")] = yaml.safe_load(value)
        else:
            rest.append(arg)
        i += 1
    return rest, options


def _to_output(model: ScoreModule, x: torch.Tensor) -> np.ndarray:
    """Model space → the dataset's original range: integers for discrete data, floats otherwise."""
    return model.transform.inverse(x.cpu()).numpy()


def _picture(model: ScoreModule, samples: np.ndarray, path: Path) -> None:
    x = torch.as_tensor(samples[:4096])
    if len(model.data_shape) == 1 and model.data_shape[0] == 2:
        plotting.plot_2d(x.float(), path, title=f"{len(samples)} samples")
    elif len(model.data_shape) == 3:
        levels = model.transform.levels
        unit = x.float() / (levels - 1) if levels is not None else x.float().clamp(0, 1)
        plotting.image_grid(unit[:64], path, title=f"{len(samples)} samples")


def run_sampling(cfg: dict[str, Any], out: Path, device: torch.device, progress: bool = True) -> Path:
    """Draw ``cfg["n"]`` samples in shards under ``out`` (resuming), merge them into ``samples.npz``; returns its path."""
    if cfg["n"] < 1 or cfg["batch_size"] < 1:
        raise ValueError(f"--n and --batch-size must be positive, got n={cfg['n']}, batch_size={cfg['batch_size']}")
    ckpt = Path(cfg["ckpt"])
    model = load_model(ckpt, device)
    solver = cfg["solver"] or model.hparams.sampler
    options = {**(model.hparams.get("sampler_options") or {} if cfg["solver"] is None else {}), **cfg["options"]}
    get_solver(solver, **options)  # fail on a bad name or option before any work

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "sample_config.json"
    record = {**{k: cfg[k] for k in RUN_KEYS}, "solver": solver, "options": options, "ckpt": str(ckpt.resolve()),
              "ckpt_sha256": file_digest(ckpt)}
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old != record:
            diff = sorted(k for k in record if old.get(k) != record[k])
            raise ValueError(f"{out} holds samples drawn with other settings ({', '.join(diff)} differ); use a new --out")
    else:
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(record, indent=2))

    n, bs = cfg["n"], cfg["batch_size"]
    shards = math.ceil(n / bs)
    todo = [k for k in range(shards) if not (out / f"shard_{k:05d}.npz").exists()]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - sum(min(bs, n - k * bs) for k in todo), desc=f"sampling ({solver})", unit="sample")
    for k in todo:
        start, count = k * bs, min(bs, n - k * bs)
        res = model.sample(
            count,
            solver=solver,
            steps=cfg["steps"],
            seeds=derive_seeds(cfg["seed"], start, count, device=device),
            grid=cfg["grid"],
            denoise=cfg["denoise"],
            t_end=cfg["t_end"],
            **options,
        )
        with atomic_path(out / f"shard_{k:05d}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, samples=_to_output(model, res.x), index=np.arange(start, start + count), nfe=res.nfe)
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()

    parts = [np.load(out / f"shard_{k:05d}.npz") for k in range(shards)]
    samples = np.concatenate([p["samples"] for p in parts])
    nfe = int(parts[0]["nfe"])
    final = out / "samples.npz"
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, samples=samples, nfe_per_sample=nfe)
    _picture(model, samples, out / "samples.png")
    print(f"wrote {len(samples)} samples ({samples.dtype}, shape {samples.shape[1:]}, {nfe} NFE each) to {final}")
    return final


def sample_command(argv: Sequence[str] | None = None) -> Path:
    """``scoresde sample ...``; ``argv`` excludes the word ``sample``."""
    parser = build_parser()
    argv = list(sys.argv[2:] if argv is None else argv)
    argv, extra = _split_solver_options(argv, parser)
    cfg = parser.parse_args(argv).as_dict()
    cfg.pop("config", None)
    cfg["options"] = {**(cfg["options"] or {}), **extra}
    device = torch.device(cfg["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    return run_sampling(cfg, Path(cfg["out"]), device, progress=cfg["progress"])
