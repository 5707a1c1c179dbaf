"""The paper's metric from a run's per-phase evaluation summaries: one definition, for results.json and for
runs read back from W&B (no torch)."""

from __future__ import annotations

from typing import Any

from negrl.core.stats import chance_ll


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
    }


def final_summary(phase3: dict[str, dict[str, float]], baseline: float) -> dict[str, float]:
    """The last phase-3 evaluation of each set, next to the max (which is biased upward): its delta vs chance and
    held-out minus random."""
    final = {name: v["final"] for name, v in phase3.items()}
    return {**final, "delta": final["heldout"] - baseline, "heldout_minus_random": final["heldout"] - final["random"]}
