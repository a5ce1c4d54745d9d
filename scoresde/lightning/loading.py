"""What the ``sample``/``likelihood``/``interpolate`` commands share: loading what ``scoresde fit`` wrote (the model
with its EMA weights, the DataModule it was trained on) and the run manifest that makes an output folder resumable."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from .data import TensorDataModule
from .module import ScoreModule

__all__ = ["load_model", "load_data", "split_of", "check_manifest", "parse_devices"]


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


def parse_devices(value: str) -> int | str:
    """``--devices``: a count (``"4"``) or a Lightning spec (``"auto"``, ``"0,1"``)."""
    return int(value) if value.isdigit() else value
