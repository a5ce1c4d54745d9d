"""``scoresde sample``: draw samples from a trained checkpoint with any registered solver, on one device or many.

    scoresde sample --ckpt runs/toy_vp/checkpoints/last.ckpt --solver dpm_solver_pp --steps 20 --n 10000 --out samples/
    scoresde sample --ckpt last.ckpt --solver ddim --eta 0.5 --grid log_snr --n 50000 --batch-size 500 --out ddim/
    scoresde sample --ckpt last.ckpt --n 50000 --devices 8 --strategy ddp --out big/   # or --num_nodes 2 on a cluster
    scoresde sample --config experiments/sample.yaml          # the same keys in YAML; solver options under `options:`
    scoresde sample --ckpt cond.ckpt --class 3 --guidance-scale 2.0 --out three/       # class-conditional model (CFG)
    scoresde sample --ckpt cond.ckpt --class all --guidance-scale 3 --n 100 --out grid/  # classes 0, 1, ... in turn
    scoresde sample --ckpt uncond.ckpt --classifier clf.ckpt --class 3 --classifier-scale 2 --out cg/
    scoresde sample --ckpt last.ckpt --solver ddim --threshold dynamic --percentile 0.995 --out clipped/
    scoresde sample --ckpt super.ckpt --stage1 low.ckpt --augmentation 0.1 --n 64 --out cascade/  # a cascade

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

Cascades (:mod:`scoresde.cascade`): ``--ckpt`` is the super-resolution stage 2 and ``--stage1`` the low-resolution
model; stage 1 runs with its own sampler (``--stage1-steps``), its samples are augmented to level
``--augmentation`` and stage 2 runs with ``--solver``/``--steps``. ``samples.npz`` then also holds ``low_resolution``
(stage 1's images, block means in the dataset's range) and ``cascade.png`` shows both stages. A stage-1 model alone
writes its low-resolution images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ... import plotting
from ..._typing import ScoreFn
from ..._utils import atomic_path, save_npz
from ...cascade import augment, pack_condition, stage_seeds
from ...guidance import classifier_guidance, threshold
from ...noise import derive_seeds
from ...solvers import DISCRETE_GRIDS, SOLVERS, TIME_GRIDS, Solver, get_solver
from ...solvers.budget import choose_for_budget
from ...solvers.grids import is_grid_file, resolve_grid
from ...solvers.sde import Ancestral
from ...variances import EpsNormTable, eps_norm_table
from ..classifier import ClassifierModule
from ..distill import DISTILLATION_KEY
from ..module import ScoreModule
from ._common import (
    BLOCK_HELP,
    CKPT_HELP,
    MODEL_CONFIG_HELP,
    CheckpointSpec,
    DeviceOptions,
    ShardTask,
    build_parser,
    check_sizes,
    load_classifier,
    load_data,
    load_model,
    manifest_record,
    option,
    parse_config,
    prepare_out,
    read_checkpoint,
    run_resumable,
)

__all__ = ["SampleConfig", "sample_command", "run_sampling", "SamplingTask", "parse_classes"]


@dataclass(kw_only=True)
class SampleConfig(DeviceOptions):
    """The options of ``scoresde sample`` (every one that changes results goes into the run manifest)."""

    ckpt: str = option(help=CKPT_HELP)
    model_config: str | None = option(None, MODEL_CONFIG_HELP, "--model-config")
    solver: str | None = option(None, f"one of: {', '.join(sorted(SOLVERS))} (default: the model's)")
    steps: int | None = option(None, "solver steps (default: the model's sample_steps)")
    nfe: int | None = option(
        None, "a budget of score evaluations: picks the solver, grid and steps the solver benchmark found best"
    )
    grid: str | None = option(
        None,
        f"time grid: {', '.join([*TIME_GRIDS, *DISCRETE_GRIDS])} (the last three: discrete schedules), or a grid "
        "file (*.json) from `scoresde grid` (default: uniform)",
    )
    options: dict[str, Any] = option({}, "solver options, e.g. '{eta: 0.5}'; or pass --eta 0.5 (or --solver.eta 0.5)")
    n: int = option(64, "number of samples")
    batch_size: int = option(256, "samples per batch and per shard", "--batch-size")
    block: int = option(64, BLOCK_HELP)
    seed: int = option(0, "run seed; sample j uses derive_seeds(seed, j)")
    denoise: bool = option(False, "finish with Tweedie's denoising step")
    t_end: float | None = option(None, "end time (default: the SDE's sampling_eps)")
    classes: str | None = option(
        None, "class to draw: one (3), a list (0,1,2) or all; sample j gets the (j mod k)-th", "--class"
    )
    guidance_scale: float = option(
        1.0,
        "classifier-free guidance scale w of a class-conditional model (1: conditional, 0: unconditional)",
        "--guidance-scale",
    )
    classifier: str | None = option(None, "checkpoint of `scoresde classifier fit`: classifier guidance")
    classifier_scale: float = option(1.0, "classifier guidance scale", "--classifier-scale")
    threshold: str | None = option(None, "static or dynamic thresholding of the data prediction")
    percentile: float = option(0.995, "dynamic thresholding percentile")
    threshold_range: list[float] | None = option(
        None, "model-space data range [low, high] to threshold into (default: the dataset's)", "--threshold-range"
    )
    stage1: str | None = option(None, "a cascade: the low-resolution stage-1 checkpoint (--ckpt is its stage 2)")
    augmentation: float = option(0.0, "a cascade: the augmentation level s of stage 1's samples (a time in [0, T))")
    stage1_steps: int | None = option(
        None, "a cascade: stage 1's solver steps (default: its sample_steps)", "--stage1-steps"
    )
    precision: str | None = option(None, "e.g. bf16-mixed (default: 32-bit)")
    out: str = option(help="output directory", result=False)


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


def threshold_range(model: ScoreModule, cfg: SampleConfig) -> tuple[float, float]:
    """Model-space data range for thresholding: ``--threshold-range`` or that of the dataset's discrete transform."""
    if cfg.threshold_range:
        low, high = cfg.threshold_range
        return float(low), float(high)
    t = model.transform
    if t.levels is None:
        if cfg.threshold is None:
            return -1.0, 1.0
        raise ValueError("the data are continuous, so their range is unknown: pass --threshold-range '[low, high]'")
    return t.shift, t.shift + t.scale


def score_transform(
    model: ScoreModule, cfg: SampleConfig, classifier: ClassifierModule | None, labels: Tensor | None
) -> Callable[[ScoreFn], ScoreFn] | None:
    """The ``score_transform`` of :meth:`ScoreModule.sample` for classifier guidance and thresholding (or ``None``)."""
    if classifier is None and cfg.threshold is None:
        return None
    low, high = threshold_range(model, cfg)

    def transform(score_fn: ScoreFn) -> ScoreFn:
        if classifier is not None and labels is not None:
            score_fn = classifier_guidance(score_fn, classifier, labels, cfg.classifier_scale)
        if cfg.threshold is not None:
            kind: Literal["static", "dynamic"] = "static" if cfg.threshold == "static" else "dynamic"  # checked before
            score_fn = threshold(score_fn, model.sde, kind, percentile=cfg.percentile, low=low, high=high)
        return score_fn

    return transform


class SamplingTask(ShardTask):
    """Wraps a trained :class:`ScoreModule` for ``Trainer.predict``: each shard is drawn with its samples' own seeds
    (``derive_seeds(seed, j)``) and, with ``classes``, sample ``j`` gets class ``classes[j mod k]``."""

    def __init__(
        self,
        model: ScoreModule,
        cfg: SampleConfig,
        solver: str | Solver,
        options: dict[str, Any],
        out: Path,
        classes: list[int] | None = None,
        classifier: ClassifierModule | None = None,
        stage1: ScoreModule | None = None,
    ) -> None:
        super().__init__(cfg.n, cfg.batch_size, out)
        self.model, self.cfg, self.solver, self.options = model, cfg, solver, options
        self.classes, self.classifier, self.stage1 = classes, classifier, stage1

    def draw(self, start: int, count: int) -> dict[str, np.ndarray]:
        seeds = derive_seeds(self.cfg.seed, start, count, device=self.device)
        if self.stage1 is not None:
            return self._cascade(count, seeds)
        labels = None
        if self.classes is not None:
            index = torch.arange(start, start + count, device=self.device)
            labels = torch.tensor(self.classes, device=self.device)[index % len(self.classes)]
        conditional = labels is not None and self.model.num_classes is not None
        res = self.model.sample(
            count,
            solver=self.solver,
            steps=self.cfg.steps,
            seeds=seeds,
            grid=self.cfg.grid or "uniform",
            denoise=self.cfg.denoise,
            t_end=self.cfg.t_end,
            labels=labels if conditional else None,
            guidance_scale=self.cfg.guidance_scale,
            score_transform=score_transform(self.model, self.cfg, self.classifier, labels),
            **self.options,
        )
        extra = {} if labels is None else {"labels": labels.cpu().numpy()}
        return {"samples": images(self.model, res.x), "nfe": np.asarray(res.nfe), **extra}

    def _cascade(self, count: int, seeds: Tensor) -> dict[str, np.ndarray]:
        """Stage 1, the augmentation and stage 2 from three streams of each sample's seed
        (:func:`scoresde.cascade.stage_seeds`, as :func:`scoresde.cascade.cascade_sample` draws them)."""
        assert self.stage1 is not None
        first, noise, second = stage_seeds(seeds)
        low = self.stage1.sample(count, steps=self.cfg.stage1_steps, seeds=first)
        s = self.cfg.augmentation
        z = augment(low.x, s, self.model.sde, noise)
        res = self.model.sample(
            count,
            solver=self.solver,
            steps=self.cfg.steps,
            seeds=second,
            grid=self.cfg.grid or "uniform",
            denoise=self.cfg.denoise,
            t_end=self.cfg.t_end,
            condition=pack_condition(z, s),
            **self.options,
        )
        return {
            "samples": images(self.model, res.x),
            "low_resolution": images(self.stage1, low.x),
            "nfe": np.asarray(low.nfe + res.nfe),
        }


def images(model: ScoreModule, x: Tensor) -> np.ndarray:
    """Samples in the dataset's units; a cascade's stage 1 gives ``A x`` (pooling times 2), written as block means."""
    x = x.cpu()
    return model.transform.inverse(x / 2 if model.cascade_stage == "low" else x).numpy()


def _classifier_classes(classifier: ClassifierModule, model: ScoreModule) -> int:
    """The classifier's number of classes, read from one forward pass (and its input shape checked)."""
    with torch.no_grad():
        x = torch.zeros(1, *(model.data_shape or ()))
        logits = classifier(x, torch.full((1,), 0.5))
    if logits.ndim != 2:
        raise ValueError(f"the classifier returns shape {tuple(logits.shape)}, not logits (B, K)")
    return int(logits.shape[1])


ANALYTIC_POINTS = 1000
"""Train points the Analytic-DPM table is estimated from (64 log-SNRs: 64,000 network evaluations, once)."""


def analytic_table(model: ScoreModule, ckpt: str) -> EpsNormTable:
    """Analytic-DPM's ``Gamma(t)`` for a checkpoint: read from ``<ckpt>.eps_norm.pt`` beside it when that file was
    made from this checkpoint (same digest), else estimated from the first ``ANALYTIC_POINTS`` points of the
    checkpoint's train split (seed 0) and written there atomically, so it is computed once per checkpoint."""
    spec = CheckpointSpec.parse(ckpt)
    path = spec.path.with_name(spec.path.name + ".eps_norm.pt")
    digest = spec.digest()
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("ckpt_sha256") == digest:
            return EpsNormTable.from_state(state)
    dm = load_data(None, ckpt)
    raw = dm.train_raw[:ANALYTIC_POINTS]
    x = dm.transform.forward_points(raw, torch.arange(len(raw)), 0).to(model.device)
    print(f"Analytic-DPM: estimating Gamma(t) from {len(x)} train points (once; kept in {path.name})")
    table = eps_norm_table(model.score_model, model.sde, x, generator=torch.Generator(device=x.device).manual_seed(0))
    if path.parent.exists() and spec.format == "lightning":
        with atomic_path(path) as tmp:
            torch.save({**table.state(), "ckpt_sha256": digest}, tmp)
    return table


def distilled_defaults(cfg: SampleConfig, spec: CheckpointSpec) -> SampleConfig:
    """A student of ``scoresde distill`` is sampled on the grid and end time it was distilled for, unless the
    command gives them (its steps and ``ddim`` are already the checkpoint's defaults)."""
    if spec.format != "lightning":
        return cfg
    record = read_checkpoint(cfg.ckpt).get(DISTILLATION_KEY)
    if not record:
        return cfg
    grid = cfg.grid if cfg.grid is not None else record["grid"]
    t_end = cfg.t_end if cfg.t_end is not None else float(record["t_end"])
    return dataclasses.replace(cfg, grid=grid, t_end=t_end)


def check_latent_options(cfg: SampleConfig) -> None:
    """Refuse what acts on pixels for a latent model, whose solver runs on latents: a pixel classifier, thresholding
    of the data prediction, Analytic-DPM's table (estimated from data)."""
    if cfg.classifier or cfg.threshold is not None:
        raise ValueError(
            "a latent diffusion model samples latents: --classifier and --threshold act on pixels and do not apply"
        )
    if (cfg.options or {}).get("variance") == "analytic":
        raise ValueError("--variance analytic estimates its table from pixel data; a latent model does not take it yet")


def load_stage1(model: ScoreModule, cfg: SampleConfig) -> ScoreModule | None:
    """A cascade's stage 1 (``--stage1``) for the super-resolution model ``model``, checked against it: its samples
    must have the shape stage 2 is conditioned on. ``None`` for a one-stage model (which refuses cascade options)."""
    if model.cascade_stage != "super":
        if cfg.stage1 is not None or cfg.augmentation or cfg.stage1_steps is not None:
            raise ValueError(
                "--stage1, --augmentation and --stage1-steps run a cascade: --ckpt must then be its super-resolution "
                "stage 2 (a model trained with model.augmentation)"
            )
        return None
    if cfg.stage1 is None:
        raise ValueError(f"{cfg.ckpt} is a super-resolution model (a cascade's stage 2): give --stage1 LOW.ckpt too")
    if cfg.classes is not None or cfg.classifier or cfg.threshold is not None or cfg.nfe is not None:
        raise ValueError("a cascade takes neither --class, --classifier, --threshold nor --nfe")
    if not 0.0 <= cfg.augmentation < model.sde.T:
        raise ValueError(f"--augmentation must lie in [0, T={model.sde.T:g}), got {cfg.augmentation}")
    if cfg.stage1_steps is not None and cfg.stage1_steps < 1:
        raise ValueError(f"--stage1-steps must be a positive integer, got {cfg.stage1_steps}")
    stage1 = load_model(cfg.stage1, block=cfg.block, cascade=True)
    C, H, W = model.data_shape or (0, 0, 0)
    if stage1.sample_shape != (C, H // 2, W // 2):
        raise ValueError(
            f"--stage1 {cfg.stage1} samples shape {stage1.sample_shape}, but stage 2 is conditioned on {(C, H // 2, W // 2)}"
        )
    return stage1


def run_sampling(cfg: SampleConfig) -> Path | None:
    """Draw ``cfg.n`` samples in shards under ``cfg.out`` (resuming), merge them into ``samples.npz``; returns its
    path on rank 0 (``None`` on the other ranks)."""
    check_sizes(cfg.n, cfg.batch_size)
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {cfg.steps}")
    spec = CheckpointSpec.parse(cfg.ckpt)
    model = load_model(cfg.ckpt, block=cfg.block, model_config=cfg.model_config, latent=True, cascade=True)
    if model.codec is not None:
        check_latent_options(cfg)
    stage1 = load_stage1(model, cfg)
    cfg = distilled_defaults(cfg, spec)
    choice = None
    if cfg.nfe is not None:
        if cfg.solver is not None or cfg.steps is not None or cfg.grid is not None or cfg.options:
            raise ValueError("--nfe picks the solver, its options, the grid and the steps: give --nfe or those")
        choice = choose_for_budget(cfg.nfe, model.sde)
        cfg = dataclasses.replace(
            cfg, nfe=None, solver=choice.solver, options=dict(choice.options), steps=choice.steps, grid=choice.grid
        )
        print(f"--nfe {choice.nfe}: {choice.describe()}")
    solver, default_options = model.default_solver() if cfg.solver is None else (cfg.solver, {})
    options = {**default_options, **cfg.options}
    built = get_solver(solver, **options)  # fail on a bad name or option before any work
    built.check_size(math.prod(model.sample_shape or (1,)))  # and on a solver unsafe for data this small
    task_solver, task_options = solver, options
    if isinstance(built, Ancestral) and built.variance == "analytic" and built.table is None:
        task_solver, task_options = dataclasses.replace(built, table=analytic_table(model, cfg.ckpt)), {}
    grid_times = (
        resolve_grid(cfg.grid or "uniform", model.sde, cfg.t_end, cfg.steps) if is_grid_file(cfg.grid or "") else None
    )
    classifier = load_classifier(cfg.classifier) if cfg.classifier else None
    num_classes = model.num_classes if classifier is None else _classifier_classes(classifier, model)
    classes = parse_classes(cfg.classes, num_classes)
    if classifier is not None and classes is None:
        raise ValueError("--classifier guides towards a class: give --class too")
    if model.num_classes is None and cfg.guidance_scale != 1.0:
        raise ValueError(
            "--guidance-scale is classifier-free guidance of a class-conditional model; this one is "
            "unconditional (use --classifier with --classifier-scale)"
        )
    if cfg.threshold is not None:
        if cfg.threshold not in ("static", "dynamic"):
            raise ValueError(f"--threshold must be static or dynamic, got {cfg.threshold!r}")
        threshold_range(model, cfg)

    out = prepare_out(cfg.out)
    record = manifest_record(
        cfg,
        solver=solver if isinstance(solver, str) else repr(solver),  # the model's own instance: its options too
        options=options,
        ckpt=str(spec.path.resolve()),
        ckpt_sha256=spec.digest(),
        **({} if grid_times is None else {"grid_times": grid_times.tolist()}),
        **({} if choice is None else {"nfe_budget": choice.nfe, "nfe_choice": choice.describe()}),
    )
    task = SamplingTask(model, cfg, task_solver, task_options, out, classes, classifier, stage1)
    merged = run_resumable(cfg, task, out / "sample_config.json", record, "samples drawn", precision=cfg.precision)
    steps = len(grid_times) - 1 if grid_times is not None else cfg.steps or int(model.hparams["sample_steps"])
    return None if merged is None else _merge(model, cfg, solver, steps, out, merged)


def _merge(
    model: ScoreModule, cfg: SampleConfig, solver: object, steps: int, out: Path, merged: dict[str, np.ndarray]
) -> Path:
    samples, nfe, labels, low = merged["samples"], merged["nfe"], merged.get("labels"), merged.get("low_resolution")
    final = out / "samples.npz"
    extra = {} if labels is None else {"labels": labels}
    if low is not None:
        extra["low_resolution"] = low
        top = model.transform.levels - 1 if model.transform.levels else 1
        panels = [("stage 1", low[:64]), ("stage 2", samples[:64])]
        plotting.image_panels(
            [(name, torch.as_tensor(x, dtype=torch.float32) / top) for name, x in panels],
            out / "cascade.png",
            title=f"cascade, augmentation s = {cfg.augmentation:g}",
        )
    save_npz(final, {"samples": samples, "nfe_per_sample": nfe, **extra})  # (N, *D), (N,), (N,)
    title = f"{len(samples)} samples of {CheckpointSpec.parse(cfg.ckpt).path.name}: {solver}, {steps} steps, {nfe.mean():.0f} NFE"
    plotting.samples_picture(samples, model.transform, out / "samples.png", labels=labels, title=title)
    print(
        f"wrote {len(samples)} samples ({samples.dtype}, shape {samples.shape[1:]}, {nfe.mean():.1f} NFE each on average) to {final}"
    )
    return final


def sample_command(argv: Sequence[str]) -> Path | None:
    """``scoresde sample ...``; ``argv`` excludes the word ``sample``."""
    parser = build_parser(SampleConfig, "scoresde sample", __doc__ or "")
    return run_sampling(parse_config(SampleConfig, parser, argv, solver_options=True))
