"""Checkpoints of a run in progress, and finding the run to resume.

One file, `RUN_DIR/checkpoints/last.pt`, replaced atomically: the model, the frozen
reference, optimizer and scheduler state, the position in the phase's fixed data order,
RNG states, evaluation state (running maxima), the run's record and the config it belongs to.
"""

from __future__ import annotations

import glob
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from negrl.core.errors import NegrlError
from negrl.run.rundir import RunDir, write_atomic

#: Config keys that do not change the numbers of a run, ignored when matching a resume.
NEUTRAL_KEYS = ("resume", "checkpoint", "wandb")
NEUTRAL_TRAINER_KEYS = ("enable_progress_bar",)


def save_atomic(state: dict[str, Any], owner: RunDir) -> Path:
    """Write `state` as the run's checkpoint, atomically (a crash leaves the previous one)."""
    write_atomic(owner.checkpoint, lambda tmp: torch.save(state, tmp))
    return owner.checkpoint


#: What every checkpoint holds (`PhaseRunner._save`) and a resume reads before the run writes anything; one without
#: them is not a negrl checkpoint.
REQUIRED_KEYS = ("config", "backbone", "rng", "phase", "step", "phase_done", "summaries", "wall")


def load(owner: RunDir) -> dict[str, Any] | None:
    """The run's checkpoint, or None if it has none. One that cannot be read (truncated, empty, overwritten) is a
    `NegrlError` that names it."""
    if not owner.has_checkpoint():
        return None
    try:
        return torch.load(owner.checkpoint, map_location="cpu", weights_only=False)
    except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, OSError, ...
        raise damaged(owner, f"{type(err).__name__}: {err}".splitlines()[0]) from None


def resumed_state(resume: bool | str, owner: RunDir, c: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint a run with `resume` continues in `owner` (None without `resume`), read, checked to be negrl's
    and matched against the config `c` (its own config: config.yaml may be a later fresh run's) before the run
    writes anything."""
    if not resume:
        return None
    state = load(owner)
    if state is None:
        raise NegrlError(f"resume: no checkpoint at {owner.checkpoint}; check the run directory")
    missing = [k for k in REQUIRED_KEYS if k not in state] if isinstance(state, dict) else ["a dict of its state"]
    if missing:
        raise damaged(owner, f"it lacks {', '.join(missing)}")
    check_same_config(state["config"], c, owner.path)
    return state


def damaged(owner: RunDir, problem: str) -> NegrlError:
    """The one-line refusal of a checkpoint that cannot be resumed."""
    return NegrlError(
        f"resume: the checkpoint {owner.checkpoint} cannot be resumed ({problem}); "
        "resume from an intact copy of it, or drop resume to start the run afresh"
    )


def restore_weights(model: torch.nn.Module, state: dict[str, Any], owner: RunDir) -> None:
    """Load the checkpoint's weights into `model`; weights of another shape or names are a `NegrlError`."""
    try:
        model.load_state_dict(state["backbone"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        first = " ".join(str(err).split())  # PyTorch lists each mismatch on a line of its own
        raise damaged(owner, f"its weights do not fit this model: {first[:300]}") from None


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def numeric_config(c: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that determines a run's numbers. `trainer.devices` counts as how many devices, not which:
    `gpu_per_job` puts job k on GPU k mod n, so a sweep resumed on another number of GPUs still finds its runs."""
    out = {k: v for k, v in c.items() if k not in NEUTRAL_KEYS}
    out["trainer"] = {k: v for k, v in c["trainer"].items() if k not in NEUTRAL_TRAINER_KEYS}
    if "devices" in out["trainer"]:
        out["trainer"]["devices"] = device_count(out["trainer"]["devices"])
    return out


def device_count(devices: Any) -> Any:
    """`trainer.devices` as a count: a list of device indices is its length; a number or "auto" stays as it is."""
    return len(devices) if isinstance(devices, (list, tuple)) else devices


def resume_dir(resume: bool | str, search: str, c: dict[str, Any]) -> tuple[Path, str]:
    """The run directory to continue and why: `resume=PATH`, or with `resume=true` the newest unfinished
    run (a checkpoint, no complete results.json) of the same config among the directories matching the glob
    `search` (where runs of this config are written). Reads only each candidate's config.yaml."""
    if resume is not True:
        owner = RunDir(resume)
        if owner.status() == "complete":
            raise NegrlError(
                f"resume={resume}: that run is complete, nothing to resume (its results: {owner.results}); "
                "drop resume to start a new run"
            )
        if not owner.has_checkpoint():
            raise NegrlError(f"resume={resume}: no checkpoint at {owner.checkpoint}; check the run directory")
        check_same_config(owner.read_config(), c, owner.path)
        return owner.path, "resume=RUN_DIR"
    found = []
    for path in glob.glob(search):
        owner = RunDir(path)
        if owner.has_checkpoint() and owner.status() != "complete":
            saved = owner.read_config()
            if saved is not None and numeric_config(saved) == numeric_config(c):
                found.append((owner.checkpoint.stat().st_mtime, owner.path))
    if not found:
        raise NegrlError(
            f"resume=true: no unfinished run of this config with a checkpoint in {search}; "
            "pass resume=RUN_DIR, or drop resume to start afresh"
        )
    run_dir = max(found)[1]
    return run_dir, f"the newest of {len(found)} unfinished run(s) of this config in {search}"


def sweep_resume_dir(search: str, c: dict[str, Any]) -> tuple[str, Path | None, str]:
    """`resume=true` for a job of a sweep: ("continue", dir, why) as `resume_dir`; else ("complete", dir, why) when a
    complete run of this config is in `search` (nothing to do), else ("fresh", None, why): the job never got to
    its first checkpoint, so it starts afresh."""
    try:
        run_dir, why = resume_dir(True, search, c)
        return "continue", run_dir, why
    except NegrlError:
        pass
    complete = []
    for path in glob.glob(search):
        owner = RunDir(path)
        if owner.status() == "complete":
            saved = owner.read_config()
            if saved is not None and numeric_config(saved) == numeric_config(c):
                complete.append((owner.results.stat().st_mtime, owner.path))
    if complete:
        return "complete", max(complete)[1], "complete, nothing to do"
    return "fresh", None, f"no run of this config with a checkpoint in {search}: started afresh"


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
