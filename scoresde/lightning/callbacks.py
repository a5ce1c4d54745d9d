"""Callbacks: checkpoints every N steps, sample pictures during and after training, and the end-of-fit report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning as L

from .. import metrics, plotting
from .._utils import atomic_path
from ..cascade import downsample, pack_condition
from ..likelihood import bits_per_dim, resolve_trace
from .module import ScoreModule

__all__ = ["StepCheckpoint", "SampleReport", "BitsPerDimReport"]


def _write_json(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def _datamodule(trainer: L.Trainer) -> Any:
    """The DataModule of the run (an attribute Lightning sets at run time, unseen by type checkers)."""
    return getattr(trainer, "datamodule", None)


def _score_module(pl_module: L.LightningModule, who: str) -> ScoreModule:
    if not isinstance(pl_module, ScoreModule):
        raise TypeError(f"{who} reports on a ScoreModule, got {type(pl_module).__name__}")
    return pl_module


def _describe(datamodule: Any) -> str:
    """``ToyDataModule(name='ring', n_train=50000, ...)``: the DataModule with its saved hyperparameters."""
    hparams = getattr(datamodule, "hparams", {}) or {}
    return f"{type(datamodule).__name__}({', '.join(f'{k}={v!r}' for k, v in hparams.items())})"


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that writes ``last.ckpt`` every ``every_n_train_steps`` optimizer steps (500 by
    default: a ``kill -9`` loses at most that many) and at the final step of a ``max_steps`` run.

    The final save happens at the end of that step, as the periodic ones do, so resuming from it (``--ckpt_path``
    with a larger ``max_steps``) continues the epoch where it stopped; Lightning's own end-of-training save records the
    stopped epoch as finished, and a run resumed from it would skip the rest of that epoch's data. Every file is
    written under a temporary name and renamed into place, so a kill during a save leaves the previous checkpoint
    whole. A new run in the same ``dirpath`` writes ``last.ckpt`` again (``enable_version_counter=False``: not
    ``last-v1.ckpt`` beside a stale ``last.ckpt``). Other arguments are ``ModelCheckpoint``'s.
    """

    def __init__(
        self,
        *,
        every_n_train_steps: int = 500,
        save_last: bool = True,
        enable_version_counter: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            every_n_train_steps=every_n_train_steps,
            save_last=save_last,
            enable_version_counter=enable_version_counter,
            **kwargs,
        )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)  # rank 0 writes; the others wait at Lightning's barrier
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        self._last_checkpoint_saved = filepath

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        final = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if (
            final
            and self._last_global_step_saved != trainer.global_step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class SampleReport(L.Callback):
    """Draws samples with the (EMA) model, saves a picture and logs it; at the end of fit also reports numbers.

    2-D data: samples over the exact density (when the DataModule knows it) next to the data. Images: a grid of
    samples next to real images. When the DataModule has an analytic ``target`` the report measures the score error
    against the exact score, the Fréchet distance to the exact mean/covariance and the mode-mass error, each next to
    its noise floor (the same metric on exact samples of the same size).

    Args:
        n_samples: samples per picture.
        steps: solver steps (default: the model's ``sample_steps``).
        solver: solver name (default: the model's ``sampler``).
        solver_options: that solver's options, e.g. ``{order: 3}`` (default: the model's ``sampler_options``).
        grid: time grid of fixed-step solvers.
        every_n_epochs: also draw a picture after every n-th validation (0: only at the end of fit).
        out_dir: where pictures and ``summary.json`` go (default: the trainer's ``default_root_dir``).
        seed: seed of the sampling noise.
    """

    def __init__(
        self,
        n_samples: int = 2000,
        steps: int | None = None,
        solver: str | None = None,
        solver_options: dict[str, Any] | None = None,
        grid: str = "uniform",
        every_n_epochs: int = 0,
        out_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        if n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {n_samples}")
        self.n_samples, self.steps, self.solver = n_samples, steps, solver
        self.solver_options, self.grid = dict(solver_options or {}), grid
        self.every_n_epochs, self.out_dir, self.seed = every_n_epochs, out_dir, seed
        self._t_start = 0.0

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.out_dir or trainer.default_root_dir)

    def _draw(self, pl_module: ScoreModule, dm: Any) -> torch.Tensor:
        """Samples in model space; a cascade's stage 1 gives its block means ``A x / 2``, and its stage 2 is
        conditioned on the validation images' own low-resolution views (in order, repeated), the real panel."""
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        condition = None
        if pl_module.cascade_stage == "super":
            real = dm.real_examples(self.n_samples).to(pl_module.device)
            real = real[torch.arange(self.n_samples, device=real.device) % len(real)]
            condition = pack_condition(downsample(real), 0.0)
        x = pl_module.sample(
            self.n_samples,
            solver=self.solver,
            steps=self.steps,
            generator=g,
            grid=self.grid,
            condition=condition,
            **self.solver_options,
        ).x
        return x / 2 if pl_module.cascade_stage == "low" else x

    def _picture(self, trainer: L.Trainer, pl_module: ScoreModule, x: torch.Tensor, path: Path, title: str) -> Path:
        dm = _datamodule(trainer)
        if x[0].numel() == 2:
            data = getattr(dm, "val_raw", None)
            return plotting.plot_2d(x.reshape(-1, 2), path, target=getattr(dm, "target", None), data=data, title=title)
        if x.ndim == 4:
            real = dm.real_examples(64) if hasattr(dm, "real_examples") else None
            if real is not None and pl_module.cascade_stage == "low":  # beside stage 1's samples: the same view
                real = downsample(real.to(x.device)) / 2
            to_unit = pl_module.transform.to_unit
            return plotting.image_grid(to_unit(x[:64]), path, real=None if real is None else to_unit(real), title=title)
        raise ValueError(f"no picture for data of shape {tuple(x.shape[1:])} (2-D points or images only)")

    def _log_image(self, trainer: L.Trainer, path: Path, key: str) -> None:
        # to every logger that takes pictures (Weights & Biases); the file itself stays in the run directory
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[str(path)], step=trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = _score_module(pl_module, "SampleReport")
        epoch = trainer.current_epoch
        if (
            trainer.sanity_checking
            or not self.every_n_epochs
            or (epoch + 1) % self.every_n_epochs
            or not trainer.is_global_zero
        ):
            return
        path = self._picture(
            trainer,
            module,
            self._draw(module, _datamodule(trainer)),
            self._dir(trainer) / "samples" / f"epoch{epoch:04d}.png",
            f"epoch {epoch}",
        )
        self._log_image(trainer, path, "samples")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        module, dm = _score_module(pl_module, "SampleReport"), _datamodule(trainer)
        train_time = time.perf_counter() - self._t_start
        t0 = time.perf_counter()
        x = self._draw(module, dm)
        sample_time = time.perf_counter() - t0
        out = self._dir(trainer)
        path = self._picture(
            trainer, module, x, out / "samples.png", f"{type(module.sde).__name__}, {trainer.global_step} steps"
        )
        self._log_image(trainer, path, "samples/final")
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        logged["val/loss"] = module.validation_loss(dm.val_dataloader())
        ckpt = trainer.checkpoint_callback
        steps = self.steps or module.hparams["sample_steps"]
        summary: dict[str, Any] = {
            "checkpoint": getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") or None,
            "seed": module.run_seed,
            "data": _describe(dm),
            "sde": repr(module.sde),
            "steps": trainer.global_step,
            "train_seconds": round(train_time, 1),
            "sample_seconds": round(sample_time, 1),
            "sampler": f"{self.solver or module.default_solver()[0]}, {steps} steps",
            **{k: round(v, 5) for k, v in logged.items() if k.endswith(("loss", "loss_epoch", "bpd"))},
            "picture": str(path),
        }
        target = getattr(dm, "target", None)
        if target is not None:
            summary.update(self._exact_metrics(module, target, x))
        _write_json(summary, out / "summary.json")
        width = max(len(k) for k in summary)
        lines = [f"  {k:<{width}}  {v}" for k, v in summary.items()]
        print("\nscoresde fit summary (also in " + str(out / "summary.json") + ")\n" + "\n".join(lines), flush=True)

    def _exact_metrics(self, pl_module: ScoreModule, target: Any, x: torch.Tensor) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.seed + 1)
        x = x.cpu()
        dev = pl_module.device
        score_err = metrics.score_error(
            lambda x_t, t: pl_module(x_t.to(dev), t.to(dev)).cpu(), target, pl_module.sde, generator=g
        )
        # Each metric next to its floor: the same metric on exact samples of the same size. The floors are heavy-tailed
        # (for 4000 ring samples the Fréchet distance's 90th percentile is 2.5x its median), so report their mean and
        # 90th percentile over 20 sets. The cross-entropy gap's reference is one large exact set (its own noise is
        # a twentieth of a set's); the sliced Wasserstein distance compares with a fresh exact set of the same size.
        exact = [target.sample(len(x), generator=g) for _ in range(21)]
        reference = torch.cat(exact[1:])
        fd = np.array([metrics.frechet_gaussian(e, target.mean, target.cov) for e in exact[1:]])
        mm = np.array([metrics.mode_mass_error(e, target) for e in exact[1:]])
        ce = np.array([abs(metrics.cross_entropy_gap(e, target, reference)) for e in exact[1:]])

        def sliced(a: torch.Tensor) -> float:  # the same 256 directions for the model's samples and the floor's
            return metrics.sliced_wasserstein(a, exact[0], generator=torch.Generator().manual_seed(self.seed + 2))

        sw = np.array([sliced(e) for e in exact[1:]])
        return {
            "score_rel_error": round(score_err, 4),
            "frechet": round(metrics.frechet_gaussian(x, target.mean, target.cov), 5),
            "frechet_floor": round(float(fd.mean()), 5),
            "frechet_floor_p90": round(float(np.percentile(fd, 90)), 5),
            "mode_mass_error": round(metrics.mode_mass_error(x, target), 4),
            "mode_mass_floor": round(float(mm.mean()), 4),
            "mode_mass_floor_p90": round(float(np.percentile(mm, 90)), 4),
            "cross_entropy_gap_bpd": round(metrics.cross_entropy_gap(x, target, reference), 4),
            "cross_entropy_gap_floor_p90": round(float(np.percentile(ce, 90)), 4),
            "sliced_wasserstein": round(sliced(x), 4),
            "sliced_wasserstein_floor": round(float(sw.mean()), 4),
            "sliced_wasserstein_floor_p90": round(float(np.percentile(sw, 90)), 4),
        }


class BitsPerDimReport(L.Callback):
    """Bits/dim of the first ``n_points`` validation points through the probability-flow ODE, logged as ``val/bpd``.

    Runs after every ``every_n_epochs``-th validation, with the weights validation uses (the EMA weights), and logs to
    every logger (Weights & Biases, CSV) and the progress bar. The points, dequantization draws and Hutchinson probes
    are the same at every evaluation, so the curve shows the model's change, not noise. On many devices each rank
    takes every world-size-th point and the means are averaged (one collective, after the solves). The prior at ``T``
    is the module's Gaussian fitted to the train split (``ScoreModule.fitted_prior``), as in ``scoresde likelihood``.

    Args:
        n_points: validation points per evaluation (a quick monitor: ``scoresde likelihood`` gives the full number).
        every_n_epochs: evaluate after every n-th validation.
        trace: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to 16 dimensions).
        rtol, atol: tolerances of the ODE solve.
        seed: seed of the dequantization draws and probes.
    """

    def __init__(
        self,
        n_points: int = 64,
        every_n_epochs: int = 1,
        trace: str = "auto",
        rtol: float = 1e-4,
        atol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        if n_points < 1 or every_n_epochs < 1:
            raise ValueError(f"n_points and every_n_epochs must be >= 1, got {n_points}, {every_n_epochs}")
        if trace not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"trace must be auto, exact or hutchinson, got {trace!r}")
        self.n_points, self.every_n_epochs, self.trace = n_points, every_n_epochs, trace
        self.rtol, self.atol, self.seed = rtol, atol, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        module = _score_module(pl_module, "BitsPerDimReport")
        if module.codec is not None:
            raise ValueError(
                "BitsPerDimReport measures pixel-space models; a latent model's likelihood is "
                "scoresde.autoencoder.latent_log_likelihood"
            )
        raw = _datamodule(trainer).val_raw[: self.n_points][trainer.global_rank :: trainer.world_size]
        if len(raw) == 0:
            raise ValueError(f"BitsPerDimReport: {self.n_points} points cannot be shared by {trainer.world_size} ranks")
        trace = resolve_trace(self.trace, raw[0].numel())
        g = torch.Generator(device=module.device).manual_seed(self.seed + trainer.global_rank)
        # validation runs under inference mode; the divergence needs autograd
        with torch.inference_mode(False), torch.enable_grad():
            res = bits_per_dim(
                module.score_model,
                module.sde,
                raw.to(module.device),
                module.transform,
                generator=g,
                trace=trace,
                rtol=self.rtol,
                atol=self.atol,
                prior=module.fitted_prior,
            )
        module.log("val/bpd", res.per_sample.mean().float(), sync_dist=True, prog_bar=True, batch_size=len(raw))
