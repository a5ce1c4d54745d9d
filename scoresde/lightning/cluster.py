"""Checks of a Trainer against the cluster it was started on, before any work or collective.

Under SLURM, Lightning takes the world size from ``SLURM_NTASKS`` and checks ``--ntasks-per-node`` and ``--nodes``
when they are set; a job started with ``srun --ntasks=N`` alone, and ``devices × num_nodes`` other than N, runs on
fewer devices than asked, or waits for ranks that never come.
"""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import SLURMEnvironment

import lightning as L

__all__ = ["check_cluster"]


def check_cluster(trainer: L.Trainer) -> None:
    """Refuse, with the setting to change, a SLURM job whose task count differs from ``devices × num_nodes``."""
    if not SLURMEnvironment.detect() or "SLURM_NTASKS" not in os.environ:
        return  # not a SLURM job step (or an interactive one: job name bash or interactive)
    tasks, asked = int(os.environ["SLURM_NTASKS"]), trainer.num_devices * trainer.num_nodes
    if tasks != asked:
        raise ValueError(
            f"SLURM started {tasks} tasks (SLURM_NTASKS) but devices × num_nodes = {trainer.num_devices} × "
            f"{trainer.num_nodes} = {asked}; start one task per device (srun --ntasks-per-node=<devices> "
            f"--nodes=<num_nodes>) or set devices and num_nodes to match"
        )
