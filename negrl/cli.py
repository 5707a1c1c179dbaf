"""Command-line behaviour around Hydra: argument checks before it starts, exit codes after a run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from negrl.errors import NegrlError, RunFailed
from negrl.pipeline import run
from negrl.results import write_json_atomic

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """`model=NAME` (and other group choices) must name a file of the group, e.g. conf/model/NAME.yaml."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if not sep or "." in group or "/" in group or not (conf_dir / group).is_dir() or "(" in value:
            continue
        known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in known:
                raise NegrlError(f"{group}={choice} is unknown; choose one of: {', '.join(known)}")


def run_from_hydra(cfg: DictConfig) -> float:
    """Run one job of `train.py`; returns the held-out delta (NaN for a failed job of a sweep).

    A single run exits with code 2 on bad input (nothing written) and 1 on a failed run.
    In a multirun, a failing job is recorded in its results.json and the sweep goes on.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        results = run(cfg, run_dir)
    except (NegrlError, RunFailed) as err:
        print(f"negrl: error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(err.exit_code)
        _record_failure(run_dir, err)
        return math.nan
    except Exception as err:  # a bug or a crash: recorded by run(); a sweep goes on
        if not multirun:
            raise
        print(f"negrl: job {hydra_cfg.job.num} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return math.nan
    print(results["verdict"])
    return results["delta"]


def _record_failure(run_dir: Path, err: Exception) -> None:
    path = run_dir / "results.json"
    if not path.exists():  # a config error in a sweep: nothing ran, but the job must show up as failed
        run_dir.mkdir(parents=True, exist_ok=True)
        reason = f"{type(err).__name__}: {err}"
        write_json_atomic(path, {"status": "failed", "reason": reason, "run": {"dir": str(run_dir)}})
