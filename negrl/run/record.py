"""The run's record: what it has done so far, saved in every checkpoint and summarised at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunRecord:
    """Per phase: its evaluation summary (per set max/final log-likelihood), the extraction attacks on its
    final model, and its wall time; where the newest checkpoint stands; the W&B run to continue."""

    summaries: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    extraction: dict[int, dict[str, Any]] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)
    wandb_id: str | None = None
    #: (phase, step, phase_done) of the newest checkpoint; None before the first.
    saved_at: tuple[int, int, bool] | None = None
    _clock: float = field(default=0.0, repr=False)

    @property
    def first_phase(self) -> int:
        """The phase a run with this record starts in: 1, or the one its checkpoint is in (or after)."""
        if self.saved_at is None:
            return 1
        phase, _, done = self.saved_at
        return phase + 1 if done else phase

    def start_clock(self, elapsed: float = 0.0) -> None:
        """Time a phase, which had already run `elapsed` seconds before a resume."""
        self._clock = time.perf_counter() - elapsed

    @property
    def elapsed(self) -> float:
        """Seconds spent in the current phase, including before a resume."""
        return time.perf_counter() - self._clock

    def state_dict(self) -> dict[str, Any]:
        return {"summaries": self.summaries, "extraction": self.extraction, "wall": self.wall,
                "wandb_id": self.wandb_id}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint (its `phase`, `step` and `phase_done` give `saved_at`)."""
        self.summaries, self.wall = dict(state["summaries"]), dict(state["wall"])
        self.extraction = dict(state.get("extraction", {}))
        self.wandb_id = state.get("wandb_id")
        self.saved_at = (state["phase"], state["step"], state["phase_done"])
