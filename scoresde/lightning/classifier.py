"""``ClassifierModule``: trains the noise-conditional classifier ``p_φ(y | x_t, t)`` that classifier guidance needs.

Each step draws ``t ~ U(t_eps, T)`` and ``x_t = alpha_t x_0 + sigma_t z`` as the score model's training does and
minimises the cross-entropy of the labels, so the classifier learns the posterior over classes at every noise level:

    scoresde classifier fit --config experiments/classifiers/digits.yaml
    scoresde sample --ckpt score.ckpt --classifier runs/digits_classifier/checkpoints/last.ckpt --class 3 --classifier-scale 2
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning as L

from .._utils import append_dims
from ..guidance import NoisyClassifier
from ..sde import SDE
from .module import save_hparams_without_modules, step_noise, step_seed, with_warmup

__all__ = ["ClassifierModule"]


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of ``NoisyClassifier(net, sde)`` on diffused labelled data (``labels: true`` data).

    Args:
        net: ``net(x_t, c_noise) -> logits (B, K)``: ``scoresde.nets.MLP(out_features=K)`` or ``ConvClassifier``.
        sde: the SDE of the score model it will guide (the same noise levels).
        time_input: ``c_noise`` convention (``"auto"``: the SDE's).
        lr, weight_decay: AdamW settings.
        warmup_steps: linear learning-rate warm-up.
        t_eps: smallest training time.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        time_input: Literal["auto", "t", "log_sigma", "timestep"] = "auto",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        t_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not lr > 0 or warmup_steps < 0 or not 0 < t_eps < sde.T:
            raise ValueError(f"need lr > 0, warmup_steps >= 0 and 0 < t_eps < T; got {lr}, {warmup_steps}, {t_eps}")
        save_hparams_without_modules(self, inspect.currentframe())
        self.classifier = NoisyClassifier(net, sde, time_input)
        self.sde = sde
        self._run_seed = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits ``(B, K)`` of ``p_φ(y | x_t, t)``."""
        return self.classifier(x, t)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, seed: int) -> Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("ClassifierModule needs (x, y) batches: switch the DataModule's labels on (labels: true)")
        x0, y = batch
        # one stream per example, keyed by the step and the example's global position (as ScoreModule's training)
        world, rank = (self.trainer.world_size, self.global_rank) if self._trainer is not None else (1, 0)
        noise = step_noise(
            seed, x0.shape[0], rank if stage == "train" else 0, world if stage == "train" else 1, x0.device
        )
        t = self.hparams["t_eps"] + (self.sde.T - self.hparams["t_eps"]) * noise.uniform(x0.device)
        mean, std = self.sde.marginal_prob(x0, t)
        x_t = mean + append_dims(std, x0.ndim).to(x0.dtype) * noise(x0)
        logits = self.classifier(x_t, t.to(x0.dtype))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        on_step = stage == "train"
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/acc": acc},
            prog_bar=True,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=len(y),
            sync_dist=not on_step,
        )
        return loss

    def on_fit_start(self) -> None:
        self._run_seed = torch.initial_seed()  # the seed Lightning's seed_everything set (or a random one)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        seed = step_seed(self._run_seed, self.current_epoch, batch_idx)
        return self._step(batch, "train", seed)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val", batch_idx)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        return with_warmup(opt, h["warmup_steps"])
