"""The bookkeeping of one run around its phases: a Trainer per phase with its callbacks, where a resumed run
continues, the checkpoints, the record, and what is written when it fails or ends."""

from __future__ import annotations

import errno
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L

from negrl.attacks.extraction import Extraction
from negrl.core.distributed import is_rank_zero, sum_over_ranks
from negrl.core.errors import RunFailed
from negrl.core.protocol import PHASES
from negrl.method.data import PasswordData
from negrl.method.evaluation import Evaluator
from negrl.method.phases import PhaseModule
from negrl.method.reference import ReferenceLogprobs
from negrl.model.backbone import Backbone
from negrl.model.loading import model_record
from negrl.run import checkpoint, signals
from negrl.run.callbacks import Checkpointing, Evaluation, ExtractionAttacks, MetricsLogging
from negrl.run.progress import PhaseProgressBar, progress_callbacks
from negrl.run.record import RunRecord
from negrl.run.results import summarize, verdict
from negrl.run.rundir import RunDir
from negrl.run.tracking import RunLogger, build_loggers
from negrl.run.validation import Settings

PhaseEndHook = Callable[[int, Backbone], None]


class PhaseRunner:
    """Runs the phases of one run in `owner` (under DDP only the first process writes, logs and checkpoints).

    A resumed run (`settings.resume`) starts from the directory's checkpoint: the phases it finished are
    skipped, the one it was in continues after the checkpoint's step."""

    def __init__(self, s: Settings, owner: RunDir, backbone: Backbone, data: PasswordData, saved: dict[str, Any] | None,
                 why: str | None = None, on_phase_end: PhaseEndHook | None = None):  # fmt: skip
        """`saved`: the checkpoint a resumed run continues (`checkpoint.resumed_state`), None for a fresh run."""
        self.s, self.owner, self.backbone, self.data, self.on_phase_end = s, owner, backbone, data, on_phase_end
        self.weights: Any = backbone  # what checkpoints save and restore (a seed's slice of a stack: negrl.stacked)
        self.writer = is_rank_zero()
        self.saved = saved
        if saved is not None:
            checkpoint.restore_weights(backbone, saved, owner)  # before the run writes anything
        elif self.writer and owner.has_checkpoint():  # a fresh run: an earlier run's checkpoint is not its own
            owner.checkpoint.unlink()
        self.offsets = {p: sum(s.steps[q] for q in PHASES if q < p) for p in PHASES}
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.identity: dict[str, Any] = {"dir": str(owner.path), "seed": s.seed, "model": s.model["name"],
                                         "started": started}  # fmt: skip
        if saved is not None:  # when the run first started, and each time it was resumed, from where
            first = saved.get("run") or {}
            after = {"phase": saved["phase"], "step": saved["step"], "phase_done": saved["phase_done"]}
            self.identity["started"] = first.get("started", started)
            self.identity["resumed"] = [*first.get("resumed", []), {"started": started, "after": after}]
        self.evaluator = Evaluator(s.eval_every)
        self.extraction = (
            None if s.attacks is None else Extraction(data.vocab.letter_ids, data.sizes.password_length, s.attacks)
        )
        self.reference: ReferenceLogprobs | None = None
        self.record = RunRecord()
        if saved is not None:
            self.record.load_state_dict(saved)
        self.run_logger = RunLogger([])
        with self.recording_failure():  # from here on a failure is recorded (a W&B run that cannot start, say)
            if self.writer:
                owner.write_config(s.config)
                owner.write_results({"status": "running", "run": self.identity})
            resume_step = None if saved is None else self.offsets[saved["phase"]] + saved["step"]
            loggers = build_loggers(owner, s.wandb, resume_step, saved and saved.get("wandb_id")) if self.writer else []
            self.run_logger = RunLogger(loggers)
            self.run_logger.log_config(s.config)
        if saved is not None:
            print(f"negrl: resuming {owner.path} after phase {saved['phase']} step {saved['step']} ({why})")
            checkpoint.set_rng_states(saved["rng"])
        self.record.wandb_id = self.run_logger.wandb_id

    def fit(self, module: PhaseModule) -> None:
        """Train one phase, save its end, call `on_phase_end(phase, backbone)`; a phase a resumed run has
        finished is skipped."""
        p = module.phase
        if self.finished(p):
            return
        inside = self.start_phase(module)
        max_steps, callbacks = self.s.steps[p] - module.start_step, self.callbacks(module, inside)
        trainer = make_trainer(self.s.trainer, self.s.optim.grad_clip, max_steps, callbacks, self.owner.path)
        trainer.fit(module, datamodule=self.data.for_phase(p, start=module.start_step))
        self.end_phase(p)

    def finished(self, phase: int) -> bool:
        """Whether a resumed run has finished `phase` already."""
        return phase < self.record.first_phase

    def start_phase(self, module: PhaseModule) -> dict[str, Any] | None:
        """Where `module`'s phase starts (`module.start_step`; the clock from the time already spent): the checkpoint
        inside the phase a resumed run continues, else None."""
        at = self.record.saved_at
        p = module.phase
        inside = self.saved if at is not None and at[0] == p and not at[2] else None  # resuming inside phase p
        module.start_step = 0 if inside is None else inside["step"] + 1
        self.record.start_clock(0.0 if inside is None else inside["elapsed"])
        return inside

    def end_phase(self, phase: int) -> None:
        """Record the phase's wall time, save its end, call `on_phase_end(phase, backbone)`."""
        self.record.wall[phase] = self.record.elapsed
        self.save(phase, self.s.steps[phase] - 1, phase_done=True)
        if self.on_phase_end is not None:
            self.on_phase_end(phase, self.backbone)

    def callbacks(self, module: Any, inside: dict[str, Any] | None, progress: bool = True) -> list[L.Callback]:
        """Evaluation, extraction (if enabled), logging, checkpoints and progress (unless not `progress`) of one
        phase, in that order. `module`: the phase, or one seed's view of a stacked phase."""
        p, sets = module.phase, self.data.eval_sets(module.phase)
        out: list[L.Callback] = [Evaluation(self.evaluator, sets, self.record, inside and inside["evaluator"])]
        if self.extraction is not None:
            candidates = self.data.candidates(p, self.s.attacks.candidates)
            out.append(ExtractionAttacks(self.extraction, sets, candidates, self.record))
        out.append(MetricsLogging(self.run_logger, self.offsets[p]))
        out.append(Checkpointing(self.save, self.s.checkpoint_every, inside))
        return out + (
            progress_callbacks(module.name, self.s.trainer.get("enable_progress_bar", True)) if progress else []
        )

    def attach_reference(self, reference: ReferenceLogprobs) -> ReferenceLogprobs:
        """The run's reference from here on (saved with each checkpoint); a resumed run's is restored."""
        if self.saved is not None and self.saved["reference"] is not None:
            reference.model.load_state_dict(self.saved["reference"]["model"])
            reference.load_state_dict(self.saved["reference"]["cache"])
        self.reference = reference
        return reference

    def save(self, phase: int, step: int, phase_done: bool = False, **optim_state: Any) -> None:
        """Checkpoint the run after `step` of `phase` (metrics.csv flushed first, so it holds every row up to it);
        a signal arriving meanwhile stops the run once the checkpoint is written."""
        with signals.deferred():
            self._save(phase, step, phase_done, **optim_state)

    def _save(self, phase: int, step: int, phase_done: bool = False, **optim_state: Any) -> None:
        if self.writer:
            self.run_logger.flush()
            ref = self.reference
            state = {
                "phase": phase, "step": step, "phase_done": phase_done,
                "elapsed": 0.0 if phase_done else self.record.elapsed,
                "backbone": self.weights.state_dict(),
                "reference": None if ref is None else {"model": ref.model.state_dict(), "cache": ref.state_dict()},
                "evaluator": self.evaluator.state_dict(),
                **self.record.state_dict(),
                "rng": checkpoint.rng_states(),
                "config": self.s.config,
                "run": self.identity,
                **optim_state,
            }  # fmt: skip
            checkpoint.save_atomic(state, self.owner)
        self.record.saved_at = (phase, step, phase_done)

    @contextmanager
    def recording_failure(self) -> Iterator[None]:
        """A run that stops early is recorded `failed` with the reason; a signal (SIGINT, SIGTERM: exit code 128 +
        its number) and a full disk become one line."""
        try:
            yield
        except BaseException as err:
            with signals.deferred(raise_pending=False):  # already stopping: a signal now must not replace `err`
                reason = self.record_failure(err)
            if isinstance(err, (KeyboardInterrupt, SystemExit)) or disk_full(err):
                failed = RunFailed(reason)
                failed.exit_code = err.code if isinstance(err, signals.Interrupted) else failed.exit_code
                raise failed from None
            raise

    def record_failure(self, err: BaseException) -> str:
        """Write results.json `failed` with the reason (one line, also returned) and close the loggers."""
        reason = failure_reason(err, self.owner, self.record.saved_at)
        if self.writer:
            try:
                self.owner.write_results({"status": "failed", "reason": reason, "run": self.identity})
                self.run_logger.finish("failed")
            except OSError as again:  # e.g. the disk is still full: the reason is printed, the checkpoint stays
                reason += f" (results.json could not be updated: {again.strerror})"
        return reason

    def finish(self) -> dict[str, Any]:
        """The results (also in results.json, status `complete`) with the verdict in plain words."""
        r, ref = self.record, self.reference
        results = summarize(r.summaries, r.wall, self.s.steps, self.data.vocab.n_letters, r.extraction, self.s.attacks)
        results["run"] = self.identity
        results["prefix"] = self.s.prefix  # what the evaluations were conditioned on (the verdict's labels)
        results["model"] = model_record(self.backbone, self.s.model, self.s.adapter, self.s.freeze)
        results["reference"] = {"cache": ref.use_cache, "sequences_computed": sum_over_ranks(ref.computed)}
        wandb_dir = self.run_logger.wandb_dir
        with signals.deferred(raise_pending=False):  # a signal now is kept: the run is recorded complete
            summary = {"metric": results["metric"], "control": results["control"]["metric"], "delta": results["delta"]}
            self.run_logger.finish("success", summary)
            if self.writer:
                self.owner.write_results(results)
        files = [str(path) for path in (self.owner.results, self.owner.metrics, self.owner.config)]
        results["verdict"] = verdict(results, files, wandb_dir)
        return results


def failure_reason(err: BaseException, owner: RunDir, saved_at: tuple[int, int, bool] | None) -> str:
    """One line for results.json and the terminal: what stopped the run, and how to continue it."""
    if saved_at is None:  # nothing to continue from: resume=DIR would be refused
        again = "it stopped before its first checkpoint, so there is nothing to resume: run the same command again"
    else:
        kept = f"the checkpoint after phase {saved_at[0]} step {saved_at[1]}"
        again = f"continue with the same overrides and resume={owner.path} ({kept})"
    if isinstance(err, signals.Interrupted):
        return f"interrupted by {signals.signal_name(err.signum)}; {again}"
    if isinstance(err, (KeyboardInterrupt, SystemExit)):  # Lightning turns a KeyboardInterrupt into SystemExit
        return f"interrupted; {again}"
    if disk_full(err):
        return f"disk full ({err.filename or owner.path}): free some space, then {again}"
    return f"{type(err).__name__}: {err}".splitlines()[0]


def disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """While a run trains: without Lightning's per-Trainer banners, its warnings that do not apply to negrl's phases,
    transformers' progress bars while it loads weights, and a deprecation warning peft's LoRA raises inside
    transformers (nothing a user can act on); all restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    loggers = [logging.getLogger(f"lightning.{part}.utilities.rank_zero") for part in ("pytorch", "fabric")]
    loggers.append(logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector"))  # negrl says it
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        for log in loggers:
            log.setLevel(logging.WARNING)
        for pattern in (
            ".*Experiment logs directory .* exists and is not empty.*",  # metrics.csv lives beside config.yaml
            ".*module\\(s\\) in eval mode.*",  # the frozen reference is in eval mode on purpose
            ".*LeafSpec.*",
            ".*litlogger.*",
            ".*is_gradient_checkpointing. is deprecated.*",  # peft's LoRA calls it (transformers 5)
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)
            if bars:
                hf_logging.enable_progress_bar()


def make_trainer(
    trainer: dict[str, Any], grad_clip: float, max_steps: int, callbacks: list[L.Callback], root: Path
) -> L.Trainer:
    """A fresh Trainer for one phase of `max_steps` steps; the `trainer.*` settings pass through to Lightning."""
    trainer_cfg = {k: v for k, v in trainer.items() if k != "enable_progress_bar"}
    return L.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=grad_clip,
        gradient_clip_algorithm="norm",
        enable_progress_bar=any(isinstance(cb, PhaseProgressBar) for cb in callbacks),
        use_distributed_sampler=False,  # under DDP each process takes its share of every batch (RankShard)
        callbacks=callbacks,
        default_root_dir=str(root),  # where a profiler writes
        **trainer_cfg,
    )
