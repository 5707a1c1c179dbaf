"""`run(cfg, run_dir)`: the whole experiment of docs/experiment.md, top to bottom; `run_stacked`: the same for
several seeds of one configuration at once (negrl.stacked.runner)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from negrl.core.distributed import is_rank_zero
from negrl.core.errors import NegrlError, RunFailed
from negrl.method.data import PasswordData
from negrl.method.phases import JointPhase, NTPPhase, ObjectivePhase
from negrl.method.reference import ReferenceLogprobs
from negrl.model.backbone import Backbone
from negrl.model.loading import load_model
from negrl.run.checkpoint import device_count, numeric_config, resume_dir, resumed_state, sweep_resume_dir
from negrl.run.rundir import RunDir
from negrl.run.runner import PhaseEndHook, PhaseRunner, quiet_lightning
from negrl.run.signals import stop_on_signals
from negrl.run.validation import Settings, validate, warn_degenerate
from negrl.stacked.runner import StackedRunner, StackHook, check_same_position, check_stackable_objective


def run(
    cfg: DictConfig, run_dir: Path, on_phase_end: PhaseEndHook | None = None, search: str | None = None,
    sweep: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run the three phases; returns the results, also in `run_dir/results.json`.

    Bad input raises `NegrlError` before anything is written. Once training starts, `results.json` says
    `running`, then `complete` or `failed` (with the reason). `on_phase_end(phase, backbone)` is called after
    each phase. `search`: where `resume=true` looks for the run to continue (a glob; default: beside `run_dir`).
    `sweep`: a job of a sweep, where `resume=true` skips a job already complete (its results returned) and starts
    one that never reached a checkpoint afresh.
    """
    s = validate(cfg, warn=False)
    if sweep and s.resume is True:
        kind, found, why = sweep_resume_dir(search or str(Path(run_dir).parent / "*"), s.config)
        if kind == "complete":
            results = RunDir(found).read_results() or {}
            return {**results, "verdict": f"negrl: {found} is {why} (resume=true)"}
        if kind == "fresh":
            s = replace(s, resume=False, config={**s.config, "resume": False})
            print(f"negrl: resume=true: {why}")
    run_dir, why = _resumed(s, run_dir, search)
    with stop_on_signals(), RunDir(run_dir).claimed(writer=is_rank_zero()) as owner, quiet_lightning():
        runner, backbone = _seed_runner(s, owner, resumed_state(s.resume, owner, s.config), why, on_phase_end)
        warn_degenerate(s)  # after the last check that can refuse the run
        return three_phases(runner, backbone, s)


def run_stacked(
    cfgs: list[DictConfig], run_dirs: list[Path], on_phase_end: StackHook | None = None,
    searches: list[str | None] | None = None,
) -> list[dict[str, Any] | RunFailed]:  # fmt: skip
    """`run` for seeds of one configuration (configs equal but for `seed`), trained stacked in one process; each
    seed writes its own run directory as a separate run would. Returns each seed's results or its failure."""
    settings = [validate(c, warn=False) for c in cfgs]
    check_stackable(settings)
    resumed = [_resumed(s, d, q) for s, d, q in zip(settings, run_dirs, searches or [None] * len(cfgs))]
    with ExitStack() as claims:
        claims.enter_context(stop_on_signals())
        owners = [claims.enter_context(RunDir(d).claimed()) for d, _ in resumed]
        claims.enter_context(quiet_lightning())
        # Every seed's checkpoint read and checked before any seed writes: one that cannot resume refuses the stack.
        saved = [resumed_state(s.resume, owner, s.config) for s, owner in zip(settings, owners)]
        check_same_position(saved, [owner.path for owner in owners])
        seeds: list[tuple[PhaseRunner, Backbone]] = []
        try:
            for s, owner, state, (_, why) in zip(settings, owners, saved, resumed):
                seeds.append(_seed_runner(s, owner, state, why))
            group = StackedRunner([r for r, _ in seeds], [b for _, b in seeds], on_phase_end)
        except BaseException as err:  # the seeds already `running` record why the stack never started
            for runner, _ in seeds:
                runner.record_failure(err)
            raise
        warn_degenerate(settings[0])
        return three_phases(group, group.backbone, settings[0])


def three_phases(runner: PhaseRunner | StackedRunner, backbone: Backbone, s: Settings) -> Any:
    """The paper's method on `backbone` (the run's, or a stack's template), its bookkeeping in `runner`."""
    negative = dict(objective=s.objective, beta=s.beta, optim=s.optim)  # phases 2-3: DPO or another objective
    with runner.recording_failure():
        # Phase 1: next-token prediction on random passwords (regular prefix).
        runner.fit(NTPPhase(backbone, optim=s.optim, total_steps=s.steps[1]))
        # The reference: a frozen copy of the model at the end of phase 1 (each sequence's log-prob cached).
        reference = runner.attach_reference(ReferenceLogprobs(
            backbone.frozen_copy(), s.sizes.dpo_size, s.sizes.n_negatives, use_cache=s.reference_cache
        ))  # fmt: skip
        # Phase 2: the objective, random over negative passwords; second half and unembedding frozen.
        runner.fit(ObjectivePhase(backbone, reference, freeze=s.freeze, total_steps=s.steps[2], **negative))
        # Phase 3: the objective + NTP(random, regular) + NTP(useful negatives, reverse), all trainable.
        runner.fit(JointPhase(backbone, reference, weights=s.weights, total_steps=s.steps[3], **negative))
        # The results: a stop before they are recorded complete is recorded `failed`, with how to resume.
        return runner.finish()


def _resumed(s: Settings, run_dir: Path, search: str | None) -> tuple[Path, str | None]:
    """The run directory (with `resume`, the run it continues) and why."""
    if not s.resume:
        return run_dir, None
    return resume_dir(s.resume, search or str(Path(run_dir).parent / "*"), s.config)


def _seed_runner(
    s: Settings, owner: RunDir, saved: dict[str, Any] | None, why: str | None, on_phase_end: PhaseEndHook | None = None
) -> tuple[PhaseRunner, Backbone]:
    """One seed's backbone (the password vocabulary, the backbone and every password of the run, from one seed)
    and the runner of its bookkeeping (continuing the checkpoint `saved`, if any)."""
    L.seed_everything(s.seed, workers=True, verbose=False)
    backbone, vocab = load_model(s.model, s.tokens, s.seed, s.adapter)
    backbone.set_compute(**s.compute)
    data = PasswordData(vocab, s.sizes, s.holdout_frac, s.prefix, s.seed)
    return PhaseRunner(s, owner, backbone, data, saved, why, on_phase_end), backbone


def check_stackable(settings: list[Settings]) -> None:
    """Stacked seeds share everything but the seed, train on one device, with an objective they can compute and
    without fp16 loss scaling (one scaler for all seeds)."""
    check_stackable_objective(settings[0].objective[0])
    first = numeric_config({**settings[0].config, "seed": 0})
    for s in settings[1:]:
        if numeric_config({**s.config, "seed": 0}) != first:
            raise NegrlError(
                f"seeds {settings[0].seed} and {s.seed} differ in more than the seed; stacked runs share one "
                "config (hydra/launcher=stacked groups them so)"
            )
    if settings[0].config.get("gpu_per_job"):
        raise NegrlError(
            "gpu_per_job=true gives each job its own GPU, but a stack trains on one; drop gpu_per_job, or "
            "hydra/launcher=stacked"
        )
    devices = settings[0].config["trainer"].get("devices", 1)
    if device_count(devices) != 1:
        raise NegrlError(f"trainer.devices={devices}: stacked seeds train on one device; use trainer.devices=1")
    if str(settings[0].config["trainer"].get("precision")) == "16-mixed":
        raise NegrlError(
            "trainer.precision=16-mixed scales the loss of all stacked seeds with one GradScaler, so one seed's "
            "overflow skips every seed's step; use trainer.precision=bf16-mixed, or run without hydra/launcher=stacked"
        )
