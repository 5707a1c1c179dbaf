"""`run(cfg, run_dir)`: the whole experiment of docs/experiment.md, top to bottom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from negrl.checkpoint import resume_dir
from negrl.data import PasswordData
from negrl.distributed import is_rank_zero
from negrl.loading import load_model
from negrl.phases import JointPhase, NTPPhase, ObjectivePhase
from negrl.reference import ReferenceLogprobs
from negrl.rundir import RunDir
from negrl.runner import PhaseEndHook, PhaseRunner, quiet_lightning
from negrl.validation import validate, warn_degenerate


def run(
    cfg: DictConfig, run_dir: Path, on_phase_end: PhaseEndHook | None = None, search: str | None = None
) -> dict[str, Any]:
    """Run the three phases; returns the results, also in `run_dir/results.json`.

    Bad input raises `NegrlError` before anything is written. Once training starts, `results.json` says
    `running`, then `complete` or `failed` (with the reason). `on_phase_end(phase, backbone)` is called after
    each phase. `search`: where `resume=true` looks for the run to continue (a glob; default: beside `run_dir`).
    """
    s = validate(cfg, warn=False)
    why = None
    if s.resume:
        run_dir, why = resume_dir(s.resume, search or str(Path(run_dir).parent / "*"), s.config)
    with RunDir(run_dir).claimed(writer=is_rank_zero()) as owner, quiet_lightning():
        L.seed_everything(s.seed, workers=True, verbose=False)
        # The password vocabulary, the backbone and every password of the run, from one seed.
        backbone, vocab = load_model(s.model, s.tokens, s.seed, s.adapter)
        backbone.set_compute(**s.compute)
        data = PasswordData(vocab, s.sizes, s.holdout_frac, s.prefix, s.seed)
        warn_degenerate(s)  # after the last check that can refuse the run
        runner = PhaseRunner(s, owner, backbone, data, why, on_phase_end)
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
        return runner.finish()
