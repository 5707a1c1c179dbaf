"""Runs read back from Weights & Biases (optional, for the notebook): the same `Run` objects as from disk,
their metric recomputed from the logged evaluation history by `negrl.core.metric.metric_summary`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from negrl.core import metric
from negrl.core.protocol import EVAL_SETS
from negrl.report.curves import Curves, curves_from_rows
from negrl.report.runs import Run, check_complete, config_choices, config_letters

WANDB_STATES = {"finished": "complete", "running": "running", "pending": "running"}


def run_from_wandb(wandb_run: Any) -> Run:
    """A W&B run (from `wandb.Api().runs(...)`) as a `Run`: its config, eval history and phase-3 maxima."""
    config = dict(wandb_run.config)
    keys = [f"eval/{s}_ll" for s in EVAL_SETS]
    rows = list(wandb_run.scan_history(keys=[*keys, "phase", "trainer/global_step"]))
    curves = curves_from_rows(rows, step_key="trainer/global_step")
    state = str(getattr(wandb_run, "state", "unknown"))
    where = wandb_run.path if isinstance(wandb_run.path, str) else "/".join(map(str, wandb_run.path))
    run = Run(path=Path(where), rel=str(wandb_run.name), status=WANDB_STATES.get(state, "failed"))
    run.config = config or None
    run.choices = config_choices(config)
    run.curves = curves
    if run.status != "complete":
        run.reason = f"W&B state: {state}"
        return run
    k = config_letters(config)
    if k is None:
        run.status, run.reason = "invalid", "no tokens.letters in the W&B config: chance log(1/K) is unknown"
        return run
    run.results = results_from_curves(curves, k) if curves is not None else None
    runtime = dict(wandb_run.summary).get("_runtime") if wandb_run.summary is not None else None
    if run.results is not None and isinstance(runtime, (int, float)):
        run.results["wall_time_s"] = float(runtime)
    if run.results is not None and isinstance(getattr(wandb_run, "created_at", None), str):
        run.results["run"] = {"seed": config.get("seed"), "started": wandb_run.created_at}
    run.status, run.reason = check_complete(run, "no config in W&B") if run.results else ("invalid", "no phase 3")
    return run


def phase_summary(curves: Curves) -> dict[int, dict[str, dict[str, float]]]:
    """Each phase's per-set max and final LL over its evaluations, as the pipeline passes them to `summarize`."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for phase in np.unique(curves.phase):
        out[int(phase)] = {}
        for name in EVAL_SETS:
            values = curves.ll[name][curves.phase == phase]
            values = values[~np.isnan(values)]
            top, last = (float(values.max()), float(values[-1])) if values.size else (math.nan, math.nan)
            out[int(phase)][name] = {"max": top, "final": last}
    return out


def results_from_curves(curves: Curves, n_letters: int) -> dict[str, Any] | None:
    """results.json's metric and control recomputed from the curves by `negrl.core.metric.metric_summary` (maxima over
    phase-3 evaluations against chance log(1/K), K = `n_letters`); None without a phase-3 evaluation."""
    phases = phase_summary(curves)
    if 3 not in phases:
        return None
    return metric.metric_summary(phases, n_letters)
