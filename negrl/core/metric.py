"""The paper's metric from a run's per-phase evaluation summaries: one definition, for results.json and for
runs read back from W&B (no torch)."""

from __future__ import annotations

import math
from typing import Any

from negrl.core.stats import chance_ll

#: A model that learned the task puts chance 1/K on each letter of a random password: its random-password control
#: ends within this many nats per token of log(1/K) (within about 2% of the chance probability).
LEARNED_NATS = 0.02
#: A run with a set that ends phase 3 this many nats per token below chance (and below its best of the run), or
#: with a non-finite evaluation, diverged.
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
    `diverged` (a non-finite evaluation, or a set that ends phase 3 DIVERGED_NATS below chance and below its best of
    the run), with the control's final delta and a one-line `note` (empty when the task was learned)."""
    phase3 = phases[3]
    control = phase3["random"]["final"] - baseline
    values = [v for p in phases.values() for s in p.values() for v in (s["max"], s["final"])]
    best = {n: max(phases[p][n]["max"] for p in phases) for n in phase3}
    fell = [
        n for n, s in phase3.items() if s["final"] < baseline - DIVERGED_NATS and s["final"] < best[n] - DIVERGED_NATS
    ]
    diverged = not all(math.isfinite(v) for v in values) or bool(fell)
    learned = not diverged and control >= -LEARNED_NATS
    if diverged:
        worst = min(phase3, key=lambda n: phase3[n]["final"] if math.isfinite(phase3[n]["final"]) else -math.inf)
        note = (
            f"diverged: the {worst} set ends phase 3 at LL {phase3[worst]['final']:.4g} per token against chance "
            f"{baseline:.4f}; no conclusion about negatives (lower optim.lr, keep optim.grad_clip)"
        )
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
