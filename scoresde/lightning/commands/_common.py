"""What every command shares: its typed config and the parser built from it, the run manifest derived from that config,
loading what ``scoresde fit`` wrote, the device options and predict Trainer, and the one resumable-work machinery.

Resumable work: a command's items ``0 … n-1`` are cut into shards of ``batch_size``; shard ``k`` holds items
``[k·bs, min((k + 1)·bs, n))`` and is written atomically to ``<folder>/shard_k.npz`` with their ``index`` by the rank
that computed it. A rerun skips the shards already on disk, so an interrupted run loses at most the shards in flight,
and ``--devices``/``--strategy``/``--num_nodes`` spread the shards over processes. The only collective is one barrier at
the end, so ranks may take different times per shard (adaptive solvers). Each item draws its randomness from its own
index, so results do not depend on the batch size (beyond float rounding), the device count or resumption.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib
import json
import math
import os
import signal
import sys
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import lightning as L

from ..._utils import atomic_path, file_digest, save_npz
from ...parametrization import ScoreModel
from ...transforms import DataTransform
from ..classifier import ClassifierModule
from ..cluster import check_devices
from ..data import TensorDataModule
from ..module import ScoreModule
from ..progress import progress_callbacks

__all__ = [
    "option",
    "DeviceOptions",
    "build_parser",
    "parse_config",
    "manifest_record",
    "check_manifest",
    "record_run",
    "load_model",
    "CheckpointSpec",
    "MODEL_CONFIG_HELP",
    "load_classifier",
    "load_data",
    "split_of",
    "predict_trainer",
    "check_sizes",
    "ShardTask",
    "shard_path",
    "run_shards",
    "read_shards",
]


# ---- typed configs and their parsers -----------------------------------------------------------------------------
def option(default: Any = MISSING, help: str = "", *flags: str, result: bool = True) -> Any:
    """A config field: its default (mutable ones are copied per instance), ``--help`` text, extra flags (e.g.
    ``"--batch-size"``) and whether it changes results (``result=False`` keeps it out of the run manifest)."""
    metadata = {"help": help, "flags": flags, "result": result}
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class DeviceOptions:
    """How a command spreads its work over devices and machines (Lightning's options), and its progress bar."""

    accelerator: str = option("auto", "cpu, gpu, ... (default: a GPU if there is one)", result=False)
    devices: str = option("1", "devices per node (e.g. 4, or auto)", result=False)
    num_nodes: int = option(1, "machines (torch.distributed / SLURM)", "--num-nodes", result=False)
    strategy: str = option("auto", "e.g. ddp; ddp_fork inside notebooks and tests", result=False)
    progress: bool = option(True, "show a progress bar", result=False)


def build_parser(config: type, prog: str, doc: str) -> ArgumentParser:
    """A parser with one ``--name`` option per field of the dataclass ``config`` (types, defaults and help from it),
    plus ``--config`` for a YAML file holding any of them; the first paragraph of ``doc`` describes the command."""
    p = ArgumentParser(prog=prog, description=doc.split("\n\n")[0], default_meta=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    hints = typing.get_type_hints(config)
    device_fields = {f.name for f in dataclasses.fields(DeviceOptions)}
    for f in sorted(dataclasses.fields(config), key=lambda f: f.name in device_fields):  # the command's own first
        kw: dict[str, Any] = {"type": hints[f.name], "help": f.metadata.get("help", "")}
        if f.default is not MISSING:
            kw["default"] = f.default
        elif f.default_factory is not MISSING:
            kw["default"] = f.default_factory()
        else:
            kw["required"] = True
        p.add_argument(f"--{f.name}", *f.metadata.get("flags", ()), **kw)
    return p


C = typing.TypeVar("C")


def parse_config(config: type[C], parser: ArgumentParser, argv: Sequence[str], *, solver_options: bool = False) -> C:
    """``argv`` parsed into an instance of ``config``. With ``solver_options``, unknown ``--name value`` (or
    ``--solver.name value``) pairs are gathered into the config's ``options`` field as solver options."""
    argv, extra = _split_solver_options(argv, parser) if solver_options else (list(argv), {})
    values = parser.parse_args(argv).as_dict()
    values.pop("config", None)
    if solver_options:
        values["options"] = {**(values.get("options") or {}), **extra}
    return config(**values)


def _split_solver_options(argv: Sequence[str], parser: ArgumentParser) -> tuple[list[str], dict[str, Any]]:
    """Separate ``--name value`` (or ``--solver.name value``) pairs that are not the command's own options: they are
    solver options."""
    known = {s for a in parser._actions for s in a.option_strings}
    rest: list[str] = []
    options: dict[str, Any] = {}
    argv, i = list(argv), 0
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
                raise ValueError(f"option {arg} needs a value")
            name = key[2:].removeprefix("solver.").replace("-", "_")
            options[name] = _parse_value(value)
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


def manifest_record(cfg: Any, **resolved: Any) -> dict[str, Any]:
    """The run manifest of a command: every config field that changes results (all but ``result=False`` ones), plus
    ``resolved`` values (defaults filled in from the checkpoint, the checkpoint's digest)."""
    record = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("result", True)}
    return json.loads(json.dumps({**record, **resolved}))


def check_manifest(manifest: Path, record: dict[str, Any], what: str) -> None:
    """Refuse to resume into a folder whose ``manifest`` records other settings than ``record`` (names the keys)."""
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old != record:
            diff = sorted(k for k in {*record, *old} if old.get(k) != record.get(k))
            raise ValueError(
                f"{manifest.parent} holds {what} with other settings ({', '.join(diff)} differ); use a new --out"
            )


def record_run(manifest: Path, record: dict[str, Any], is_global_zero: bool) -> None:
    """Write the manifest of a new run (rank 0 only, atomically); :func:`check_manifest` reads it on a rerun."""
    if is_global_zero and not manifest.exists():
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(record, indent=2))


# ---- loading what `scoresde fit` wrote, or a pretrained model of another library ---------------------------------
CKPT_HELP = (
    "checkpoint written by `scoresde fit` (EMA weights), or a pretrained model: diffusers:DIR (a diffusers pipeline "
    "or UNet directory), score_sde:FILE.pth (with --model-config), edm:FILE.pkl; a directory or a .pth / .pkl file "
    "is recognised without the prefix"
)
MODEL_CONFIG_HELP = (
    "the configuration a score_sde_pytorch checkpoint was trained with (vp_ddpmpp_cont, subvp_ddpmpp_cont, "
    "ve_ncsnpp_cont, their _deep_ variants, or the reference's vp/cifar10_ddpmpp_continuous, ...)"
)
PRETRAINED_FORMATS = ("diffusers", "score_sde", "edm")


@dataclass(frozen=True)
class CheckpointSpec:
    """What ``--ckpt`` names: a ``format`` (``lightning``, ``diffusers``, ``score_sde``, ``edm``) and a path."""

    format: str
    path: Path

    @classmethod
    def parse(cls, ckpt: str | Path) -> CheckpointSpec:
        text = str(ckpt)
        prefix, sep, rest = text.partition(":")
        if sep and prefix in PRETRAINED_FORMATS:
            return cls(prefix, Path(rest))
        path = Path(text)
        if path.is_dir():
            return cls("diffusers", path)
        return cls({".pth": "score_sde", ".pkl": "edm"}.get(path.suffix, "lightning"), path)

    def digest(self) -> str:
        """SHA-256 of the checkpoint file, or of a directory's files (names and contents)."""
        if not self.path.exists():
            raise FileNotFoundError(f"checkpoint {self.path} not found")
        if self.path.is_file():
            return file_digest(self.path)
        h = hashlib.sha256()
        for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
            h.update(f.relative_to(self.path).as_posix().encode() + file_digest(f).encode())
        return h.hexdigest()


def _pretrained(spec: CheckpointSpec, model_config: str | None) -> ScoreModule:
    """A pretrained model of another library as a :class:`ScoreModule` (no optimizer, no EMA of its own), with the
    data transform its library trains with: 8-bit images in ``[-1, 1]`` (``[0, 1]`` for the VE NCSN++)."""
    from ... import hub

    if spec.format == "diffusers":
        model: ScoreModel = hub.from_diffusers(spec.path)
    elif spec.format == "score_sde":
        if model_config is None:
            raise ValueError(
                f"{spec.path}: a score_sde_pytorch checkpoint does not record its SDE; pass --model-config NAME "
                f"({', '.join(hub.SCORE_SDE_CONFIGS)})"
            )
        model = hub.from_score_sde(spec.path, model_config)
    else:
        hub.from_edm(spec.path)  # reads the file safely, then says in one line why it cannot be rebuilt
    net: Any = model.net  # DiffusersUNet or NCSNpp: both know their data shape
    shape = tuple(int(s) for s in net.data_shape)
    low = 0.0 if getattr(net, "centered", True) is False else -1.0
    return ScoreModule(
        net,
        model.sde,
        prediction=model.prediction,
        time_input=model.time_input,
        sigma_data=model.sigma_data,
        ema_decay=None,
        data_shape=shape,
        transform=DataTransform.discrete(256, low, 1.0),
    )


def _check_ckpt(ckpt: str | Path) -> Path:
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; `scoresde fit` writes them under <default_root_dir>/checkpoints/"
        )
    return path


def read_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a Lightning ``.ckpt`` file, or a ``ValueError`` that says what the file is instead
    (missing, truncated, not a checkpoint). Loads pickled objects: give only checkpoints you trust (your own runs)."""
    path = _check_ckpt(ckpt)
    try:
        # mmap: the tensors stay on disk, so checking a checkpoint's kind before Lightning loads it costs no
        # second full read of the weights
        loaded = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises many kinds here (RuntimeError, UnpicklingError, EOFError, ...)
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, or another kind of file: {err}); "
            "give a .ckpt written by `scoresde fit`"
        ) from err
    if not isinstance(loaded, dict) or "state_dict" not in loaded:
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no state_dict); give a .ckpt written by `scoresde fit`"
        )
    return loaded


def _is_score_checkpoint(hparams: dict[str, Any]) -> bool:
    return "prediction" in hparams or "label_dropout" in hparams


BLOCK_HELP = (
    "the network takes exactly this many rows per call (the last block padded), so that results do not depend on "
    "--batch-size or the device count; 0: the batch as it is (the same up to float rounding)"
)
"""The help of the ``--block`` option of the commands that sample (``ScoreModel.block``)."""


def load_model(
    ckpt: str | Path,
    device: torch.device | str = "cpu",
    block: int = 0,
    model_config: str | None = None,
    latent: bool = False,
    cascade: bool = False,
) -> ScoreModule:
    """The :class:`ScoreModule` of a checkpoint (its state dict holds the EMA weights) or of a pretrained model
    (:class:`CheckpointSpec`; ``model_config`` for score_sde_pytorch files), in eval mode; ``block > 0`` makes its
    network calls take exactly that many rows (``ScoreModel.block``: batch-size independent results). A latent
    diffusion model is refused unless the command handles one (``latent=True``), and so is a stage of a cascade
    (``cascade=True``)."""
    if block < 0:
        raise ValueError(f"--block must be >= 0 (0: no blocks), got {block}")
    spec = CheckpointSpec.parse(ckpt)
    if spec.format != "lightning":
        module = _pretrained(spec, model_config).to(device)
        module.score_model.block = block or None
        return module.eval()
    hparams = read_checkpoint(ckpt).get("hyper_parameters", {})
    if not _is_score_checkpoint(hparams):
        raise ValueError(
            f"{ckpt} is not a score model checkpoint (a classifier's?); --ckpt takes one written by `scoresde fit`"
        )
    # compile=False: sampling and likelihood run uncompiled (compiling is a training-time option)
    model = ScoreModule.load_from_checkpoint(_check_ckpt(ckpt), map_location=device, weights_only=False, compile=False)
    if model.codec is not None and not latent:
        raise ValueError(
            f"{ckpt} is a latent diffusion model (it holds an autoencoder); this command works on pixel-space models "
            "so far. `scoresde sample` and `scoresde evaluate` draw from it and `scoresde likelihood` reports its density"
        )
    if model.cascade_stage is not None and not cascade:
        raise ValueError(
            f"{ckpt} is a stage of a cascade (a {'low-resolution' if model.cascade_stage == 'low' else 'super-resolution'} "
            "model); this command works on one-stage models. `scoresde sample --ckpt STAGE2 --stage1 STAGE1` draws "
            "from the cascade"
        )
    model.score_model.block = block or None
    return model.eval()


def load_classifier(ckpt: str | Path, device: torch.device | str = "cpu") -> ClassifierModule:
    """The :class:`~scoresde.lightning.ClassifierModule` of a ``scoresde classifier fit`` checkpoint, in eval mode."""
    path = Path(ckpt)
    if _is_score_checkpoint(read_checkpoint(path).get("hyper_parameters", {})):
        raise ValueError(
            f"{path} is a score model checkpoint; --classifier takes one written by `scoresde classifier fit`"
        )
    return ClassifierModule.load_from_checkpoint(path, map_location=device, weights_only=False).eval()


def _spec(data: str) -> dict[str, Any]:
    """``--data`` → ``{"class_path": ..., "init_args": {...}}`` from an experiment YAML (its ``data:`` section), a
    YAML file holding that section, a class name (``DigitsDataModule``) or an inline YAML mapping."""
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: no such file")
        loaded = yaml.safe_load(path.read_text())
        loaded = loaded.get("data", loaded) if isinstance(loaded, dict) else loaded
    else:
        loaded = yaml.safe_load(data)
    if isinstance(loaded, str):
        loaded = {"class_path": loaded}
    if not isinstance(loaded, dict) or "class_path" not in loaded:
        raise ValueError(
            f"--data {data!r} is not a DataModule: give an experiment YAML, a class name such as DigitsDataModule, "
            "or '{class_path: ..., init_args: {...}}'"
        )
    return loaded


def load_data(data: str | None, ckpt: str | Path) -> TensorDataModule:
    """The DataModule named by ``--data``, or (``None``) the one recorded in the checkpoint."""
    source = CheckpointSpec.parse(ckpt) if data is None else None
    if source is not None and source.format != "lightning":
        raise ValueError(
            f"a {source.format} model records no dataset; pass --data (an experiment YAML such as "
            "experiments/cifar10/vp_ddpmpp_cont.yaml, or a DataModule)"
        )
    if data is None:
        hparams = torch.load(_check_ckpt(ckpt), map_location="cpu", weights_only=False).get(
            "datamodule_hyper_parameters"
        )
        if not hparams:
            raise ValueError(
                f"{ckpt} records no DataModule (trained outside the CLI, or by an older version); pass --data, e.g. the experiment YAML"
            )
        dm = L.LightningDataModule.load_from_checkpoint(ckpt, weights_only=False)
    else:
        spec = _spec(data)
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module or "scoresde.lightning"), name, None)
        if cls is None:
            raise ValueError(f"--data: no class {spec['class_path']!r} (the built-in ones live in scoresde.lightning)")
        dm = cls(**(spec.get("init_args") or {}))
    if not isinstance(dm, TensorDataModule):
        raise ValueError(
            f"--data must be a scoresde TensorDataModule (raw splits and a transform), got {type(dm).__name__}"
        )
    return dm


def split_of(dm: TensorDataModule, split: str) -> Tensor:
    """The raw ``train``/``val``/``test`` tensor ``(N, *D)`` of a DataModule."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {split!r}")
    raw: Tensor = getattr(dm, f"{split}_raw")
    return raw


# ---- devices and the predict loop --------------------------------------------------------------------------------
def predict_trainer(cfg: DeviceOptions, **options: Any) -> L.Trainer:
    """A Trainer for a command's predict loop, from its :class:`DeviceOptions` (no logger, no model summary);
    ``options`` go to ``L.Trainer`` (e.g. ``precision``, ``inference_mode``)."""
    devices: int | str = int(cfg.devices) if cfg.devices.isdigit() else cfg.devices  # a count, or "auto" / "0,1"
    check_devices(cfg.accelerator, devices, cfg.num_nodes)
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        logger=False,
        enable_progress_bar=cfg.progress,
        callbacks=progress_callbacks(cfg.progress),  # whole lines when stdout is a log file
        enable_model_summary=False,
        **options,
    )


def prepare_out(out: str | Path) -> Path:
    """The output folder, created if needed; a path that is a file, or a folder that cannot be written, is refused
    before any work."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {path} cannot be created ({err.strerror}); give a writable folder") from err
    if not os.access(path, os.W_OK):
        raise ValueError(f"--out {path} is not writable; give a writable folder")
    return path


def check_sizes(n: int, batch_size: int) -> None:
    """``--n`` and ``--batch-size`` (items per shard) must be positive; checked before any work."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"--n and --batch-size must be positive, got n={n}, batch_size={batch_size}")


def shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard_{k:05d}.npz"


class ShardTask(L.LightningModule, abc.ABC):
    """A ``Trainer.predict`` task whose batches are lists of shard numbers. Subclasses implement :meth:`draw`.

    Args:
        n: items in all.
        batch_size: items per shard (and per :meth:`draw`).
        folder: where the shards go.
    """

    def __init__(self, n: int, batch_size: int, folder: Path) -> None:
        super().__init__()
        self.n, self.batch_size, self.folder = n, batch_size, folder

    @property
    def shards(self) -> int:
        return math.ceil(self.n / self.batch_size)

    @abc.abstractmethod
    def draw(self, start: int, count: int) -> dict[str, Any]:
        """The arrays of items ``start, ..., start + count - 1`` (each with its own seed, so shards are independent)."""

    def predict_step(self, shards: Tensor, batch_idx: int) -> Tensor:
        """Draw and write the shards numbered in ``shards`` (skipping those on disk); returns their numbers."""
        for k in shards.tolist():
            if self._trainer is not None and self.trainer.received_sigterm:
                # Lightning's handler only notes the signal; the predict loop never checks it (fit's does)
                raise SIGTERMException
            if k >= self.shards:  # a placeholder: fewer shards than ranks (see run_shards)
                continue
            path = shard_path(self.folder, k)
            if path.exists():  # written by an earlier (interrupted) run
                continue
            start = k * self.batch_size
            count = min(self.batch_size, self.n - start)
            arrays = self.draw(start, count)
            save_npz(path, {"index": np.arange(start, start + count), **arrays})
        return shards


class _Numbers(Dataset[int]):
    """``0, 1, ..., n - 1``: the shard numbers a predict loop deals out (batches of them are int64 tensors)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def run_shards(trainer: L.Trainer, task: ShardTask) -> bool:
    """Draw every shard not yet on disk, wait for all ranks, and return whether this is rank 0 (which merges)."""
    task.folder.mkdir(parents=True, exist_ok=True)
    if any(not shard_path(task.folder, k).exists() for k in range(task.shards)):
        # One shard per predict step; Lightning gives each rank its share of the list, without padding. The list is
        # all shards, not those still missing: ranks may start seconds apart (`ddp` relaunches the command), and the
        # split must not depend on what was on disk when each looked. Finished shards are skipped in the step.
        # Lightning's unpadded split gives every rank at least one step, so with fewer shards than ranks the list is
        # filled up with numbers past the last shard, which the step skips.
        loader = DataLoader(_Numbers(max(task.shards, trainer.world_size)), batch_size=1, shuffle=False)
        try:
            trainer.predict(task, loader, return_predictions=False)
        except SIGTERMException:
            done = sum(shard_path(task.folder, k).exists() for k in range(task.shards))
            if trainer.is_global_zero:
                print(
                    f"stopped by SIGTERM with {done} of {task.shards} parts written to {task.folder}; "
                    "run the same command again to resume",
                    file=sys.stderr,
                )
            raise SystemExit(128 + signal.SIGTERM) from None
    trainer.strategy.barrier()  # the one collective: every rank has written its shards
    return trainer.is_global_zero


def run_resumable(
    cfg: DeviceOptions, task: ShardTask, manifest: Path, record: dict[str, Any], what: str, **trainer_options: Any
) -> dict[str, np.ndarray] | None:
    """A command's resumable run: refuse a folder whose ``manifest`` records other settings, record this run's, draw
    every shard not yet on disk (over the devices of ``cfg``; ``trainer_options`` go to the Trainer), and return the
    merged arrays of :func:`read_shards` on rank 0 (``None`` on the other ranks). ``what`` names the work in the
    refusal ("samples drawn")."""
    check_manifest(manifest, record, what)
    trainer = predict_trainer(cfg, **trainer_options)
    record_run(manifest, record, trainer.is_global_zero)
    if not run_shards(trainer, task):
        return None
    return read_shards(task.folder, task.shards)


def read_shards(folder: Path, shards: int) -> dict[str, np.ndarray]:
    """The arrays of shards ``0, ..., shards - 1`` concatenated in order (checked complete and contiguous; 0-d
    arrays, one value per shard, become one entry per item); removes the temporary files of shards that were being
    written when a run was killed."""
    missing = [k for k in range(shards) if not shard_path(folder, k).exists()]
    if missing:
        raise RuntimeError(f"{folder} lacks shards {missing[:10]} of {shards}; run the same command again to resume")
    parts = []
    for k in range(shards):
        with np.load(shard_path(folder, k)) as f:
            parts.append(dict(f))
    merged = {
        key: np.concatenate([np.full(len(p["index"]), p[key]) if p[key].ndim == 0 else p[key] for p in parts])
        for key in parts[0]
    }
    if not np.array_equal(merged["index"], np.arange(len(merged["index"]))):
        raise RuntimeError(f"the shards in {folder} are out of order; remove the folder and run again")
    for stale in folder.glob(".shard_*"):
        stale.unlink(missing_ok=True)
    return merged
