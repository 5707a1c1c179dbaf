"""What happens around each phase's training steps, as Lightning callbacks beside the phases.

Each receives `(trainer, pl_module)` for a `negrl.method.phases.PhaseModule`; they run in the order
`phase_callbacks` gives them, after every optimizer step: evaluate, extract (after the last step),
log the step's row, checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from negrl.attacks.extraction import Extraction, flat_metrics
from negrl.method.evaluation import Evaluator
from negrl.run.record import RunRecord
from negrl.run.tracking import RunLogger


class Evaluation(Callback):
    """The evaluation sets' log-likelihoods after steps 0, every, 2*every, ... (added to the step's row); at the
    phase end each set's max and final value go to the record."""

    def __init__(self, evaluator: Evaluator, sets: dict[str, torch.Tensor], record: RunRecord,
                 resume: dict[str, Any] | None = None):  # fmt: skip
        """`resume`: the evaluator state of a checkpoint inside this phase (its running maxima)."""
        self.evaluator, self.sets, self.record, self.resume = evaluator, sets, record, resume

    def on_train_start(self, trainer, pl_module) -> None:
        self.evaluator.start_phase(self.sets)
        if self.resume is not None:
            self.evaluator.load_state_dict(self.resume)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.evaluator.due(pl_module.step_of(batch_idx)):
            metrics = pl_module.evaluate(self.evaluator)
            pl_module.metrics_row.update(metrics)
            pl_module.log("heldout_ll", metrics["eval/heldout_ll"], prog_bar=True, logger=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.record.summaries[pl_module.phase] = self.evaluator.summary()


class ExtractionAttacks(Callback):
    """After the phase's last step, the attacks on its final model (on its device, `negrl.attacks.extraction`): greedy
    recovery, exposure among `candidates`, generation, membership inference and the logit lens; the logit difference
    and the reference membership attack where the phase has an attack reference (phases 2 and 3)."""

    def __init__(self, extraction: Extraction, sets: dict[str, torch.Tensor], candidates: torch.Tensor,
                 record: RunRecord):  # fmt: skip
        self.extraction, self.sets, self.candidates, self.record = extraction, sets, candidates, record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if pl_module.step_of(batch_idx) == pl_module.total_steps - 1:
            result = self.extraction(
                pl_module.backbone, self.sets, self.candidates, pl_module.attack_reference, pl_module.phase
            )
            self.record.extraction[pl_module.phase] = result
            pl_module.metrics_row.update(flat_metrics(result))


class MetricsLogging(Callback):
    """One metrics row per step (the phase's losses and learning rate, and what the callbacks before it added),
    at the run's global step: the phase's `offset` plus its step."""

    def __init__(self, run_logger: RunLogger, offset: int):
        self.run_logger, self.offset = run_logger, offset

    def on_train_start(self, trainer, pl_module) -> None:
        self.run_logger.start_phase(pl_module.phase, self.offset)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        row = {k: float(v) for k, v in pl_module.metrics_row.items()}
        self.run_logger.log(row, pl_module.step_of(batch_idx))


class Checkpointing(Callback):
    """Every `every` steps inside a phase (0: never; the phase's last step is saved by its end), `save(phase,
    step, optimizer=..., scheduler=...)`; on resume inside the phase, the optimizer and schedule as saved."""

    def __init__(self, save: Callable[..., None], every: int, resume: dict[str, Any] | None = None):
        self.save, self.every, self.resume = save, every, resume

    def on_train_start(self, trainer, pl_module) -> None:
        if self.resume is not None:
            trainer.optimizers[0].load_state_dict(self.resume["optimizer"])
            # Lightning steps the schedule before on_train_batch_end, so the saved one is already at the next step.
            trainer.lr_scheduler_configs[0].scheduler.load_state_dict(self.resume["scheduler"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = pl_module.step_of(batch_idx)
        if self.every and (step + 1) % self.every == 0 and step < pl_module.total_steps - 1:
            self.save(
                pl_module.phase, step, optimizer=trainer.optimizers[0].state_dict(),
                scheduler=trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            )  # fmt: skip
