"""A run's evaluation curves: each set's mean per-token log-likelihood by global step and phase, and how the
report pools values over seeds.

Read from a run's metrics.csv or from a W&B history (`curves_from_rows`); the report pools them over a group's
seeds into fig_curves (`stack_curves`, `pooled`) and, for W&B runs, recomputes the metric from them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from negrl.core.protocol import EVAL_SETS


@dataclass
class Curves:
    """The evaluation rows of a run: global step, phase, and each set's mean per-token LL."""

    step: np.ndarray
    phase: np.ndarray
    ll: dict[str, np.ndarray]

    def boundaries(self) -> list[int]:
        """The first global step of every phase after the first."""
        return [int(self.step[self.phase == p].min()) for p in np.unique(self.phase)[1:]]


def as_float(value: Any) -> float:
    """A logged value as a float: NaN if it is missing, empty or not a number."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_curves(path: Path) -> Curves | None:
    """The evaluation rows of a metrics.csv (None if there is no file or no evaluation row)."""
    try:
        with open(path, newline="") as f:
            return curves_from_rows(csv.DictReader(f), step_key="step")
    except (OSError, ValueError, csv.Error):
        return None


def curves_from_rows(rows: Iterable[Mapping[str, Any]], step_key: str = "step") -> Curves | None:
    """Curves from metric rows (a CSV or a W&B history); a step logged twice keeps its last row."""
    by_step: dict[int, tuple[int, dict[str, float]]] = {}
    for row in rows:
        values = {s: as_float(row.get(f"eval/{s}_ll")) for s in EVAL_SETS}
        step, phase = as_float(row.get(step_key)), as_float(row.get("phase"))
        if math.isnan(step) or math.isnan(phase) or all(math.isnan(v) for v in values.values()):
            continue
        by_step[int(step)] = (int(phase), values)
    if not by_step:
        return None
    steps = sorted(by_step)
    return Curves(
        step=np.array(steps, dtype=int),
        phase=np.array([by_step[s][0] for s in steps], dtype=int),
        ll={s: np.array([by_step[t][1][s] for t in steps], dtype=float) for s in EVAL_SETS},
    )


def stack_curves(curves: Sequence[Curves]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The union of the runs' evaluation steps, and per set a (runs x steps) array of their LL (NaN where a run did
    not evaluate at a step)."""
    steps = np.unique(np.concatenate([c.step for c in curves])) if curves else np.array([], dtype=int)
    stacks = {}
    for s in EVAL_SETS:
        stacks[s] = np.full((len(curves), steps.size), np.nan)
        for i, c in enumerate(curves):
            stacks[s][i, np.searchsorted(steps, c.step)] = c.ll[s]
    return steps, stacks


def pooled(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise mean and sample standard deviation (ddof=1) over the rows (seeds) of `stack`, NaN-aware: NaN
    where no row has a value (mean) or fewer than two have (std)."""
    known = np.isfinite(stack)
    count = known.sum(axis=0)
    empty = np.full(stack.shape[1], np.nan)
    mean = np.divide(np.where(known, stack, 0.0).sum(axis=0), count, out=empty.copy(), where=count > 0)
    squares = np.where(known, stack - mean, 0.0) ** 2
    var = np.divide(squares.sum(axis=0), count - 1, out=empty.copy(), where=count > 1)
    return mean, np.sqrt(var)
