"""The paper's metric from a run's per-phase evaluation summaries: one definition, for results.json and for
runs read back from W&B (no torch)."""

from __future__ import annotations

import math
from typing import Any

from negrl.core.stats import chance_ll

#: A model that learned the task puts chance 1/K on each letter of a random password: its random-password control
#: ends within this many nats per token of log(1/K) (within about 2% of the chance probability).
LEARNED_NATS = 0.02
#: A run whose random-password control ends phase 3 this many nats per token below chance (and below its best of the
#: run), or with a non-finite evaluation, diverged. Only the control: it is trained towards chance in every phase, so
#: its fall is a broken run, while the negatives (held-out, useful) are what DPO pushes down, without bound (phase 2
#: gives them "extremely low probability"; without prefixes phase 3 evaluates them in that same context).
DIVERGED_NATS = 1.0


def metric_summary(phases: dict[int, dict[str, dict[str, float]]], n_letters: int) -> dict[str, Any]:
    """The paper's metric (the max held-out log-likelihood over phase 3's evaluations) and its random-password
    control, each against chance `baseline` = log(1/K), K = `n_letters`."""
    baseline = chance_ll(n_letters)
    metric = phases[3]["heldout"]["max"]
    control = phases[3]["random"]["max"]
    return {
        "status": "complete",
        "metric": metric,
        "delta": metric - baseline,
        "baseline": baseline,
        "control": {"metric": control, "delta": control - baseline},
        "heldout_minus_random": metric - control,
        "final": final_summary(phases[3], baseline),
        "task": task_check(phases, baseline),
    }


def task_check(phases: dict[int, dict[str, dict[str, float]]], baseline: float) -> dict[str, Any]:
    """Whether the run can speak about negatives at all, measured on its evaluations: `learned` (the random-password
    control ends phase 3 within LEARNED_NATS of chance: the model learned uniform letters after the prefix) and
    `diverged` (a non-finite evaluation, or the random-password control ending phase 3 DIVERGED_NATS below chance
    and below its best of the run; negatives far below chance are DPO's suppression, not divergence), with the
    control's final delta and a one-line `note` (empty when the task was learned)."""
    phase3 = phases[3]
    final = phase3["random"]["final"]
    control = final - baseline
    not_finite = [(p, n) for p, sets in phases.items() for n, s in sets.items()
                  if not (math.isfinite(s["max"]) and math.isfinite(s["final"]))]  # fmt: skip
    best = max(phases[p]["random"]["max"] for p in phases)
    fell = final < baseline - DIVERGED_NATS and final < best - DIVERGED_NATS
    diverged = bool(not_finite) or fell
    learned = not diverged and control >= -LEARNED_NATS
    if diverged:
        what = (
            f"the {not_finite[0][1]} set's evaluation in phase {not_finite[0][0]} is not finite"
            if not_finite
            else f"the random-password control ends phase 3 at LL {final:.4g} per token against chance {baseline:.4f}"
        )
        note = f"diverged: {what}; no conclusion about negatives (lower optim.lr, keep optim.grad_clip)"
    elif not learned:
        note = (
            f"the model did not learn the task: its random-password control ends {-control:.4f} nats per token "
            f"below chance (x{math.exp(control):.3f} the chance probability; learned: within {LEARNED_NATS}), "
            "so held-out negatives against chance say nothing about negatives; held-out - random still does"
        )
    else:
        note = ""
    return {"learned": learned, "diverged": diverged, "control_final_delta": control, "note": note}


def final_summary(phase3: dict[str, dict[str, float]], baseline: float) -> dict[str, float]:
    """The last phase-3 evaluation of each set, next to the max (which is biased upward): its delta vs chance and
    held-out minus random."""
    final = {name: v["final"] for name, v in phase3.items()}
    return {**final, "delta": final["heldout"] - baseline, "heldout_minus_random": final["heldout"] - final["random"]}
