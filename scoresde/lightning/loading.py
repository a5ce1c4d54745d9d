"""What the ``sample``/``likelihood``/``interpolate`` commands share: loading what ``scoresde fit`` wrote (the model
with its EMA weights, the DataModule it was trained on) and the run manifest that makes an output folder resumable."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from .._utils import atomic_path
from .data import TensorDataModule
from .module import ScoreModule

__all__ = [
    "load_model", "load_classifier", "load_data", "split_of", "check_manifest", "record_run", "add_device_arguments", "predict_trainer",
]


def _check_ckpt(ckpt: str | Path) -> Path:
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; `scoresde fit` writes them under <default_root_dir>/checkpoints/")
    return path


def load_model(ckpt: str | Path, device: torch.device | str = "cpu") -> ScoreModule:
    """The :class:`ScoreModule` of a checkpoint (its state dict holds the EMA weights), in eval mode."""
    # The hyperparameters hold the linked DataTransform object, which torch's weights-only loader refuses; load only
    # checkpoints you trust (your own `scoresde fit` runs).
    # compile=False: sampling and likelihood run uncompiled (compiling is a training-time option)
    model = ScoreModule.load_from_checkpoint(_check_ckpt(ckpt), map_location=device, weights_only=False, compile=False)
    return model.eval()


def load_classifier(ckpt: str | Path, device: torch.device | str = "cpu") -> "L.LightningModule":
    """The :class:`~scoresde.lightning.ClassifierModule` of a ``scoresde classifier fit`` checkpoint, in eval mode."""
    from .classifier import ClassifierModule

    path = _check_ckpt(ckpt)
    hparams = torch.load(path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    if "label_dropout" in hparams or "prediction" in hparams:
        raise ValueError(f"{path} is a score model checkpoint; --classifier takes one written by `scoresde classifier fit`")
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
    if data is None:
        import lightning as L

        hparams = torch.load(_check_ckpt(ckpt), map_location="cpu", weights_only=False).get("datamodule_hyper_parameters")
        if not hparams:
            raise ValueError(f"{ckpt} records no DataModule (trained outside the CLI, or by an older version); pass --data, e.g. the experiment YAML")
        dm = L.LightningDataModule.load_from_checkpoint(ckpt, weights_only=False)
    else:
        spec = _spec(data)
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module or "scoresde.lightning"), name, None)
        if cls is None:
            raise ValueError(f"--data: no class {spec['class_path']!r} (the built-in ones live in scoresde.lightning)")
        dm = cls(**(spec.get("init_args") or {}))
    if not isinstance(dm, TensorDataModule):
        raise ValueError(f"--data must be a scoresde TensorDataModule (raw splits and a transform), got {type(dm).__name__}")
    return dm


def split_of(dm: TensorDataModule, split: str) -> torch.Tensor:
    """The raw ``train``/``val``/``test`` tensor ``(N, *D)`` of a DataModule."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {split!r}")
    return getattr(dm, f"{split}_raw")


def check_manifest(manifest: Path, record: dict[str, Any], what: str) -> None:
    """Refuse to resume into a folder whose ``manifest`` records other settings than ``record`` (names the keys)."""
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old != json.loads(json.dumps(record)):
            diff = sorted(k for k in record if old.get(k) != record[k])
            raise ValueError(f"{manifest.parent} holds {what} with other settings ({', '.join(diff)} differ); use a new --out")


def record_run(manifest: Path, record: dict[str, Any], is_global_zero: bool) -> None:
    """Write the manifest of a new run (rank 0 only, atomically); :func:`check_manifest` reads it on a rerun."""
    if is_global_zero and not manifest.exists():
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(record, indent=2))


def add_device_arguments(p: Any) -> None:
    """The options by which a command spreads its work over devices and machines (Lightning's), and its progress bar."""
    p.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu, ... (default: a GPU if there is one)")
    p.add_argument("--devices", type=str, default="1", help="devices per node (e.g. 4, or auto)")
    p.add_argument("--num_nodes", "--num-nodes", type=int, default=1, help="machines (torch.distributed / SLURM)")
    p.add_argument("--strategy", type=str, default="auto", help="e.g. ddp; ddp_fork inside notebooks and tests")
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar")


def predict_trainer(cfg: dict[str, Any], **options: Any) -> "L.Trainer":
    """A Trainer for a command's predict loop, from the options of :func:`add_device_arguments` (no logger, no model
    summary); ``options`` go to ``L.Trainer`` (e.g. ``precision``, ``inference_mode``)."""
    import lightning as L

    devices = int(cfg["devices"]) if cfg["devices"].isdigit() else cfg["devices"]  # a count, or "auto" / "0,1"
    return L.Trainer(
        accelerator=cfg["accelerator"], devices=devices, num_nodes=cfg["num_nodes"], strategy=cfg["strategy"],
        logger=False, enable_progress_bar=cfg["progress"], enable_model_summary=False, **options,
    )
