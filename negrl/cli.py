"""Command-line behaviour around Hydra: argument checks before it starts, exit codes after a run."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from negrl.distributed import is_rank_zero
from negrl.errors import NegrlError, RunFailed
from negrl.pipeline import run
from negrl.results import write_json_atomic

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")
MULTIRUN_FLAGS = ("-m", "--multirun")


def expand_ranges(argv: list[str]) -> list[str]:
    """Rewrite each `key=a-b` sweep element as the inclusive integer list a,...,b.

    `seed=0-7` becomes `seed=0,1,2,3,4,5,6,7`; ranges mix with comma lists (`seed=0-2,10`).
    Hydra's own `range()`, `glob()` and other sweep functions pass through untouched.
    A range is a sweep: without `-m` it is an error naming the fix.
    """
    multirun = any(a in MULTIRUN_FLAGS for a in argv) or is_sweep_preset(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        elements = value.split(",")
        if arg.startswith("-") or not sep or "(" in value or not any(RANGE.match(e) for e in elements):
            out.append(arg)
            continue
        if not all(RANGE.match(e) or re.fullmatch(r"-?\d+", e) for e in elements):
            out.append(arg)  # not purely integers (a date, a name): leave it to Hydra
            continue
        if not multirun:
            raise NegrlError(f"{arg} is a range of runs; sweep it with -m (python train.py -m {arg}) or give one value")
        values: list[str] = []
        for e in elements:
            m = RANGE.match(e)
            if m is None:
                values.append(e)
                continue
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise NegrlError(f"{key}={e} is an empty range; write the smaller bound first ({key}={b}-{a})")
            values += [str(i) for i in range(a, b + 1)]
        out.append(f"{key}={','.join(values)}")
    return out


def is_sweep_preset(argv: list[str], conf_dir: Path = CONF_DIR) -> bool:
    """Whether `experiment=NAME` in argv names a preset that runs as a sweep (hydra.mode: MULTIRUN)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        preset = conf_dir / "experiment" / f"{value}.yaml"
        if key.lstrip("+") == "experiment" and preset.is_file() and "mode: MULTIRUN" in preset.read_text():
            return True
    return False


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
    if multirun:
        with open_dict(cfg):
            cfg.wandb = sweep_wandb(cfg.wandb, hydra_cfg.sweep.dir, list(hydra_cfg.overrides.task))
            if cfg.get("gpu_per_job"):
                cfg.trainer.devices = job_devices(hydra_cfg.job.num, _cuda_count())
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
    if is_rank_zero():
        print(results["verdict"])
    return results["delta"]


def sweep_wandb(wandb_cfg: DictConfig, sweep_dir: str, task_overrides: list[str]) -> DictConfig:
    """A sweep's jobs share one W&B group (the preset's, else the sweep directory's name) and are
    tagged with their own overrides (`seed=3`, `freeze=false`: the knobs the sweep varies)."""
    w = OmegaConf.to_container(wandb_cfg)
    w["group"] = w.get("group") or Path(sweep_dir).name
    skip = ("hydra", "wandb", "experiment", "+experiment", "trainer.enable_progress_bar")
    tags = [o.lstrip("+") for o in task_overrides if not o.startswith(skip)]
    w["tags"] = list(dict.fromkeys([*(w.get("tags") or []), *(t[:64] for t in tags)]))
    return OmegaConf.create(w)


def job_devices(job_num: int, n_gpus: int) -> list[int]:
    """`gpu_per_job=true`: job k of a local sweep trains on GPU k mod n_gpus (one GPU per job)."""
    if n_gpus < 1:
        raise NegrlError("gpu_per_job=true needs CUDA GPUs and none is visible; drop gpu_per_job or use a GPU machine")
    return [job_num % n_gpus]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _record_failure(run_dir: Path, err: Exception) -> None:
    path = run_dir / "results.json"
    if not path.exists():  # a config error in a sweep: nothing ran, but the job must show up as failed
        run_dir.mkdir(parents=True, exist_ok=True)
        reason = f"{type(err).__name__}: {err}"
        write_json_atomic(path, {"status": "failed", "reason": reason, "run": {"dir": str(run_dir)}})
