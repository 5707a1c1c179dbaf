"""The per-phase learning-rate schedule of docs/experiment.md: linear warm-up, then a cosine over N."""

from __future__ import annotations

import math
from collections.abc import Callable

#: The cosine's length D for `cosine_over`, from the phase's N steps and W warm-up steps.
COSINE_SPAN: dict[str, Callable[[int, int], int]] = {
    "phase": lambda n, w: n,
    "decay": lambda n, w: max(n - w, 1),
}


def warmup_cosine(warmup_steps: int, total_steps: int, cosine_over: str = "phase") -> Callable[[int], float]:
    """Multiplier of the peak lr at 0-based step s.

    s < W: s / W; else (1 + cos(pi * (s - W) / D)) / 2 with D = N (`cosine_over='phase'`,
    the paper's quirk: it never reaches zero) or D = N - W (`cosine_over='decay'`).
    """
    span = COSINE_SPAN[cosine_over](total_steps, warmup_steps)  # the choices are checked by negrl.run.config

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return (1 + math.cos(math.pi * (step - warmup_steps) / span)) / 2

    return factor
