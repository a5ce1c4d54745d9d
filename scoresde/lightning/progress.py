"""Progress for log files: whole lines instead of a redrawn bar.

Lightning's TQDM bar redraws itself with carriage returns; written to a file (a batch job's log, ``| tee``), that is one
line holding every redraw, hundreds of kilobytes for a short run. :func:`progress_callbacks` picks this bar instead when
standard output is not a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import Callback, ProgressBar

import lightning as L

__all__ = ["LineProgressBar", "progress_callbacks"]


class LineProgressBar(ProgressBar):
    """Prints one line each time another ``fraction`` of the run is done (and at the end), on rank 0:

        step 300/3000 (10%), epoch 3, train/loss=0.257, val/loss=0.239, 21 s, 142 steps/s

    Args:
        fraction: share of the run between two lines (0.1: ten lines a run).
    """

    def __init__(self, fraction: float = 0.1) -> None:
        super().__init__()
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        self.fraction, self._enabled = fraction, True
        self._start, self._total, self._every, self._steps, self._first = 0.0, 0, 1, 0, 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and (self._trainer is None or self.trainer.is_global_zero)

    def _begin(self, total: int) -> None:
        """Start pacing a run of ``total`` steps or batches: a line every ``fraction`` of it."""
        self._start, self._total = time.perf_counter(), total
        self._every = max(1, round(self.fraction * total))

    def _report(self, done: int, what: tuple[str, str], shown: int, of: int, extra: str = "") -> None:
        """After ``done`` of the run's ``_total`` units (``what``: singular and plural): print ``shown/of``, the
        share, ``extra``, the time and the rate."""
        if not self.is_enabled or not done or (done % self._every and done != self._total):
            return
        seconds = time.perf_counter() - self._start
        rate = f", {done / seconds:.3g} {what[1]}/s" if seconds > 0 else ""
        print(f"{what[0]} {shown}/{of} ({100 * shown / max(of, 1):.0f}%){extra}, {seconds:.0f} s{rate}", flush=True)

    # ---- training ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps = int(trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches)
        self._first = trainer.global_step  # a resumed run counts from its checkpoint
        self._begin(self._steps - self._first)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}  # the logger's run id
        shown = "".join(f", {k}={v:.3g}" if isinstance(v, float) else f", {k}={v}" for k, v in metrics.items())
        step = trainer.global_step
        self._report(
            step - self._first, ("step", "steps"), step, self._steps, f", epoch {trainer.current_epoch}{shown}"
        )

    # ---- prediction (scoresde sample, likelihood, inpaint) ------------------------------------------------------
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(int(sum(trainer.num_predict_batches)))

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *rest: Any
    ) -> None:
        self._report(batch_idx + 1, ("batch", "batches"), batch_idx + 1, self._total)


def progress_callbacks(enabled: bool = True) -> list[Callback]:
    """What to add to a Trainer's callbacks for progress: a :class:`LineProgressBar` when standard output is not a
    terminal, nothing when it is (Lightning's own bar then) or when progress is off."""
    return [LineProgressBar()] if enabled and not sys.stdout.isatty() else []
