"""``ScoreModule``: denoising score matching as a LightningModule. Injection plus thin steps; the math lives in the core."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

import lightning as L

from .._typing import ScoreFn
from ..autoencoder import Autoencoder, LatentCodec
from ..cascade import SuperResolutionNet, augment_per_example, downsample, pack_condition
from ..guidance import classifier_free, null_condition
from ..hybrid import HybridLoss
from ..likelihood import GaussianPrior, diffused_prior
from ..losses import DSMLoss, Loss
from ..noise import PerSampleNoise, index_seeds
from ..parametrization import ScoreModel
from ..sampling import SampleResult, sample
from ..sde import SDE
from ..solvers import Solver, get_solver
from ..solvers.grids import is_grid_file
from ..transforms import DataTransform

__all__ = ["ScoreModule"]


def step_seed(run_seed: int, epoch: int, batch_idx: int) -> int:
    """Seed of one training step's noise, distinct per (run seed, epoch, batch of the epoch)."""
    key = run_seed
    for part in (epoch, batch_idx):
        key = (key * 1_000_003 + part + 1) % 2**63
    return key


def step_noise(seed: int, batch_size: int, rank: int, world_size: int, device: torch.device) -> PerSampleNoise:
    """The training noise of one rank's batch: one stream per example, keyed by the step's ``seed`` and the example's
    position in the global batch. Rank ``r``'s row ``j`` is global position ``r + W j`` (how :class:`EpochShuffle`
    deals the data out), so 1 device with batch ``W B`` and ``W`` devices with batch ``B`` draw the same noise for the
    same examples."""
    positions = rank + world_size * torch.arange(batch_size, device=device)
    return PerSampleNoise(index_seeds(seed, positions))


def save_hparams_without_modules(module: L.LightningModule, frame: Any) -> None:
    """``module.save_hyperparameters()`` from ``__init__``'s ``frame``, less the arguments that are module objects.

    Their weights are in the state dict. The CLI hands Lightning the configs of those arguments (class path and init
    args), which must stay: they rebuild the network from a checkpoint. Built in Python (or by jsonargparse when a
    checkpoint is loaded), they arrive as objects, and Lightning warns about them before they are dropped here; an
    ``ignore=`` list cannot tell the two cases apart (it drops the configs too), so that one warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
        module.save_hyperparameters(frame=frame)
    module.remove_ignored_hparams([k for k, v in module.hparams.items() if isinstance(v, nn.Module)])


def with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> dict[str, Any]:
    """``configure_optimizers``' answer: ``optimizer`` with its learning rate ramped linearly over ``warmup_steps``
    optimizer steps, then constant."""
    warmup = max(int(warmup_steps), 0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def ema_warmup_fn(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA whose decay ramps up: update ``n`` (1, 2, ...) uses
    ``d_n = min(decay, (1 + n) / (10 + n))`` (the usual warm-up), so a short run averages its recent weights rather
    than its random start; past ``n ≈ 9 decay / (1 - decay)`` it is the plain EMA."""

    @torch.no_grad()
    def update(ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema, current, 1 - d)

    return update


def _normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class EMAWeightAveraging(WeightAveraging):
    """Lightning's ``WeightAveraging`` that keeps the raw weights in a checkpoint written after training ended.

    At the end of fit ``WeightAveraging`` copies the average into the model; a checkpoint saved after that (Lightning's
    end-of-training ``last.ckpt``) would otherwise hold the average twice, and a run resumed from it would continue
    from the average instead of the last iterate.
    """

    _raw: dict[str, Tensor] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raw = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._raw is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._raw


class ScoreModule(L.LightningModule):
    """Trains ``net`` so that ``ScoreModel(net, sde, prediction)`` matches the score of the diffused data.

    Args:
        net: time-conditioned network ``net(x, c_noise)`` (e.g. ``scoresde.nets.MLP`` or ``UNet``).
        sde: the forward SDE (``VPSDE``, ``SubVPSDE``, ``VESDE``).
        loss: denoising score-matching loss (default ``DSMLoss()``: ``sigma²`` weighting, ``t ~ U(1e-5, 1)``, mean), or
            the variational bound ``VDMLoss()`` (with a ``LearnedVPSDE``, it trains the schedule too).
        prediction: what the network predicts: ``"eps"``, ``"x0"``, ``"v"``, ``"score"`` or ``"edm"`` (EDM's
            preconditioned denoiser; :mod:`scoresde.parametrization`).
        time_input: network time input, ``"auto"`` (the SDE's reference convention, or EDM's ``¼ ln σ`` for the
            ``edm`` prediction), ``"t"``, ``"log_sigma"``, ``"timestep"`` (``N t - 1`` of a discrete schedule) or
            ``"edm"``.
        sigma_data: EDM's ``σ_d`` for the ``edm`` prediction (0.5 for data in [-1, 1]; an ``edm``-weighted loss
            must use the same).
        lr: Adam learning rate (2e-4 as in the reference configs).
        betas, eps, weight_decay: Adam settings.
        warmup_steps: linear learning-rate warm-up over this many optimizer steps (5000 in the reference).
        ema_decay: decay of the exponential moving average of the weights (Lightning's ``WeightAveraging``); the EMA
            weights are used for validation and sampling and are what the checkpoint's ``state_dict`` holds.
            ``None`` disables it.
        ema_warmup: ramp the decay up as ``min(ema_decay, (1 + n)/(10 + n))`` over the first updates, so that a short
            run's average is not still mostly its random start (``false``: the plain EMA from the first step).
        sampler: the solver :meth:`sample` (and sample callbacks) use: a name from ``scoresde.SOLVERS`` or a
            :class:`~scoresde.solvers.Solver` instance (YAML: ``{class_path: scoresde.solvers.DPMSolverPP,
            init_args: {order: 3}}``).
        sampler_options: options of a named solver, e.g. ``{order: 3}`` (YAML: ``model.sampler_options``).
        sample_steps: default number of solver steps.
        data_shape: shape of one data point, linked from the DataModule by the CLI.
        transform: raw-data → model-space transform, linked from the DataModule (kept for bits/dim and decoding).
        compile: compile the network with ``torch.compile`` (in place, so checkpoints keep their keys).
        label_dropout: for a conditional network fed ``(x, y)`` batches (a DataModule with ``labels: true``), the
            probability that a training example's condition is replaced by the null condition (label ``-1``, or a NaN
            vector), so one model learns both ``s(x, t, y)`` and ``s(x, t, ∅)`` for classifier-free guidance
            (0.1–0.2 is usual; 0 trains a purely conditional model).
        learn_variance: the network also outputs improved DDPM's reverse-variance interpolation (twice the data's
            channels; train with ``loss: scoresde.HybridLoss``; sample with ``ancestral`` and ``variance: learned``).
        autoencoder: a latent diffusion model's first stage (:mod:`scoresde.autoencoder`, e.g. ``ConvAutoencoder``
            with the init_args it was trained with): the score model then learns the scaled latents ``s · E(x)``
            of the (frozen) autoencoder, its network takes the latent shape, and :meth:`sample` decodes. Its weights
            and ``s`` are part of this checkpoint.
        autoencoder_ckpt: the ``scoresde autoencoder fit`` checkpoint the first stage's weights and scale factor are
            read from when training starts (not needed to load this model's own checkpoints).
        low_resolution: stage 1 of a cascade (:mod:`scoresde.cascade`): the model learns the low-resolution view
            ``A x0`` (2×2 average pooling times 2, orthonormal rows) of ``(C, H, W)`` data, shape ``(C, H/2, W/2)``.
        augmentation: stage 2 of a cascade, super-resolution with noise-conditioning augmentation: the largest
            augmentation level ``s_max`` (a time of the SDE). Each training example is conditioned on ``z_s =
            alpha_s A x0 + sigma_s eps`` with its own ``s ~ U[0, s_max]``; the network is a
            :class:`~scoresde.cascade.SuperResolutionNet` (``0``: conditioned on ``A x0`` itself).

    Gradient clipping, mixed precision (``precision: bf16-mixed``) and distribution (``strategy: ddp``,
    ``devices``, ``num_nodes``) are the Trainer's job. The training noise (times ``t``, ``z`` and label dropout) of
    each example comes from its own stream, keyed by ``(run seed, epoch, batch of the epoch)`` and the example's
    position in the global batch, never by the rank: 1 device with batch 8 and 2 devices with batch 4 train the same
    parameters, and a resumed run draws the noise an uninterrupted run would have drawn.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        loss: Loss | None = None,
        prediction: Literal["eps", "x0", "v", "score", "edm"] = "eps",
        time_input: Literal["auto", "t", "log_sigma", "timestep", "edm"] = "auto",
        sigma_data: float = 0.5,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 5000,
        ema_decay: float | None = 0.9999,
        ema_warmup: bool = True,
        sampler: str | Solver = "euler_maruyama",
        sampler_options: dict[str, Any] | None = None,
        sample_steps: int = 500,
        data_shape: Sequence[int] | None = None,
        transform: DataTransform | None = None,
        compile: bool = False,
        label_dropout: float = 0.1,
        learn_variance: bool = False,
        autoencoder: Autoencoder | None = None,
        autoencoder_ckpt: str | None = None,
        low_resolution: bool = False,
        augmentation: float | None = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1) (or be null to disable EMA), got {ema_decay}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        # an unknown name or option fails now, listing the valid ones; an instance (YAML: class_path) is kept as is
        self.sampler = get_solver(sampler, **(sampler_options or {}))
        save_hparams_without_modules(self, inspect.currentframe())
        self.score_model = ScoreModel(
            net, sde, prediction=prediction, time_input=time_input, sigma_data=sigma_data, learn_variance=learn_variance
        )
        self.sde, self.loss = sde, loss if loss is not None else DSMLoss()
        if learn_variance != isinstance(self.loss, HybridLoss):
            raise ValueError(
                "a learned variance is trained by the hybrid loss and only by it: set model.learn_variance: true "
                "together with model.loss: scoresde.HybridLoss (and a network with twice the data's channels)"
            )
        edm = self.loss if isinstance(self.loss, DSMLoss) and self.loss.weighting == "edm" else None
        if prediction == "edm" and edm is not None and edm.sigma_data != sigma_data:
            raise ValueError(
                f"the edm loss assumes sigma_data={edm.sigma_data:g} but the model's preconditioning "
                f"{sigma_data:g}; set model.loss.init_args.sigma_data and model.sigma_data to the same value"
            )
        self.data_shape = tuple(int(s) for s in data_shape) if data_shape is not None else None
        self.transform = transform if transform is not None else DataTransform.identity()
        self.codec: LatentCodec | None = None
        if autoencoder is not None:
            self.codec = LatentCodec(autoencoder).requires_grad_(False)
            if self.data_shape is not None and tuple(autoencoder.data_shape) != self.data_shape:
                raise ValueError(
                    f"the autoencoder takes data of shape {tuple(autoencoder.data_shape)} but the data have shape "
                    f"{self.data_shape}"
                )
            if autoencoder_ckpt is not None:
                from .autoencoder import read_first_stage  # that module builds on this one

                read_first_stage(autoencoder_ckpt, self.codec)
        elif autoencoder_ckpt is not None:
            raise ValueError("model.autoencoder_ckpt needs model.autoencoder: the first stage's class and init_args")
        self._check_cascade(net, sde, low_resolution, augmentation)
        self._run_seed = 0
        self.fitted_prior: GaussianPrior | None = None
        if compile:
            net.compile()  # nn.Module.compile: the module keeps its parameters and state-dict keys

    def _check_cascade(self, net: nn.Module, sde: SDE, low_resolution: bool, augmentation: float | None) -> None:
        """Refuse a cascade stage that cannot be trained as set up, with the setting to change."""
        if not low_resolution and augmentation is None:
            return
        if low_resolution and augmentation is not None:
            raise ValueError("a model is stage 1 (model.low_resolution) or stage 2 (model.augmentation), not both")
        if self.codec is not None:
            raise ValueError("a cascade stage works on pixels; it does not take model.autoencoder")
        shape = self.data_shape
        if shape is not None and (len(shape) != 3 or shape[1] % 2 or shape[2] % 2):
            raise ValueError(f"a cascade needs images (C, H, W) with even H and W, got data of shape {shape}")
        if augmentation is not None:
            if not 0.0 <= augmentation < sde.T:
                raise ValueError(f"model.augmentation (the largest level s_max) must lie in [0, T), got {augmentation}")
            if not isinstance(net, SuperResolutionNet):
                raise ValueError(
                    "a super-resolution model (model.augmentation) takes a scoresde.cascade.SuperResolutionNet "
                    f"around a network with twice the data's channels and cond_dim: 1, got {type(net).__name__}"
                )

    @property
    def cascade_stage(self) -> Literal["low", "super"] | None:
        """``"low"`` for a cascade's stage 1, ``"super"`` for its stage 2, ``None`` for a one-stage model."""
        if self.hparams.get("low_resolution"):
            return "low"
        return "super" if self.hparams.get("augmentation") is not None else None

    def on_fit_start(self) -> None:
        self._run_seed = torch.initial_seed()  # the seed Lightning's seed_everything set (or a random one)
        moments = getattr(getattr(self.trainer, "datamodule", None), "train_moments", None)
        # the diffused Gaussian of the train data, the likelihood's prior at T (pixel-space models only)
        if moments is not None and self.codec is None and self.cascade_stage is None:
            self.fitted_prior = diffused_prior(self.sde, *moments())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.fitted_prior is not None:
            checkpoint["fitted_prior"] = self.fitted_prior.state()
        if checkpoint.get("hyper_parameters", {}).get("autoencoder_ckpt") is not None:
            # the first stage's weights and scale are in this state dict: loading needs no other file
            checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "autoencoder_ckpt": None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "fitted_prior" in checkpoint:
            self.fitted_prior = GaussianPrior.from_state(checkpoint["fitted_prior"])

    @property
    def run_seed(self) -> int:
        """The seed of this run's training noise (``seed_everything``'s, read at the start of fit)."""
        return self._run_seed

    @property
    def net(self) -> nn.Module:
        return self.score_model.net

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape the score model works on: the latent shape of a latent model, the pooled ``(C, H/2, W/2)`` of a
        cascade's stage 1, else ``data_shape``."""
        if self.codec is not None:
            return self.codec.latent_shape
        if self.cascade_stage == "low" and self.data_shape is not None:
            C, H, W = self.data_shape
            return C, H // 2, W // 2
        return self.data_shape

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network, ``None`` for an unconditional one."""
        return self.score_model.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The score ``s_theta(x, t)`` (or ``s_theta(x, t, y)``): ``(B, *D)``."""
        return self.score_model(x, t, y)

    # ---- training ----------------------------------------------------------------------------------------------
    def _check_batch(self, x: Tensor) -> None:
        if self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"batch has data shape {tuple(x.shape[1:])} but the model was set up for {self.data_shape}"
            )

    def _split_batch(self, batch: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
        """``x0`` and the condition ``y`` (``None`` for unlabelled batches); labels for a network without a condition
        embedding are refused with the setting to change."""
        if not isinstance(batch, (list, tuple)):
            return batch, None
        x0, y = batch[0], (batch[1] if len(batch) > 1 else None)
        if y is not None and getattr(self.net, "cond", 0) is None:
            raise ValueError(
                f"the data yield labels but the network {type(self.net).__name__} was built without "
                "num_classes (or cond_dim); set model.net.init_args.num_classes to the DataModule's num_classes"
            )
        return x0, y

    def _drop_labels(self, y: Tensor, noise: PerSampleNoise) -> Tensor:
        """Replace each example's condition by the null one with probability ``label_dropout``."""
        p = self.hparams.get("label_dropout", 0.0)
        if not p:
            return y
        drop = noise.uniform(y.device) < p
        return torch.where(drop.view(-1, *([1] * (y.ndim - 1))), null_condition(y), y)

    def _loss(self, batch: Tensor | tuple[Tensor, ...], stage: str, seed: int) -> tuple[Tensor, int]:
        """The batch's loss and size: training noise per example (:func:`step_noise`), other stages from a generator
        seeded by ``seed`` (the batch index, so that their losses compare across epochs)."""
        x0, y = self._split_batch(batch)
        self._check_batch(x0)
        if self.codec is not None:  # latent diffusion: the score model learns the scaled latents
            with torch.no_grad():
                x0 = self.codec.to_latent(x0)
        if self.cascade_stage == "low":
            x0 = downsample(x0)
        if self.cascade_stage == "super" and y is not None:
            raise ValueError(
                "a super-resolution model is conditioned on the low-resolution image; set data.labels: false"
            )
        generator, noise = None, None
        if stage == "train":
            world, rank = (self.trainer.world_size, self.global_rank) if self._trainer is not None else (1, 0)
            noise = step_noise(seed, x0.shape[0], rank, world, x0.device)
        else:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        score_fn: ScoreFn = self.score_model
        if y is not None:
            y = self._drop_labels(y, noise) if noise is not None else y
            score_fn = partial(self.score_model, y=y)
        if self.cascade_stage == "super":
            score_fn = partial(self.score_model, y=self._augmented_condition(x0, noise, generator))
        return self.loss(score_fn, self.sde, x0, generator=generator, noise=noise), x0.shape[0]

    def _augmented_condition(
        self, x0: Tensor, noise: PerSampleNoise | None, generator: torch.Generator | None
    ) -> Tensor:
        """Stage 2's training condition ``pack_condition(z_s, s)``: ``z_s = alpha_s A x0 + sigma_s eps`` with ``s ~
        U[0, s_max]``, both drawn from the example's stream (``noise``) or from ``generator``: ``(B, C H W / 4 + 1)``."""
        s_max, B = float(self.hparams["augmentation"]), x0.shape[0]
        eps: Callable[[Tensor], Tensor]
        if noise is not None:
            u, eps = noise.uniform(x0.device), noise
        else:
            u = torch.rand(B, generator=generator, device=x0.device, dtype=torch.float64)
            eps = partial(_normal_like, generator=generator)
        s = u * s_max
        return pack_condition(augment_per_example(downsample(x0), s, self.sde, eps), s.to(x0.dtype))

    def _shared_step(self, batch: Tensor | tuple[Tensor, ...], stage: str, seed: int) -> Tensor:
        loss, size = self._loss(batch, stage, seed)
        if stage != "train":
            self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, batch_size=size, sync_dist=True)
        elif self._trainer is None or self._logs_this_step():
            # only on the steps Lightning writes to the logger and the last: logging costs ~1 ms, a sizeable share
            # of a toy step
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _logs_this_step(self) -> bool:
        step, trainer = self.global_step, self.trainer
        every = int(getattr(trainer, "log_every_n_steps", 50))  # set at run time by Lightning's logger connector
        return step % every == 0 or step + 1 == trainer.max_steps

    @torch.no_grad()
    def validation_loss(self, loader: Iterable[Any]) -> float:
        """Mean loss over ``loader``'s raw batches (mapped to model space by the run's DataModule), in eval mode and
        with the seeds ``validation_step`` uses: the validation loss of the current weights, outside the loop."""
        dm = getattr(self._trainer, "datamodule", None)  # set at run time by Lightning
        was_training = self.training
        self.eval()
        total, count = 0.0, 0
        try:
            for batch_idx, batch in enumerate(loader):
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                batch = dm.on_after_batch_transfer(batch, 0) if dm is not None else batch
                loss, size = self._loss(batch, "val", batch_idx)
                total, count = total + float(loss) * size, count + size
        finally:
            self.train(was_training)
        return total / max(count, 1)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", seed=self._noise_seed(batch_idx))

    def _noise_seed(self, batch_idx: int) -> int:
        return step_seed(self._run_seed, self.current_epoch, batch_idx)

    def validation_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        # A fixed seed per batch makes validation (and test) losses comparable across epochs.
        return self._shared_step(batch, "val", seed=batch_idx)

    def test_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test", seed=batch_idx)

    def configure_optimizers(self) -> Any:
        h = self.hparams
        betas = (float(h["betas"][0]), float(h["betas"][1]))
        opt = torch.optim.Adam(self.parameters(), lr=h["lr"], betas=betas, eps=h["eps"], weight_decay=h["weight_decay"])
        return with_warmup(opt, h["warmup_steps"])

    def configure_callbacks(self) -> list[L.Callback]:
        if self.hparams["ema_decay"] is None:
            return []
        # Lightning's weight-averaging callback (swaps the average in for validation, saves it as the checkpoint's
        # state_dict) with PyTorch's fused foreach EMA: ~10x cheaper per step than the per-parameter update.
        decay = self.hparams["ema_decay"]
        average = ema_warmup_fn(decay) if self.hparams.get("ema_warmup", False) else get_ema_multi_avg_fn(decay)
        return [EMAWeightAveraging(multi_avg_fn=average)]

    # ---- sampling ----------------------------------------------------------------------------------------------
    def default_solver(self) -> tuple[str | Solver, dict[str, Any]]:
        """The model's ``sampler`` as ``(name, options)`` when it was given by name (so callers may override single
        options), else ``(instance, {})``."""
        if isinstance(self.hparams["sampler"], str):
            return self.hparams["sampler"], dict(self.hparams.get("sampler_options") or {})
        return self.sampler, {}

    @torch.no_grad()
    def _steps(self, steps: int | None, grid: object) -> int | None:
        """``steps``, else the model's ``sample_steps``, except on a given grid (a file or tensor has its own)."""
        if steps is not None:
            return steps
        given = isinstance(grid, Tensor) or (isinstance(grid, str | Path) and is_grid_file(grid))
        return None if given else int(self.hparams["sample_steps"])

    def sample(
        self,
        n: int,
        *,
        solver: str | Solver | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        labels: Tensor | None = None,
        guidance_scale: float = 1.0,
        score_transform: Callable[[ScoreFn], ScoreFn] | None = None,
        condition: Tensor | None = None,
        **options: Any,
    ) -> SampleResult:
        """Draw ``n`` samples in model space with the current weights (the EMA weights after training); a latent model
        samples latents and returns them decoded.

        ``solver=None`` uses the model's ``sampler`` with its ``sampler_options``; ``options`` go to the solver or to
        :func:`scoresde.sample` (``seeds``, ``grid``, ``denoise``, ``t_end``, ...). A class-conditional model samples
        the classes ``labels: (n,)`` with classifier-free guidance of scale ``guidance_scale`` (1: conditional;
        ``-1`` labels or ``labels=None``: unconditional). ``score_transform(score_fn) -> score_fn`` is applied last
        (e.g. classifier guidance or thresholding from :mod:`scoresde.guidance`). A super-resolution model (a
        cascade's stage 2) samples given ``condition = pack_condition(z_s, s)``, ``(n, C H W / 4 + 1)``
        (:func:`scoresde.cascade.cascade_sample` runs both stages).
        """
        if self.data_shape is None:
            raise ValueError("data_shape is unknown: pass data_shape=... (the CLI links it from the DataModule)")
        score_fn: Any = self.score_model
        if (condition is not None) != (self.cascade_stage == "super"):
            raise ValueError("condition= is the low-resolution image of a super-resolution model, and it needs one")
        if condition is not None:
            score_fn = partial(self.score_model, y=condition.to(self.device))
        if labels is not None:
            if self.num_classes is None:
                raise ValueError("labels were given but this model is unconditional (its network has no num_classes)")
            labels = torch.as_tensor(labels, device=self.device)
            if labels.shape != (n,):
                raise ValueError(f"labels must hold one class per sample, shape ({n},), got {tuple(labels.shape)}")
            score_fn = classifier_free(self.score_model, labels, guidance_scale)
        if score_transform is not None:
            score_fn = score_transform(score_fn)
        was_training = self.training
        self.eval()
        try:
            # the model's sampler unless one is given, or a budget (nfe) picks the solver, grid and steps
            model_default = solver is None and options.get("nfe") is None
            default, defaults = self.default_solver() if model_default else (solver, {})
            res = sample(
                score_fn,
                self.sde,
                (n, *(self.sample_shape or ())),
                solver=default,
                steps=self._steps(steps, options.get("grid")) if options.get("nfe") is None else steps,
                generator=generator,
                device=self.device,
                progress=progress,
                **{**defaults, **options},
            )
            if self.codec is not None:
                with torch.no_grad():
                    res = dataclasses.replace(res, x=self.codec.to_data(res.x))
            return res
        finally:
            self.train(was_training)
