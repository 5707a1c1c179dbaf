"""negrl's Hydra launchers.

`hydra/launcher=stacked`: the jobs of a sweep that differ only in `seed` train together in one process
(negrl.stacked), at most `max_stack` at a time; a job alone in its group runs as a plain run. Every job keeps what
Hydra's basic launcher gives it: its own directory with `.hydra/`, its results.json, metrics.csv and W&B run, its
return value and the sweep's callbacks.

    python train.py -m seed=0-7 hydra/launcher=stacked   (conf/hydra/launcher/stacked.yaml)

`hydra/launcher=local`: Hydra's joblib launcher (N worker processes), whose workers stop on SIGINT and SIGTERM
from their start (`LocalLauncher`).

    python train.py -m seed=0-7 hydra/launcher=local hydra.launcher.n_jobs=4   (conf/hydra/launcher/local.yaml)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig, open_dict

from negrl.core.errors import NegrlError
from negrl.run import signals

log = logging.getLogger(__name__)


def seed_groups(job_overrides: Sequence[Sequence[str]], max_stack: int) -> list[list[int]]:
    """Indices of the jobs that differ only in `seed`, in sweep order, in groups of at most `max_stack`."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        key = tuple(o for o in overrides if o.partition("=")[0].lstrip("+") != "seed")
        groups.setdefault(key, []).append(i)
    return [idx[i : i + max_stack] for idx in groups.values() for i in range(0, len(idx), max_stack)]


@dataclass
class PreparedJob:
    """A job whose directory and `.hydra/` files Hydra has written, ready to train."""

    ret: JobReturn
    config: DictConfig  # the sweep config (with `hydra`), for the callbacks
    cfg: DictConfig  # the task's config
    hydra_cfg: DictConfig  # its `hydra` node (HydraConfig.get() inside the job)


def check_max_stack(value: Any) -> int:
    """`hydra.launcher.max_stack`: a whole number of at least 1 (checked by `train.py` before any job starts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NegrlError(
            f"hydra.launcher.max_stack={value!r} must be an integer of at least 1 (the seeds trained together); "
            "fix hydra.launcher.max_stack"
        )
    return value


class StackedLauncher(Launcher):
    """Hydra's basic launcher, but each group of jobs that differ only in `seed` trains as one stack."""

    def __init__(self, max_stack: int = 8) -> None:
        super().__init__()
        self.max_stack = check_max_stack(max_stack)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from negrl.cli import run_stacked_from_hydra  # negrl.cli imports the pipeline: only when a sweep starts

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups = seed_groups(job_overrides, self.max_stack)
        log.info(f"Launching {len(job_overrides)} jobs in {len(groups)} stack(s) of at most {self.max_stack}")
        returns: dict[int, JobReturn] = {}
        for group in groups:
            jobs = [self.prepare(initial_job_idx + i, job_overrides[i]) for i in group]
            callbacks = self.hydra_context.callbacks
            for job in jobs:
                callbacks.on_job_start(config=job.config, task_function=self.task_function)
            for i, job, value in zip(group, jobs, run_stacked_from_hydra([(j.cfg, j.hydra_cfg) for j in jobs])):
                job.ret.return_value = value
                job.ret.status = JobStatus.FAILED if isinstance(value, BaseException) else JobStatus.COMPLETED
                callbacks.on_job_end(config=job.config, job_return=job.ret)
                returns[i] = job.ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[i] for i in range(len(job_overrides))]

    def prepare(self, idx: int, overrides: Sequence[str]) -> PreparedJob:
        """Job `idx`'s directory, `.hydra/` files and logging, as Hydra's `run_job` makes them (with no callbacks:
        they are called when the job has run)."""
        assert self.config is not None and self.hydra_context is not None
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id, config.hydra.job.num = idx, idx
        seen: dict[str, Any] = {}

        def collect(task_cfg: DictConfig) -> None:
            seen["cfg"], seen["hydra"] = task_cfg, copy.deepcopy(HydraConfig.get())

        quiet = HydraContext(config_loader=self.hydra_context.config_loader, callbacks=Callbacks())
        ret = run_job(collect, config, "hydra.sweep.dir", "hydra.sweep.subdir", hydra_context=quiet)
        return PreparedJob(ret, config, seen["cfg"], seen["hydra"])


class LocalLauncher(JoblibLauncher):
    """Hydra's joblib launcher, with negrl's signal handling in each worker process from its start (the pool's
    initializer, `signals.install`), not only once its first job runs: a worker the signal reached before that
    died of it, and its pool then killed the other workers, mid-way through recording their stopped jobs. A worker
    that dies all the same (the signal lands as it starts, before the initializer) ends the sweep as a signal does
    (`cli.guarded`: one line, exit 128 + the signal), not with joblib's traceback of a worker "unexpectedly
    terminated"."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        self.joblib["initializer"] = signals.install
        signum = signals.received()
        if signum is not None:  # before any worker could get it (the sweep being composed): no job starts
            signals.stop(signum)
        try:
            return super().launch(job_overrides, initial_job_idx)
        except Exception:
            signum = signals.received()
            if signum is None:
                raise
        signals.stop(signum)  # out of the `except`: not chained to joblib's error
