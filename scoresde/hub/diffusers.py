"""diffusers UNets and their scheduler configs as scoresde models (diffusers is an optional extra).

A diffusers eps-, v- or sample-prediction network ``unet(x, n)`` trained on a discrete DDPM schedule becomes
``ScoreModel(net, DiscreteVPSDE(betas), prediction)``: timestep ``n`` sits at ``t_n = (n + 1)/N`` and the network
is fed the continuous timestep ``N t - 1`` (DPM-Solver's convention for discrete models), so that

    model(x, t_n) = -unet(x, n).sample / sigma_n          (eps prediction; sigma_n² = 1 - alphas_cumprod[n])

and every solver of the registry, the likelihood and guidance apply. The beta table is rebuilt in float64 from the
scheduler config (diffusers keeps it in float32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..parametrization import ScoreModel
from ..sde import DiscreteVPSDE
from ..sde.discrete import cosine_betas, linear_betas, scaled_linear_betas

__all__ = ["from_diffusers", "DiffusersUNet", "discrete_sde_from_config", "find_diffusers_dirs"]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as ``net(x, c_noise[, y])`` (``c_noise`` the continuous timestep).

    ``data_shape`` is ``(C, H, W)``; ``num_classes`` is the UNet's ``num_class_embeds`` (``None``: unconditional).
    A network that also predicts its variance (``out_channels = 2 C``) returns its first ``C`` channels.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        cfg: Any = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size,) * 2
        self.data_shape = (int(cfg.in_channels), *(int(s) for s in size))
        self.num_classes: int | None = cfg.num_class_embeds
        self.cond = None if self.num_classes is None else "class"  # ScoreModule refuses labels when cond is None

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        if y is not None:
            if self.num_classes is None:
                raise ValueError("this diffusers UNet is unconditional (no num_class_embeds); sample it without labels")
            if bool((y < 0).any()):
                raise ValueError(
                    "this diffusers UNet has no null class (label -1), so classifier-free guidance cannot run on it; "
                    "give class labels 0 … num_classes - 1"
                )
        out: Tensor = self.unet(x, c_noise, class_labels=y).sample
        return out[:, : self.data_shape[0]]


def discrete_sde_from_config(config: dict[str, Any]) -> DiscreteVPSDE:
    """The :class:`DiscreteVPSDE` of a diffusers scheduler config (``scheduler_config.json``), in float64."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            "the scheduler rescales its betas to zero terminal SNR (alphas_cumprod[-1] = 0): a VP SDE cannot end at "
            "infinite noise, so this schedule is not supported"
        )
    N = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        return DiscreteVPSDE(torch.tensor(config["trained_betas"], dtype=torch.float64))
    if schedule == "linear":
        return DiscreteVPSDE(linear_betas(N, start, end))
    if schedule == "scaled_linear":
        return DiscreteVPSDE(scaled_linear_betas(N, start, end))
    if schedule == "squaredcos_cap_v2":
        return DiscreteVPSDE(cosine_betas(N))
    if schedule == "sigmoid":
        return DiscreteVPSDE(torch.sigmoid(torch.linspace(-6, 6, N, dtype=torch.float64)) * (end - start) + start)
    raise ValueError(
        f"beta_schedule {schedule!r} is not supported; use linear, scaled_linear, squaredcos_cap_v2, sigmoid or "
        "trained_betas"
    )


def find_diffusers_dirs(path: str | Path, scheduler: str | Path | None = None) -> tuple[Path, Path]:
    """The UNet directory and the scheduler config of ``path``: a pipeline directory (``unet/`` and
    ``scheduler/``) or a model directory holding ``config.json`` and ``scheduler_config.json``; ``scheduler`` (a
    config file or its directory) overrides the one found there."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (give a diffusers pipeline or UNet directory)")
    if (root / "unet" / "config.json").is_file():
        unet_dir, sched = root / "unet", root / "scheduler" / "scheduler_config.json"
    elif (root / "config.json").is_file():
        unet_dir, sched = root, root / "scheduler_config.json"
    else:
        raise FileNotFoundError(
            f"{root} holds neither unet/config.json (a pipeline) nor config.json (a UNet2DModel saved with "
            "save_pretrained)"
        )
    if scheduler is not None:
        sched = Path(scheduler) / "scheduler_config.json" if Path(scheduler).is_dir() else Path(scheduler)
    if not sched.is_file():
        raise FileNotFoundError(
            f"{sched} is missing: the noise schedule comes from the scheduler config; save the training scheduler "
            "there (scheduler.save_pretrained(...)) or pass scheduler=PATH"
        )
    return unet_dir, sched


def from_diffusers(
    path: str | Path, *, scheduler: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> ScoreModel:
    """A :class:`~scoresde.ScoreModel` around the diffusers ``UNet2DModel`` saved at ``path``.

    Args:
        path: a pipeline directory (``unet/``, ``scheduler/``) or a ``UNet2DModel.save_pretrained`` directory with a
            ``scheduler_config.json`` beside its ``config.json``. Read from local files only.
        scheduler: a scheduler config (file or directory) to use instead of the one found at ``path``.
        dtype: the network's parameter dtype.

    The model's ``.sde`` is the scheduler's :class:`DiscreteVPSDE`; its prediction follows ``prediction_type``
    (``epsilon`` → ``eps``, ``v_prediction`` → ``v``, ``sample`` → ``x0``); class labels pass through as ``y``.
    """
    try:
        from diffusers import UNet2DModel
    except ImportError as err:  # an optional extra
        raise ImportError("loading diffusers checkpoints needs diffusers: pip install 'scoresde[diffusers]'") from err
    unet_dir, sched = find_diffusers_dirs(path, scheduler)
    config = json.loads(sched.read_text())
    unet_config = json.loads((unet_dir / "config.json").read_text())
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(
            f"{unet_dir} holds a {unet_config['_class_name']}; scoresde.hub.from_diffusers loads UNet2DModel networks"
        )
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not one of {', '.join(PREDICTION_TYPES)}")
    sde = discrete_sde_from_config(config)
    unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
    model = ScoreModel(DiffusersUNet(unet), sde, prediction=PREDICTION_TYPES[kind], time_input="timestep")  # type: ignore[arg-type]
    return model.eval()
