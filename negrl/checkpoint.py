"""Checkpoints of a run in progress, and finding the run to resume.

One file, `RUN_DIR/checkpoints/last.pt`, replaced atomically: the model, the frozen
reference, optimizer and scheduler state, the position in the phase's fixed data order,
RNG states, evaluation state (running maxima) and the config it belongs to.
"""

from __future__ import annotations

import glob
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from negrl.errors import NegrlError
from negrl.results import read_status

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


def resume_dir(resume: bool | str, search: str, c: dict[str, Any]) -> tuple[Path, str]:
    """The run directory to continue and why: `resume=PATH`, or with `resume=true` the newest unfinished
    run (a checkpoint, no complete results.json) of the same config among the directories matching the glob
    `search` (where runs of this config are written). Reads only each candidate's config.yaml."""
    if resume is not True:
        run_dir = Path(resume)
        if not (run_dir / CHECKPOINT).is_file():
            raise NegrlError(f"resume={resume}: no checkpoint at {run_dir / CHECKPOINT}; check the run directory")
        check_same_config(_saved_config(run_dir), c, run_dir)
        return run_dir, "resume=RUN_DIR"
    found = []
    for path in glob.glob(search):
        run_dir = Path(path)
        if (run_dir / CHECKPOINT).is_file() and read_status(run_dir) != "complete":
            saved = _saved_config(run_dir)
            if saved is not None and numeric_config(saved) == numeric_config(c):
                found.append(((run_dir / CHECKPOINT).stat().st_mtime, run_dir))
    if not found:
        raise NegrlError(
            f"resume=true: no unfinished run of this config with a checkpoint in {search}; "
            "pass resume=RUN_DIR, or drop resume to start afresh"
        )
    run_dir = max(found)[1]
    return run_dir, f"the newest of {len(found)} unfinished run(s) of this config in {search}"


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run recorded in its config.yaml (None if it has none or it is unreadable)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml"), resolve=True)
    except (OSError, ValueError, OmegaConfBaseException):
        return None


def check_same_config(saved: dict[str, Any] | None, c: dict[str, Any], run_dir: Path) -> None:
    if saved is None:
        raise NegrlError(f"resume: {run_dir} has no readable config.yaml; resume a run directory written by negrl")
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
        self.run_logger: Any = None  # flushed before each save, so metrics.csv holds every row up to it
        self.last_saved: tuple[int, int] | None = None  # (phase, step) of the newest checkpoint

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
        if self.run_logger is not None:
            self.run_logger.flush()
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
        self.last_saved = (phase, step)
