"""Checkpoints of a run in progress, and finding the run to resume.

One file, `RUN_DIR/checkpoints/last.pt`, replaced atomically: the model, the frozen
reference, optimizer and scheduler state, the position in the phase's fixed data order,
RNG states, evaluation state (running maxima) and the config it belongs to.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negrl.errors import NegrlError

CHECKPOINT = Path("checkpoints") / "last.pt"
#: Config keys that do not change the numbers of a run, ignored when matching a resume.
NEUTRAL_KEYS = ("resume", "checkpoint", "wandb")
NEUTRAL_TRAINER_KEYS = ("enable_progress_bar",)


def save_atomic(state: dict[str, Any], run_dir: Path) -> Path:
    """Write `state` to a temporary file beside the checkpoint, then rename it into place."""
    path = Path(run_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".last.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of `run_dir`, or None if it has none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def numeric_config(c: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that determines a run's numbers."""
    out = {k: v for k, v in c.items() if k not in NEUTRAL_KEYS}
    out["trainer"] = {k: v for k, v in c["trainer"].items() if k not in NEUTRAL_TRAINER_KEYS}
    return out


def resume_dir(resume: Any, new_run_dir: Path, c: dict[str, Any]) -> Path:
    """The run directory to continue: `resume=PATH`, or with `resume=true` the newest
    unfinished run with a checkpoint and the same config under the runs root."""
    if isinstance(resume, str) and resume.lower() not in ("true", "1", "yes"):
        run_dir = Path(resume)
        state = load(run_dir)
        if state is None:
            raise NegrlError(f"resume={resume}: no checkpoint at {run_dir / CHECKPOINT}; check the run directory")
        check_same_config(state["config"], c, run_dir)
        return run_dir
    root = Path(new_run_dir).parents[1]
    candidates = sorted(root.glob(f"*/*/{CHECKPOINT}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        run_dir = path.parents[1]
        if run_dir != Path(new_run_dir) and numeric_config(load(run_dir)["config"]) == numeric_config(c):
            return run_dir
    raise NegrlError(
        f"resume=true: no checkpoint of a run with this config under {root}; "
        "pass resume=RUN_DIR, or drop resume to start afresh"
    )


def check_same_config(saved: dict[str, Any], c: dict[str, Any], run_dir: Path) -> None:
    a, b = numeric_config(saved), numeric_config(c)
    if a != b:
        diff = sorted(_diff(a, b))
        raise NegrlError(
            f"resume: the config differs from the run in {run_dir} at {', '.join(diff[:5])}; "
            "resume with the same overrides, or start a new run"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')} ({a!r} -> {b!r})"]


class Checkpointer:
    """Saves the run's state every `every` steps inside a phase and at each phase end (every=0: ends only)."""

    def __init__(
        self,
        run_dir: Path,
        every: int,
        config: dict[str, Any],
        backbone: torch.nn.Module,
        evaluator: Any,
        write: bool = True,
    ):
        """`write=False`: keep the bookkeeping (wall times, summaries) but save nothing (DDP ranks > 0)."""
        self.run_dir, self.every, self.config, self.write = Path(run_dir), every, config, write
        self.backbone, self.evaluator = backbone, evaluator
        self.reference: Any = None  # the ReferenceLogprobs, from phase 2 on
        self.summaries: dict[int, Any] = {}
        self.extraction: dict[int, Any] = {}  # per phase: the extraction attacks on its final model
        self.wall: dict[int, float] = {}
        self.wandb_id: str | None = None

    def on_step(self, module: Any, step: int) -> None:
        """Called after the update (and evaluation) of `step`; saves when due, never on a phase's last step."""
        if self.every and (step + 1) % self.every == 0 and step < module.total_steps - 1:
            trainer = module.trainer
            self.save(
                module.phase, step, phase_done=False, elapsed=module.elapsed,
                optimizer=trainer.optimizers[0].state_dict(),
                scheduler=trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            )  # fmt: skip

    def save(self, phase: int, step: int, phase_done: bool, elapsed: float = 0.0, **optim_state: Any) -> None:
        if not self.write:
            return
        state = {
            "phase": phase,
            "step": step,
            "phase_done": phase_done,
            "elapsed": elapsed,
            "backbone": self.backbone.state_dict(),
            "reference": None
            if self.reference is None
            else {"model": self.reference.reference.state_dict(), "cache": self.reference.state_dict()},
            "evaluator": self.evaluator.state_dict(),
            "summaries": self.summaries,
            "extraction": self.extraction,
            "wall": self.wall,
            "rng": rng_states(),
            "config": self.config,
            "wandb_id": self.wandb_id,
            **optim_state,
        }
        save_atomic(state, self.run_dir)
