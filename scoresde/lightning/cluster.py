"""Checks of the devices a run asks for against the machine and the cluster job it was started in, before a Trainer
exists (so before any work, download or collective).

Under SLURM, Lightning takes the world size from ``SLURM_NTASKS``; a job step whose task count differs from
``devices × num_nodes`` either runs on fewer devices than asked or waits for ranks that never come, and Lightning's own
checks end in a traceback (``--ntasks`` without ``--ntasks-per-node`` is a ``RuntimeError``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

__all__ = ["check_devices"]


def _count(devices: Any) -> int | None:
    """How many devices ``devices`` names (``2``, ``"2"``, ``"0,1"``, ``[0, 1]``); ``None`` for ``"auto"`` or ``-1``."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() and int(text) > 0 else None


def check_devices(accelerator: Any, devices: Any, num_nodes: Any) -> None:
    """Refuse, with the setting to change, an accelerator this machine lacks and a SLURM job step whose task count
    differs from ``devices × num_nodes``."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"accelerator {name!r}: torch sees no CUDA GPU here (a CPU build of torch, or no driver); "
            "use accelerator 'cpu' (or 'auto'), or install a CUDA build of torch (README, 'GPU install')"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("accelerator 'mps': this machine has no Apple GPU; use accelerator 'cpu' (or 'auto')")
    if not SLURMEnvironment.detect() or "SLURM_NTASKS" not in os.environ:
        return  # not a SLURM job step (or an interactive one: job name bash or interactive)
    tasks, count, nodes = int(os.environ["SLURM_NTASKS"]), _count(devices), int(num_nodes or 1)
    if count is not None and tasks != count * nodes:
        raise ValueError(
            f"SLURM started {tasks} tasks (SLURM_NTASKS) but devices × num_nodes = {count} × {nodes} = "
            f"{count * nodes}; start one task per device (srun --nodes=<num_nodes> --ntasks-per-node=<devices>) "
            "or set devices and num_nodes to match"
        )
    if tasks > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
        raise ValueError(
            f"SLURM started {tasks} tasks with --ntasks only; Lightning needs --ntasks-per-node (with --nodes): "
            f"srun --nodes={nodes} --ntasks-per-node={tasks // nodes}"
        )
