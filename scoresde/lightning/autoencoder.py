"""``AutoencoderModule``: trains the first stage of latent diffusion (:mod:`scoresde.autoencoder`).

    scoresde autoencoder fit --config experiments/autoencoders/digits.yaml
    scoresde fit --config experiments/digits_latent.yaml     # model.autoencoder_ckpt: the first stage's last.ckpt

Every checkpoint also records the latent scale factor ``s = 1 / std`` of the encoded training data
(``checkpoint["latent_scale"]``), which the latent score model reads together with the weights.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import lightning as L

from ..autoencoder import Autoencoder, AutoencoderLoss, LatentCodec
from .module import save_hparams_without_modules, step_noise, step_seed, with_warmup

__all__ = ["AutoencoderModule", "read_first_stage"]


class AutoencoderModule(L.LightningModule):
    """Minimises :class:`~scoresde.autoencoder.AutoencoderLoss` over model-space batches.

    Args:
        autoencoder: the first stage (e.g. ``scoresde.autoencoder.ConvAutoencoder``).
        loss: default ``AutoencoderLoss()``.
        lr, weight_decay, warmup_steps: AdamW settings.
        scale_points: training points whose encodings fix the scale factor (the first ones, at bin centres).
    """

    def __init__(
        self,
        autoencoder: Autoencoder,
        loss: AutoencoderLoss | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        scale_points: int = 2048,
    ) -> None:
        super().__init__()
        if not lr > 0 or warmup_steps < 0 or scale_points < 2:
            raise ValueError(
                f"need lr > 0, warmup_steps >= 0 and scale_points >= 2; got {lr}, {warmup_steps}, {scale_points}"
            )
        save_hparams_without_modules(self, inspect.currentframe())
        self.codec = LatentCodec(autoencoder)
        self.loss = loss if loss is not None else AutoencoderLoss()
        self._run_seed = 0

    @property
    def autoencoder(self) -> Autoencoder:
        return self.codec.autoencoder

    def on_fit_start(self) -> None:
        self._run_seed = torch.initial_seed()

    def _step(self, batch: Tensor | tuple[Tensor, ...], stage: str, seed: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        like = x.new_empty(x.shape[0], *self.autoencoder.latent_shape)
        if stage == "train":  # the reparameterisation noise of each example from its own stream
            world, rank = (self.trainer.world_size, self.global_rank) if self._trainer is not None else (1, 0)
            eps = step_noise(seed, x.shape[0], rank, world, x.device)(like)
        else:
            g = torch.Generator(device=x.device).manual_seed(seed)
            eps = torch.randn(like.shape, generator=g, device=x.device, dtype=x.dtype)
        nll, kl = self.loss.terms(self.autoencoder, x, eps)
        loss = (nll + self.loss.kl_weight * kl).mean()
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=x.shape[0], sync_dist=stage != "train")
        if stage != "train":
            with torch.no_grad():
                mse = (self.autoencoder.decode(self.autoencoder.encode(x)[0]) - x).pow(2).mean()
            self.log(f"{stage}/mse", mse, prog_bar=True, batch_size=x.shape[0], sync_dist=True)
            self.log(f"{stage}/kl", kl.mean(), batch_size=x.shape[0], sync_dist=True)
        return loss

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._step(batch, "train", step_seed(self._run_seed, self.current_epoch, batch_idx))

    def validation_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._step(batch, "test", batch_idx)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        return with_warmup(opt, h["warmup_steps"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the scale factor of the current weights, from the first ``scale_points`` training points."""
        dm = getattr(self._trainer, "datamodule", None)
        raw = getattr(dm, "train_raw", None)
        if dm is None or raw is None:
            return
        raw = raw[: self.hparams["scale_points"]]
        x = dm.transform.forward(raw, u=torch.full(raw.shape, 0.5)).to(self.device)
        was_training = self.training
        self.eval()
        try:
            checkpoint["latent_scale"] = self.codec.fit_scale(x)
        finally:
            self.train(was_training)
        if "codec.scale" in checkpoint.get("state_dict", {}):  # collected before this hook: the same scale there
            checkpoint["state_dict"]["codec.scale"] = self.codec.scale.detach().clone()


def read_first_stage(path: str, codec: LatentCodec) -> None:
    """Load the weights and the scale factor of a ``scoresde autoencoder fit`` checkpoint into ``codec``; a file that
    is missing or records no scale fails with what to do."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"autoencoder_ckpt {path}: no such file; train the first stage with `scoresde autoencoder fit --config ...`"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "latent_scale" not in ckpt:
        raise ValueError(f"{path} records no latent_scale; it was not written by `scoresde autoencoder fit`")
    prefix = "codec.autoencoder."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        codec.autoencoder.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: its autoencoder does not match model.autoencoder (the same class and init_args): {e}"
        ) from None
    codec.scale.fill_(float(ckpt["latent_scale"]))
