"""Nothing lost: a ``kill -9`` during ``scoresde fit`` costs at most one checkpoint interval of steps, and the run
resumes from ``last.ckpt``."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from scoresde.lightning.cli import run

REPO = Path(__file__).parents[1]
INTERVAL = 25

CONFIG = """
seed_everything: 0
trainer:
  max_steps: 100000
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
  default_root_dir: {root}
  callbacks:
    - class_path: scoresde.lightning.StepCheckpoint
      init_args: {{dirpath: {root}/checkpoints, every_n_train_steps: {interval}}}
    - class_path: tests.test_resume.StepLog
      init_args: {{path: {root}/step.txt}}
model:
  net: {{class_path: scoresde.nets.MLP, init_args: {{data_shape: [2], width: 16, depth: 1}}}}
  sde: scoresde.VPSDE
  warmup_steps: 10
  ema_decay: 0.99
data:
  class_path: scoresde.lightning.ToyDataModule
  init_args: {{name: ring, n_train: 5000, n_val: 100, n_test: 100, batch_size: 64}}
"""


class StepLog(L.Callback):
    """Writes the number of finished optimizer steps to ``path`` after every step, atomically: a plain write truncates
    the file first, and a SIGKILL between the truncation and the write left it empty (read as step 0: a flaky fail)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        tmp = Path(f"{self.path}.tmp")
        tmp.write_text(str(trainer.global_step))
        os.replace(tmp, self.path)


def _steps(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_kill_9_during_fit_loses_at_most_one_checkpoint_interval_and_the_run_resumes(tmp_path):
    config = tmp_path / "fit.yaml"
    config.write_text(CONFIG.format(root=tmp_path, interval=INTERVAL))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-c", "from scoresde.lightning.cli import main; main()", "fit",
                             "--config", str(config)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    log = tmp_path / "step.txt"
    deadline = time.monotonic() + 240
    while _steps(log) < 4 * INTERVAL + 7 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reached = _steps(log)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert saved % INTERVAL == 0 and 0 <= reached - saved <= INTERVAL, (reached, saved)

    run(["fit", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.max_steps", str(saved + 5),
         "--trainer.callbacks.path", str(tmp_path / "resumed.txt")])
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == saved + 5


def _sigterm_midway(cmd, parts, total):
    """Start ``cmd``, send SIGTERM once 3 of ``total`` parts are on disk; returns (exit code, seconds to stop, parts
    at the signal, parts after, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    deadline = time.monotonic() + 120
    while len(list(parts())) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    at_signal = len(list(parts()))
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, time.monotonic() - sent, at_signal, len(list(parts())), err.decode()


def test_sigterm_stops_sample_within_one_batch_and_the_run_resumes_to_the_same_samples(toy_ckpt, tmp_path):
    from .test_sample_cli import _run as sample

    args = ["--solver", "euler_maruyama", "--steps", "400", "--n", "240", "--batch-size", "8", "--seed", "1"]
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "scoresde.lightning.cli", "sample", "--ckpt", str(toy_ckpt), "--out", str(out),
           "--progress", "false", *args]
    code, seconds, at_signal, after, err = _sigterm_midway(cmd, lambda: out.glob("shard_*.npz"), 30)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert 3 <= at_signal <= after <= at_signal + 1 < 30, (at_signal, after)  # at most the batch in progress
    assert not (out / "samples.npz").exists()
    resumed = sample(toy_ckpt, out, *args)
    np.testing.assert_array_equal(resumed, sample(toy_ckpt, tmp_path / "straight", *args))


def test_sigterm_stops_likelihood_within_one_batch_and_the_run_resumes_to_the_same_bits_per_dim(toy_ckpt, tmp_path):
    args = ["--limit", "32", "--batch-size", "4", "--rtol", "1e-5", "--atol", "1e-5"]
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "scoresde.lightning.cli", "likelihood", "--ckpt", str(toy_ckpt), "--out", str(out),
           "--progress", "false", *args]
    code, _, at_signal, after, err = _sigterm_midway(cmd, lambda: (out / "parts").glob("shard_*.npz"), 8)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert 3 <= at_signal <= after <= at_signal + 1 < 8, (at_signal, after)
    run(["likelihood", "--ckpt", str(toy_ckpt), "--out", str(out), *args])
    run(["likelihood", "--ckpt", str(toy_ckpt), "--out", str(tmp_path / "straight"), *args])
    bpd = [np.load(d / "likelihood.npz")["bpd"] for d in (out, tmp_path / "straight")]
    np.testing.assert_array_equal(*bpd)
