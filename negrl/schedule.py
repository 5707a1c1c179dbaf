"""The per-phase learning-rate schedule of docs/experiment.md: linear warm-up, then a cosine over N."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, cosine_over: str = "phase") -> Callable[[int], float]:
    """Multiplier of the peak lr at 0-based step s.

    s < W: s / W; else (1 + cos(pi * (s - W) / D)) / 2 with D = N (`cosine_over='phase'`,
    the paper's quirk: it never reaches zero) or D = N - W (`cosine_over='decay'`).
    """
    if cosine_over not in ("phase", "decay"):
        raise ValueError(f"schedule.cosine_over={cosine_over!r} must be 'phase' or 'decay'")
    span = total_steps if cosine_over == "phase" else max(total_steps - warmup_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return (1 + math.cos(math.pi * (step - warmup_steps) / span)) / 2

    return factor
