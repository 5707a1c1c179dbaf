"""Progress of a phase: Lightning's progress bar on a terminal, a line every tenth of the phase otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch.callbacks import Callback, TQDMProgressBar


class PhaseProgressBar(TQDMProgressBar):
    """Lightning's progress bar, titled with the phase instead of the epoch."""

    def __init__(self, title: str):
        super().__init__()
        self.title = title

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(self.title)


class PhaseProgressLines(Callback):
    """For logs (output not a terminal: a file, SLURM): one plain line every `1/lines` of the phase and at its end,
    instead of a progress bar's carriage-return frames."""

    def __init__(self, title: str, lines: int = 10):
        self.title, self.lines = title, lines
        self._started = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, total = pl_module.start_step + batch_idx, pl_module.total_steps
        if (step + 1) % max(1, total // self.lines) and step != total - 1:
            return
        rate = (batch_idx + 1) / max(time.perf_counter() - self._started, 1e-9)
        shown = "  ".join(f"{k} {float(v):.4f}" for k, v in trainer.progress_bar_metrics.items())
        print(f"{self.title}: step {step + 1}/{total}  {shown}  ({rate:.1f} steps/s)", flush=True)


def progress_callbacks(title: str, enabled: bool) -> list[Callback]:
    """The progress display of a phase: a bar on a terminal, lines in a log, nothing when disabled."""
    if not enabled:
        return []
    return [PhaseProgressBar(title) if sys.stderr.isatty() else PhaseProgressLines(title)]
