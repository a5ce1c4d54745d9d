"""``scoresde inpaint``: fill in masked parts (or the colours) of dataset images with an unconditional checkpoint.

    scoresde inpaint --ckpt runs/digits_vp/checkpoints/last.ckpt --mask right --n 16 --out inpaint/
    scoresde inpaint --ckpt last.ckpt --mask right --method repaint --resample 10 --steps 250 --out repaint/
    scoresde inpaint --ckpt last.ckpt --mask right --method smc --particles 16 --steps 250 --out smc/
    scoresde inpaint --ckpt last.ckpt --data experiments/cifar10/vp_ddpmpp_cont.yaml --mask mask.png --out holes/
    scoresde inpaint --ckpt last.ckpt --task colorize --out colour/

The images are the first ``--n`` of a split (``--split``, default test) of the checkpoint's DataModule (or ``--data``).
``--mask`` names the *missing* half (``left``, ``right``, ``top``, ``bottom``) or the ``center`` square, or is a file
(``.npy``, ``.npz``, ``.png``/``.jpg``) of shape ``(H, W)`` or ``(C, H, W)`` whose nonzero (white) entries are *known*.
Work is split in shards written atomically through Lightning's predict loop, like ``scoresde sample``: a rerun
resumes, and ``--devices`` spreads it. The output folder gets ``inpainted.npz`` (``originals``, ``samples`` in the
dataset's units, ``mask``) and ``inpainted.png`` (originals, what was observed, the completions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ... import plotting
from ..._utils import save_npz
from ...inverse import GrayObservation, MaskObservation, Observation, check_smc_options, inpaint, steps_per_step
from ...noise import derive_seeds
from ...solvers import SOLVERS, get_solver
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
    load_data,
    load_model,
    manifest_record,
    option,
    parse_config,
    prepare_out,
    run_resumable,
    split_of,
)

__all__ = ["InpaintConfig", "inpaint_command", "run_inpainting", "load_mask", "NAMED_MASKS"]

NAMED_MASKS = ("left", "right", "top", "bottom", "center")


@dataclass(kw_only=True)
class InpaintConfig(DeviceOptions):
    """The options of ``scoresde inpaint`` (every one that changes results goes into the run manifest)."""

    ckpt: str = option(help=CKPT_HELP)
    model_config: str | None = option(None, MODEL_CONFIG_HELP, "--model-config")
    data: str | None = option(None, "DataModule (experiment YAML, class name); default: the checkpoint's")
    split: str = option("test", "train, val or test")
    n: int = option(16, "the first N images of the split")
    task: str = option("inpaint", "inpaint (with --mask) or colorize (keeps the grey values)")
    mask: str = option("right", f"missing part: {', '.join(NAMED_MASKS)}; or a file (nonzero = known)")
    method: str = option("replacement", "replacement, repaint or smc (SMC-Diff particle filtering)")
    resample: int | None = option(None, "RePaint jumps per step (default 10)")
    particles: int | None = option(None, "SMC particles per image (default 16); each score call sees batch x K rows")
    ess_threshold: float = option(0.5, "SMC resamples when the effective sample size < this x K", "--ess-threshold")
    solver: str = option("euler_maruyama", f"one of: {', '.join(sorted(SOLVERS))}")
    steps: int = option(500, "solver steps")
    options: dict[str, Any] = option({}, "solver options, or pass them as --name value")
    seed: int = option(0, "image j uses derive_seeds(seed, j)")
    batch_size: int = option(64, "images per batch and per shard", "--batch-size")
    block: int = option(64, BLOCK_HELP)
    out: str = option(help="output directory", result=False)


def load_mask(spec: str, data_shape: Sequence[int]) -> Tensor:
    """``--mask`` → a 0/1 float mask of shape ``data_shape`` ``(C, H, W)`` (1: known)."""
    shape = tuple(int(s) for s in data_shape)
    if len(shape) != 3:
        raise ValueError(f"--mask applies to images (C, H, W); this model's data have shape {shape}")
    C, H, W = shape
    known = torch.ones(H, W)
    if spec in NAMED_MASKS:
        if spec == "left":
            known[:, : W // 2] = 0
        elif spec == "right":
            known[:, W // 2 :] = 0
        elif spec == "top":
            known[: H // 2] = 0
        elif spec == "bottom":
            known[H // 2 :] = 0
        else:
            known[H // 4 : H - H // 4, W // 4 : W - W // 4] = 0
        return known.expand(C, H, W).clone()
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--mask {spec!r} is neither a named mask ({', '.join(NAMED_MASKS)}) nor a file")
    if path.suffix in (".npy", ".npz"):
        loaded = np.load(path, allow_pickle=False)
        arr = loaded if isinstance(loaded, np.ndarray) else loaded[next(iter(loaded.keys()))]
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    m = torch.from_numpy(np.asarray(arr) != 0).float()
    if m.shape == (H, W):
        m = m.expand(C, H, W).clone()
    if m.shape != (C, H, W):
        raise ValueError(f"--mask {spec}: shape {tuple(m.shape)}, expected ({H}, {W}) or ({C}, {H}, {W})")
    if not 0 < int(m.sum()) < m.numel():
        raise ValueError(f"--mask {spec}: the mask must mark some, but not all, entries as known (nonzero)")
    return m


def _observation(cfg: InpaintConfig, data_shape: Sequence[int]) -> tuple[Observation, Tensor]:
    """The observation and a mask for pictures (1: shown as observed)."""
    if cfg.task == "colorize":
        if len(data_shape) != 3 or data_shape[0] < 2:
            raise ValueError(
                f"--task colorize needs colour images (C >= 2, H, W); the data have shape {tuple(data_shape)}"
            )
        return GrayObservation(), torch.ones(*data_shape)
    if cfg.task != "inpaint":
        raise ValueError(f"--task must be inpaint or colorize, got {cfg.task!r}")
    mask = load_mask(cfg.mask, data_shape)
    return MaskObservation(mask), mask


class InpaintingTask(ShardTask):
    """Completes ``raw[j]`` with the seed ``derive_seeds(seed, j)`` for ``Trainer.predict``, a shard at a time."""

    def __init__(
        self, model: ScoreModule, raw: Tensor, observation: Observation, cfg: InpaintConfig, out: Path
    ) -> None:
        super().__init__(len(raw), cfg.batch_size, out)
        self.model, self.raw, self.observation, self.cfg = model, raw, observation, cfg

    def _smc_options(self) -> dict[str, Any]:
        if self.cfg.method != "smc":
            return {}
        return {"particles": self.cfg.particles, "ess_threshold": self.cfg.ess_threshold}

    def draw(self, start: int, count: int) -> dict[str, np.ndarray]:
        raw = self.raw[start : start + count]
        # the data in model space (bin centres; the observation does not need dequantization noise)
        y = self.model.transform.forward(raw, u=torch.full(raw.shape, 0.5)).to(self.device)
        res = inpaint(
            self.model.score_model,
            self.model.sde,
            y,
            self.observation,
            method=self.cfg.method,
            resample=self.cfg.resample,
            solver=self.cfg.solver,
            **self._smc_options(),
            steps=self.cfg.steps,
            solver_options=self.cfg.options,
            seeds=derive_seeds(self.cfg.seed, start, count, device=self.device),
            device=self.device,
        )
        return {"samples": self.model.transform.inverse(res.x.cpu()).numpy(), "nfe": np.asarray(res.nfe)}


def run_inpainting(cfg: InpaintConfig) -> Path | None:
    """Complete the first ``cfg.n`` images of a split under ``cfg.out`` (resuming); ``inpainted.npz`` on rank 0."""
    check_sizes(cfg.n, cfg.batch_size)
    steps_per_step(cfg.method, cfg.resample)  # a bad --method/--resample pairing fails before any work
    check_smc_options(cfg.method, cfg.particles, cfg.ess_threshold)
    get_solver(cfg.solver, **cfg.options)  # a bad name or option fails before any work
    spec = CheckpointSpec.parse(cfg.ckpt)
    model = load_model(cfg.ckpt, block=cfg.block, model_config=cfg.model_config)
    if model.data_shape is None:
        raise ValueError(f"{cfg.ckpt} records no data shape; train it with `scoresde fit`")
    observation, mask = _observation(cfg, model.data_shape)
    raw = split_of(load_data(cfg.data, cfg.ckpt), cfg.split)[: cfg.n]
    if tuple(raw.shape[1:]) != tuple(model.data_shape):
        raise ValueError(
            f"the data have shape {tuple(raw.shape[1:])} but the model was trained on {tuple(model.data_shape)}"
        )
    out = prepare_out(cfg.out)
    record = manifest_record(cfg, n=len(raw), ckpt=str(spec.path.resolve()), ckpt_sha256=spec.digest())
    task = InpaintingTask(model, raw, observation, cfg, out)
    merged = run_resumable(cfg, task, out / "inpaint_config.json", record, "completions")
    return None if merged is None else _merge(model, raw, mask, cfg, out, merged)


def _merge(
    model: ScoreModule, raw: Tensor, mask: Tensor, cfg: InpaintConfig, out: Path, merged: dict[str, np.ndarray]
) -> Path:
    samples = merged["samples"]
    final = out / "inpainted.npz"
    save_npz(final, {"originals": raw.numpy(), "samples": samples, "mask": mask.numpy(), "nfe": int(merged["nfe"][0])})
    originals, completed = (
        model.transform.raw_to_unit(raw[:64]),
        model.transform.raw_to_unit(torch.as_tensor(samples[:64])),
    )
    if cfg.task == "colorize":
        observed = originals.mean(1, keepdim=True).expand_as(originals)
    else:
        observed = originals * mask + 0.5 * (1 - mask)  # unknown pixels in mid grey
    method = f"smc, {cfg.particles or 16} particles" if cfg.method == "smc" else cfg.method
    name = cfg.task if cfg.task == "colorize" else f"{method}, {cfg.mask} masked"
    plotting.image_panels(
        [("originals", originals), ("observed", observed), ("completed", completed)],
        out / "inpainted.png",
        title=f"{len(samples)} images, {name}",
    )
    print(f"wrote {len(samples)} completions ({cfg.task}, {cfg.method}) to {final}")
    return final


def inpaint_command(argv: Sequence[str]) -> Path | None:
    """``scoresde inpaint ...``; ``argv`` excludes the word ``inpaint``."""
    parser = build_parser(InpaintConfig, "scoresde inpaint", __doc__ or "")
    return run_inpainting(parse_config(InpaintConfig, parser, argv, solver_options=True))
