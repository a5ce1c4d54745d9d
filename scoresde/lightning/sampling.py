"""``scoresde sample``: draw samples from a trained checkpoint with any registered solver, on one device or many.

    scoresde sample --ckpt runs/toy_vp/checkpoints/last.ckpt --solver dpm_solver_pp --steps 20 --n 10000 --out samples/
    scoresde sample --ckpt last.ckpt --solver ddim --eta 0.5 --grid log_snr --n 50000 --batch-size 500 --out ddim/
    scoresde sample --ckpt last.ckpt --n 50000 --devices 8 --strategy ddp --out big/   # or --num_nodes 2 on a cluster
    scoresde sample --config experiments/sample.yaml          # the same keys in YAML; solver options under `options:`
    scoresde sample --ckpt cond.ckpt --class 3 --guidance-scale 2.0 --out three/       # class-conditional model (CFG)
    scoresde sample --ckpt cond.ckpt --class all --guidance-scale 3 --n 100 --out grid/  # classes 0, 1, ... in turn
    scoresde sample --ckpt uncond.ckpt --classifier clf.ckpt --class 3 --classifier-scale 2 --out cg/
    scoresde sample --ckpt last.ckpt --solver ddim --threshold dynamic --percentile 0.995 --out clipped/

Samples are drawn in shards of ``--batch-size`` (``shard_00000.npz``, ...) through Lightning's predict loop, so
``--devices``/``--strategy``/``--num_nodes`` spread the shards over processes. Sample ``j`` uses the seed
``derive_seeds(seed, j)`` (its global index), so the union of the shards is the same for 1 or N processes and any
batch size. Each shard is written atomically by the rank that drew it; a rerun skips the shards already on disk, so an
interrupted run loses at most the shards in flight. The solve holds no collective operation, so ranks may take
different numbers of solver steps (adaptive ODE solvers) or of shards; rank 0 merges the shards after one barrier into
``samples.npz`` (``samples``: uint8 images in the dataset's original range for discrete data, float arrays otherwise)
and draws ``samples.png``.

Conditioning: ``--class`` takes one class, a comma list or ``all``; sample ``j`` gets the ``(j mod k)``-th of the ``k``
classes listed (its label is saved in ``labels``). A class-conditional checkpoint is guided classifier-free with
``--guidance-scale`` (1: conditional, 0: unconditional); ``--classifier`` (a ``scoresde classifier fit`` checkpoint)
adds classifier guidance of scale ``--classifier-scale``; ``--threshold static|dynamic`` clips the data prediction.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from torch import Tensor

from .. import plotting
from .._utils import atomic_path, file_digest
from ..noise import derive_seeds
from ..solvers import SOLVERS, TIME_GRIDS, get_solver
from ..guidance import classifier_guidance, threshold
from .loading import add_device_arguments, check_manifest, load_classifier, load_model, predict_trainer, record_run
from .module import ScoreModule
from .shards import ShardTask, check_sizes, read_shards, run_shards

__all__ = ["build_parser", "sample_command", "run_sampling", "SamplingTask"]

RUN_KEYS = (
    "ckpt", "solver", "steps", "grid", "options", "n", "batch_size", "seed", "denoise", "t_end", "classes",
    "guidance_scale", "classifier", "classifier_scale", "threshold", "percentile", "threshold_range",
)


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
    p.add_argument("--classes", "--class", type=str | None, default=None,
                   help="class to draw: one (3), a list (0,1,2) or all; sample j gets the (j mod k)-th")
    p.add_argument("--guidance_scale", "--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance scale w of a class-conditional model (1: conditional, 0: unconditional)")
    p.add_argument("--classifier", type=str | None, default=None, help="checkpoint of `scoresde classifier fit`: classifier guidance")
    p.add_argument("--classifier_scale", "--classifier-scale", type=float, default=1.0, help="classifier guidance scale")
    p.add_argument("--threshold", type=str | None, default=None, help="static or dynamic thresholding of the data prediction")
    p.add_argument("--percentile", type=float, default=0.995, help="dynamic thresholding percentile")
    p.add_argument("--threshold_range", "--threshold-range", type=list[float] | None, default=None,
                   help="model-space data range [low, high] to threshold into (default: the dataset's)")
    p.add_argument("--out", type=str, required=True, help="output directory")
    add_device_arguments(p)
    p.add_argument("--precision", type=str | None, default=None, help="e.g. bf16-mixed (default: 32-bit)")
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
            options[key[2:].replace("-", "_")] = _parse_value(value)
        else:
            rest.append(arg)
        i += 1
    return rest, options


def _parse_value(text: str) -> Any:
    """A command-line value as YAML, with numbers such as ``1e-3`` (a string to YAML 1.1) read as floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _to_output(model: ScoreModule, x: torch.Tensor) -> np.ndarray:
    """Model space → the dataset's original range: integers for discrete data, floats otherwise."""
    return model.transform.inverse(x.cpu()).numpy()


def _picture(model: ScoreModule, samples: np.ndarray, path: Path, labels: np.ndarray | None = None, title: str = "") -> None:
    x = torch.as_tensor(samples[:4096])
    title = title or f"{len(samples)} samples"
    if len(model.data_shape) == 1 and model.data_shape[0] == 2:
        plotting.plot_2d(x.float(), path, title=title)
    elif len(model.data_shape) == 3:
        unit = to_unit(model, x)
        k = len(np.unique(labels)) if labels is not None else 0
        ncol = k if 2 <= k <= 16 else 8  # one column per class when several are drawn in turn
        plotting.image_grid(unit[: ncol * 8], path, ncol=ncol, title=title)


def to_unit(model: ScoreModule, x: Tensor) -> Tensor:
    """Images in the dataset's original units → ``[0, 1]`` for pictures."""
    levels = model.transform.levels
    return x.float() / (levels - 1) if levels is not None else x.float().clamp(0, 1)


def parse_classes(text: str | None, num_classes: int | None) -> list[int] | None:
    """``--class``: ``"3"``, ``"0,1,2"`` or ``"all"`` → a list of classes, checked against the model's."""
    if text is None:
        return None
    if num_classes is None:
        raise ValueError("--class needs a class-conditional checkpoint (a network with num_classes) or --classifier")
    if str(text).strip() == "all":
        return list(range(num_classes))
    try:
        classes = [int(c) for c in str(text).split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--class takes a class number, a comma list or 'all', got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if not classes or bad:
        raise ValueError(f"--class {text!r}: classes must lie in [0, {num_classes})")
    return classes


def score_transform(model: ScoreModule, cfg: dict[str, Any], classifier: Any, labels: Tensor | None) -> Any:
    """The ``score_transform`` of :meth:`ScoreModule.sample` for classifier guidance and thresholding (or ``None``)."""
    if classifier is None and cfg["threshold"] is None:
        return None
    low, high = threshold_range(model, cfg)

    def transform(score_fn: Any) -> Any:
        if classifier is not None:
            score_fn = classifier_guidance(score_fn, classifier, labels, cfg["classifier_scale"])
        if cfg["threshold"] is not None:
            score_fn = threshold(score_fn, model.sde, cfg["threshold"], percentile=cfg["percentile"], low=low, high=high)
        return score_fn

    return transform


def threshold_range(model: ScoreModule, cfg: dict[str, Any]) -> tuple[float, float]:
    """Model-space data range for thresholding: ``--threshold-range`` or that of the dataset's discrete transform."""
    if cfg.get("threshold_range"):
        low, high = cfg["threshold_range"]
        return float(low), float(high)
    t = model.transform
    if t.levels is None:
        if cfg.get("threshold") is None:
            return -1.0, 1.0
        raise ValueError("the data are continuous, so their range is unknown: pass --threshold-range '[low, high]'")
    return t.shift, t.shift + t.scale


class SamplingTask(ShardTask):
    """Wraps a trained :class:`ScoreModule` for ``Trainer.predict``: each shard is drawn with its samples' own seeds
    (``derive_seeds(seed, j)``) and, with ``classes``, sample ``j`` gets class ``classes[j mod k]``."""

    def __init__(
        self, model: ScoreModule, cfg: dict[str, Any], solver: str, options: dict[str, Any], out: Path,
        classes: list[int] | None = None, classifier: L.LightningModule | None = None,
    ) -> None:
        super().__init__(cfg["n"], cfg["batch_size"], out)
        self.model, self.cfg, self.solver, self.options = model, cfg, solver, options
        self.classes, self.classifier = classes, classifier

    def draw(self, start: int, count: int) -> dict[str, np.ndarray]:
        labels = None
        if self.classes is not None:
            labels = torch.tensor(self.classes, device=self.device)[torch.arange(start, start + count, device=self.device) % len(self.classes)]
        conditional = labels is not None and self.model.num_classes is not None
        res = self.model.sample(
            count,
            solver=self.solver,
            steps=self.cfg["steps"],
            seeds=derive_seeds(self.cfg["seed"], start, count, device=self.device),
            grid=self.cfg["grid"],
            denoise=self.cfg["denoise"],
            t_end=self.cfg["t_end"],
            labels=labels if conditional else None,
            guidance_scale=self.cfg["guidance_scale"],
            score_transform=score_transform(self.model, self.cfg, self.classifier, labels),
            **self.options,
        )
        extra = {} if labels is None else {"labels": labels.cpu().numpy()}
        return {"samples": _to_output(self.model, res.x), "nfe": np.asarray(res.nfe), **extra}


def _classifier_classes(classifier: L.LightningModule, model: ScoreModule) -> int:
    """The classifier's number of classes, read from one forward pass (and its input shape checked)."""
    with torch.no_grad():
        x = torch.zeros(1, *model.data_shape)
        logits = classifier(x, torch.full((1,), 0.5))
    if logits.ndim != 2:
        raise ValueError(f"the classifier returns shape {tuple(logits.shape)}, not logits (B, K)")
    return int(logits.shape[1])


def run_sampling(cfg: dict[str, Any], out: Path) -> Path | None:
    """Draw ``cfg["n"]`` samples in shards under ``out`` (resuming), merge them into ``samples.npz``; returns its path
    on rank 0 (``None`` on the other ranks)."""
    check_sizes(cfg["n"], cfg["batch_size"])
    ckpt = Path(cfg["ckpt"])
    model = load_model(ckpt)
    solver = cfg["solver"] or model.hparams.sampler
    options = {**(model.hparams.get("sampler_options") or {} if cfg["solver"] is None else {}), **cfg["options"]}
    get_solver(solver, **options)  # fail on a bad name or option before any work
    classifier = load_classifier(cfg["classifier"]) if cfg["classifier"] else None
    num_classes = model.num_classes if classifier is None else _classifier_classes(classifier, model)
    classes = parse_classes(cfg["classes"], num_classes)
    if classifier is not None and classes is None:
        raise ValueError("--classifier guides towards a class: give --class too")
    if model.num_classes is None and cfg["guidance_scale"] != 1.0:
        raise ValueError("--guidance-scale is classifier-free guidance of a class-conditional model; this one is "
                         "unconditional (use --classifier with --classifier-scale)")
    if cfg["threshold"] is not None:
        if cfg["threshold"] not in ("static", "dynamic"):
            raise ValueError(f"--threshold must be static or dynamic, got {cfg['threshold']!r}")
        threshold_range(model, cfg)

    out.mkdir(parents=True, exist_ok=True)
    record = {**{k: cfg[k] for k in RUN_KEYS}, "solver": solver, "options": options, "ckpt": str(ckpt.resolve()),
              "ckpt_sha256": file_digest(ckpt)}
    manifest = out / "sample_config.json"
    check_manifest(manifest, record, "samples drawn")
    trainer = predict_trainer(cfg, precision=cfg["precision"])
    record_run(manifest, record, trainer.is_global_zero)
    task = SamplingTask(model, cfg, solver, options, out, classes, classifier)
    if not run_shards(trainer, task):
        return None
    return _merge(model, out, task.shards)


def _merge(model: ScoreModule, out: Path, shards: int) -> Path:
    parts = read_shards(out, shards)
    samples = np.concatenate([p["samples"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts]) if "labels" in parts[0] else None
    nfe = np.concatenate([np.full(len(p["index"]), int(p["nfe"])) for p in parts])  # adaptive solvers differ by shard
    final = out / "samples.npz"
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, samples=samples, nfe_per_sample=nfe, **({} if labels is None else {"labels": labels}))  # (N,) each
    _picture(model, samples, out / "samples.png", labels)
    print(f"wrote {len(samples)} samples ({samples.dtype}, shape {samples.shape[1:]}, {nfe.mean():.1f} NFE each on average) to {final}")
    return final


def parse_with_solver_options(parser: ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """A command's options from ``argv`` (default ``sys.argv[2:]``), with unknown ``--name value`` pairs gathered into
    ``options`` as solver options."""
    argv = list(sys.argv[2:] if argv is None else argv)
    argv, extra = _split_solver_options(argv, parser)
    cfg = parser.parse_args(argv).as_dict()
    cfg.pop("config", None)
    cfg["options"] = {**(cfg["options"] or {}), **extra}
    return cfg


def sample_command(argv: Sequence[str] | None = None) -> Path | None:
    """``scoresde sample ...``; ``argv`` excludes the word ``sample``."""
    cfg = parse_with_solver_options(build_parser(), argv)
    return run_sampling(cfg, Path(cfg["out"]))
