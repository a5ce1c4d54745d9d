"""``DistillModule``: progressive or consistency distillation (:mod:`scoresde.distill`) of a ``scoresde fit``
checkpoint, as a LightningModule. ``scoresde distill --config experiments/distill/toy_vp.yaml`` runs it.

One fit runs every stage: stage ``k`` (0-based) covers optimizer steps ``[k S, (k + 1) S)`` for ``S =
steps_per_stage`` and trains a ``teacher_steps / 2^(k+1)``-step student against the previous stage's student (the
checkpoint's own model for stage 0). At the end of a stage the student is written as a ``scoresde fit``-style
checkpoint, ``<dirpath>/student_<N>steps.ckpt``, that ``scoresde sample`` draws from with ``ddim`` on its ``N`` steps
and grid by default, and it becomes the teacher. The stage follows from the global step and both models are in the
module's state, so a run resumed from its ``last.ckpt`` carries on inside its stage.

With ``method: consistency`` there is one stage of ``steps_per_stage`` steps on the teacher's ``teacher_steps``-step
grid, a target network kept as the EMA of the student (``ema_decay``), and the student is written as
``<dirpath>/consistency.ckpt``, which ``scoresde sample`` draws with the ``consistency`` solver on ``final_steps``
steps by default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

import lightning as L

from .._utils import atomic_path
from ..distill import ConsistencyDistillation, ProgressiveDistillation
from .module import ScoreModule, step_noise, step_seed

__all__ = ["DistillModule", "DISTILLATION_KEY"]

DISTILLATION_KEY = "distillation"
"""The key of a student checkpoint that records its stage, step count and grid."""


class DistillModule(L.LightningModule):
    """Progressive (or consistency) distillation of ``teacher`` (a ``scoresde fit`` checkpoint).

    Args:
        teacher: path of the teacher checkpoint (its EMA weights are the first teacher and the student's start).
        teacher_steps: the teacher's DDIM steps ``N``; stage ``k`` trains a ``N / 2^(k+1)``-step student.
        final_steps: the last stage's student steps (a power-of-two fraction of ``teacher_steps``).
        steps_per_stage: optimizer steps per stage.
        grid: ``"uniform"`` or ``"log_snr"`` (both nest under halving).
        weighting: ``"truncated_snr"`` (``max(SNR, 1)``) or ``"snr_plus_one"``.
        lr: Adam's learning rate, warmed up over ``warmup_steps`` and decayed linearly to 0 within each stage.
        dirpath: where the students go (default: ``<teacher dir>/distilled``).
        method: ``"progressive"`` (Salimans & Ho) or ``"consistency"`` (Song et al., 2023: one stage, the student's
            default sampler ``consistency`` on ``final_steps`` steps).
        ema_decay: the consistency target network's EMA rate ``mu`` (``method="consistency"``).
    """

    def __init__(
        self,
        teacher: str,
        teacher_steps: int = 256,
        final_steps: int = 2,
        steps_per_stage: int = 2000,
        grid: Literal["uniform", "log_snr"] = "uniform",
        weighting: Literal["truncated_snr", "snr_plus_one"] = "truncated_snr",
        lr: float = 1e-4,
        warmup_steps: int = 100,
        dirpath: str | None = None,
        method: Literal["progressive", "consistency"] = "progressive",
        ema_decay: float = 0.95,
    ) -> None:
        super().__init__()
        n, final = int(teacher_steps), int(final_steps)
        if method not in ("progressive", "consistency"):
            raise ValueError(f"distillation method must be 'progressive' or 'consistency', got {method!r}")
        if method == "consistency":
            if not 1 <= final <= n:
                raise ValueError(f"final_steps must lie in [1, teacher_steps = {n}], got {final_steps}")
            if not 0 <= ema_decay < 1:
                raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        elif final < 1 or n <= final or n % final or (n // final) & (n // final - 1):
            raise ValueError(
                f"teacher_steps / final_steps must be a power of two above 1 (each stage halves the steps), got "
                f"{teacher_steps} / {final_steps}"
            )
        if steps_per_stage < 1 or not lr > 0:
            raise ValueError(f"steps_per_stage must be >= 1 and lr > 0, got {steps_per_stage} and {lr}")
        path = Path(teacher)
        if not path.is_file():
            raise ValueError(f"teacher checkpoint {teacher} not found (a last.ckpt written by `scoresde fit`)")
        self.save_hyperparameters()
        self._teacher_checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        source = ScoreModule.load_from_checkpoint(path, map_location="cpu", weights_only=False, compile=False)
        self.student = copy.deepcopy(source.score_model)
        self.teacher = copy.deepcopy(source.score_model).requires_grad_(False).eval()
        self.objective = ProgressiveDistillation(source.sde, grid=grid, weighting=weighting)
        self.consistency = ConsistencyDistillation(source.sde, steps=n, grid=grid) if method == "consistency" else None
        self.stages = 1 if self.consistency is not None else (n // final).bit_length() - 1
        if self.consistency is not None:  # theta⁻, the EMA of the student
            self.target = copy.deepcopy(source.score_model).requires_grad_(False).eval()
        self.dirpath = Path(dirpath) if dirpath is not None else path.parent / "distilled"
        self._stage = 0

    def student_steps(self, stage: int) -> int:
        """Steps of stage ``stage``'s student: ``teacher_steps / 2^(stage + 1)`` (a consistency student's default
        sampling steps: ``final_steps``)."""
        if self.hparams.get("method") == "consistency":
            return int(self.hparams["final_steps"])
        return int(self.hparams["teacher_steps"]) >> (stage + 1)

    def stage_of(self, step: int) -> int:
        return min(step // int(self.hparams["steps_per_stage"]), self.stages - 1)

    def on_fit_start(self) -> None:
        expected = self.stages * int(self.hparams["steps_per_stage"])
        if self.trainer.max_steps != expected:
            raise ValueError(
                f"trainer.max_steps must be stages x steps_per_stage = {self.stages} x "
                f"{self.hparams['steps_per_stage']} = {expected}, got {self.trainer.max_steps}"
            )

    def training_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        seed = step_seed(torch.initial_seed(), self.current_epoch, batch_idx)
        noise = step_noise(seed, x0.shape[0], self.global_rank, self.trainer.world_size, x0.device)
        steps = self.student_steps(self._stage)
        if self.consistency is not None:
            per = self.consistency.per_sample(self.student.x0, self.target.x0, self.teacher.x0, x0, noise=noise)
            loss = per.mean()
        else:
            loss = self.objective.per_sample(self.student.x0, self.teacher.x0, x0, steps, noise=noise).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=x0.shape[0])
        self.log("stage/steps", float(steps), prog_bar=True, on_step=True, batch_size=x0.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.consistency is not None:  # theta⁻ ← mu theta⁻ + (1 - mu) theta
            with torch.no_grad():
                pairs = list(zip(self.target.parameters(), self.student.parameters(), strict=True))
                torch._foreach_lerp_([p for p, _ in pairs], [q for _, q in pairs], 1 - float(self.hparams["ema_decay"]))
        step = self.global_step  # optimizer steps taken
        if step % int(self.hparams["steps_per_stage"]) == 0 and step > 0:
            finished = step // int(self.hparams["steps_per_stage"]) - 1
            if finished < self.stages and finished == self._stage:
                self._end_stage(finished)

    def _end_stage(self, stage: int) -> None:
        """Write stage ``stage``'s student and make it the teacher of the next stage."""
        if self.trainer.is_global_zero:
            name = (
                "consistency.ckpt" if self.consistency is not None else f"student_{self.student_steps(stage)}steps.ckpt"
            )
            self.write_student(self.dirpath / name, stage)
        self.teacher.load_state_dict(self.student.state_dict())
        self._stage = stage + 1

    def write_student(self, path: Path, stage: int) -> None:
        """The student as a checkpoint ``scoresde sample`` reads: the teacher's checkpoint with the student's
        weights, ``ddim`` on the student's steps as the default sampler, and the grid recorded."""
        ckpt = dict(self._teacher_checkpoint)
        prefix = "score_model."
        state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(prefix)}
        state.update({prefix + k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()})
        ckpt["state_dict"] = state
        hp = dict(ckpt["hyper_parameters"])
        sampler = "consistency" if self.consistency is not None else "ddim"
        hp.update(sampler=sampler, sampler_options={}, sample_steps=self.student_steps(stage))
        ckpt["hyper_parameters"] = hp
        ckpt[DISTILLATION_KEY] = {
            "stage": stage,
            "steps": self.student_steps(stage),
            "grid": self.objective.grid_name,
            "t_end": self.objective.t_end,
            "teacher": str(self.hparams["teacher"]),
            "teacher_steps": int(self.hparams["teacher_steps"]),
            "weighting": self.objective.weighting,
            "method": str(self.hparams.get("method", "progressive")),
        }
        for key in ("optimizer_states", "lr_schedulers", "callbacks", "loops"):
            ckpt.pop(key, None)
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["distill_stage"] = self._stage

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stage = int(checkpoint.get("distill_stage", 0))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.student.parameters(), lr=self.hparams["lr"])
        per, warm = int(self.hparams["steps_per_stage"]), int(self.hparams["warmup_steps"])

        def factor(step: int) -> float:  # warm-up, then linear decay to 0 within each stage (the paper's)
            within = step % per
            return min(1.0, (step + 1) / warm) * (1 - within / per) if warm else 1 - within / per

        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"},
        }
