"""Command-line behaviour around Hydra: argument checks before it starts, exit codes after a run."""

from __future__ import annotations

import copy
import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from negrl.core.distributed import is_rank_zero
from negrl.core.errors import NegrlError, RunFailed
from negrl.launcher import check_max_stack
from negrl.model.hub import check_weights_at_hand
from negrl.pipeline import check_stackable, run, run_stacked
from negrl.run import checkpoint, signals
from negrl.run.config import CONF_DIR
from negrl.run.overrides import (
    CommandLine,
    check_group_choices,
    check_not_a_hidden_sweep,
    expand_ranges,
    read_command_line,
    rename_deprecated,
    sweep_jobs,
)
from negrl.run.rundir import RunDir, read_json, write_json_atomic
from negrl.run.validation import validate, validate_sweep
from negrl.stacked.runner import StackFailed

#: hydra/launcher=stacked (conf/hydra/launcher/stacked.yaml): a sweep's jobs that differ only in `seed` train together.
STACKED_LAUNCHER = "hydra_plugins.negrl_launcher.StackedLauncher"
#: hydra/launcher=local (conf/hydra/launcher/local.yaml): Hydra's joblib launcher; its jobs run in worker processes.
LOCAL_LAUNCHER = "hydra_plugins.negrl_launcher.LocalLauncher"
#: Hydra flags that print something instead of running (no check needed).
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-sc", "--shell-completion", "--version")


def preflight(argv: list[str], conf_dir: Path = CONF_DIR, cmd: CommandLine | None = None) -> list[str]:
    """Compose and check every job of `python train.py ARGV` before Hydra starts, so that a refused command
    writes nothing. Returns argv with a single run's directory pinned (`hydra.run.dir`) to the one checked;
    with `resume=true`, to the run it continues (and `resume` to that directory). `cmd`: ARGV already read
    (`read_command_line`, by train.py before it imports torch)."""
    if "LOCAL_RANK" in os.environ or any(a.partition("=")[0] in INFO_FLAGS for a in argv):
        return argv  # a DDP worker of a checked run, or Hydra's --help/--cfg/--info: nothing runs
    cmd = cmd or read_command_line(argv, conf_dir)
    base = cmd.base
    if cmd.is_sweep:
        launcher = str(OmegaConf.select(base, "hydra.launcher._target_") or "")
        _LAUNCH.update(multirun=True, workers=launcher == LOCAL_LAUNCHER or "joblib" in launcher.lower())
        jobs, swept = sweep_jobs(cmd.parser, cmd.overrides, base)
        stacked = launcher == STACKED_LAUNCHER
        if stacked:
            check_max_stack(OmegaConf.select(base, "hydra.launcher.max_stack"))
        checked = validate_sweep(jobs, swept, conf_dir, (lambda s: check_stackable([s])) if stacked else None)
        check_weights_at_hand([s.model for s in checked])
        return [*argv, *knob_subdir(argv, jobs, swept, base, conf_dir)]
    check_not_a_hidden_sweep(cmd)
    c = validate(base, warn=False).config
    check_weights_at_hand([c["model"]])
    if c["resume"]:
        search = resume_search(base.hydra, base, multirun=False)
        run_dir, why = checkpoint.resume_dir(c["resume"], search, c)
        if c["resume"] is True:
            print(f"negrl: resume=true continues {run_dir}: {why}")
        return [*argv, f"resume={_quoted(run_dir)}", f"hydra.run.dir={_quoted(run_dir)}"]
    run_dir = Path(base.hydra.run.dir)
    RunDir(run_dir).check_usable()
    return [*argv, f"hydra.run.dir={_quoted(run_dir)}"]


#: How this process runs what `python train.py` asked: a sweep or not, its jobs in worker processes (Hydra's joblib
#: launcher) or here (`guarded`: set by `command_line`).
_LAUNCH: dict[str, bool] = {"multirun": False, "workers": False, "guarded": False}


def command_line(hydra_main: Callable[[], Any], argv: list[str] | None = None,
                 rewritten: list[str] | None = None, cmd: CommandLine | None = None) -> None:  # fmt: skip
    """`python train.py ARGV`: renamed keys and ranges rewritten (`rewritten`: already done, and `cmd` read from it,
    by train.py before it imports torch), every job checked (a refusal: one line, exit 2, nothing written), then
    Hydra's main under `guarded`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if rewritten is None:
            rewritten = expand_ranges(rename_deprecated(argv))
            check_group_choices(rewritten)
        sys.argv[1:] = preflight(rewritten, cmd=cmd)  # every job checked before Hydra writes anything
    except NegrlError as err:
        print(f"negrl: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    guarded(hydra_main, argv)


def guarded(hydra_main: Callable[[], Any], argv: list[str]) -> None:
    """Hydra's main with SIGINT and SIGTERM stopping the run, or the whole sweep (`negrl.run.signals`): exit code
    128 + the signal's number (130, 143) and, for a sweep, one line saying how to continue it. A local sweep's
    workers get the signal (the terminal's or `timeout`'s process group, else passed on) and this process waits for
    them to record their jobs."""
    _LAUNCH["guarded"] = not _LAUNCH["workers"]
    try:
        with signals.stop_on_signals(forward=_LAUNCH["workers"]):
            hydra_main()
    except BaseException:
        if signals.received() is None:
            raise
    signum = signals.received()
    if signum is None:
        return
    if _LAUNCH["multirun"]:
        again = shlex.join([a for a in argv if a.partition("=")[0].lstrip("+") != "resume"] + ["resume=true"])
        print(
            f"negrl: the sweep stopped on {signals.signal_name(signum)} (complete jobs kept, the stopped ones recorded "
            f"failed: interrupted); continue it with: python train.py {again}",
            file=sys.stderr,
        )
    sys.exit(128 + signum)


def knob_subdir(argv: list[str], jobs: list[list[str]], swept: set[str], base: DictConfig,
                conf_dir: Path = CONF_DIR) -> list[str]:  # fmt: skip
    """`hydra.sweep.subdir` with each knob the sweep varies besides the seed and the model, e.g.
    `2-tiny-seed0-holdout_frac0.1` for `-m seed=0,1 holdout_frac=0.05,0.1` (a group by its option's name:
    `-objectiveipo`); none where the user set the subdir, nothing varies, or a value is a path."""
    if any(a.partition("=")[0].lstrip("+") == "hydra.sweep.subdir" for a in argv):
        return []
    parts = []
    for key in sorted(k.lstrip("+~") for k in swept):
        if key in ("seed", "model") or key.startswith("hydra"):
            continue
        values = [o.partition("=")[2] for job in jobs for o in job if o.partition("=")[0].lstrip("+~") == key]
        if any("/" in v or len(v) > 40 for v in values):
            continue
        if (conf_dir / key).is_dir():  # a config group: its option's name
            if OmegaConf.select(base, f"{key}.name", default=None) is not None:
                parts.append(f"{key}${{{key}.name}}")
        elif "/" not in key:
            parts.append(f"{key.rpartition('.')[2]}${{{key}}}")
    if not parts:
        return []
    template = OmegaConf.to_container(base.hydra.sweep, resolve=False)["subdir"]
    return [f"hydra.sweep.subdir='{template}-{'-'.join(parts)}'"]


def _quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold `,`, `:` or `=`)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


#: Where each job of a sweep records where it ran and how it ended (hidden: the report does not search it).
JOB_RECORDS = ".jobs"


class SweepSummary(Callback):
    """After a sweep (Hydra callback): one line on how many jobs failed, and exit code 1 if any did. A job counts
    by its record (a resumed job ran in its earlier directory), else by its directory's results.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if signals.received() is not None:
            return  # stopped by a signal: `guarded` says how to continue
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        records = [read_json(p) or {"dir": ""} for p in sorted((sweep_dir / JOB_RECORDS).glob("*.json"))]
        recorded = {r["dir"] for r in records}
        unrecorded = [p for p in sorted(sweep_dir.iterdir()) if (p / ".hydra").is_dir() and str(p) not in recorded]
        jobs = [*(Path(r["dir"]) for r in records), *unrecorded]  # unrecorded: the job died before it could say
        failed = [p for p in jobs if RunDir(p).status() != "complete"]
        if not failed:
            print(f"negrl: all {len(jobs)} jobs of {sweep_dir} complete")
            return
        shown = "; ".join(f"{p.name} ({_reason(p)})" for p in failed[:5]) + ("; ..." if len(failed) > 5 else "")
        print(f"negrl: {len(failed)} of {len(jobs)} jobs failed: {shown}", file=sys.stderr)
        sys.exit(1)


def _record_job(hydra_cfg: DictConfig, run_dir: Path) -> None:
    """Note where this job of a sweep ran, for `SweepSummary`."""
    records = Path(hydra_cfg.sweep.dir).resolve() / JOB_RECORDS
    records.mkdir(parents=True, exist_ok=True)
    write_json_atomic(records / f"{hydra_cfg.job.num}.json", {"dir": str(Path(run_dir).resolve())})


def _reason(run_dir: Path) -> str:
    results = RunDir(run_dir).read_results()
    return "no results.json" if results is None else str(results.get("reason", "no reason recorded"))[:200]


def run_from_hydra(cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> float:
    """Run one job of `train.py`; returns the held-out delta (NaN for a failed job of a sweep).

    A single run exits with code 2 on bad input (leaving no directory behind), 1 on a failed run, 128 + the
    signal's number when SIGINT or SIGTERM stopped it. In a multirun, a failing job is recorded in its results.json
    and the sweep goes on; a job stopped by a signal stops the sweep (`guarded`).
    `hydra_cfg`: the job's `hydra` node (default: Hydra's, inside its job).
    """
    hydra_cfg = hydra_cfg or HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and not _LAUNCH["guarded"]:
        signals.install()  # a sweep's worker process (hydra/launcher=local installs it as the worker starts)
    if multirun and signals.received() is not None:  # a local sweep's worker asked to stop: no new job starts
        RunDir(run_dir).remove_if_unused(stop_at=Path(hydra_cfg.sweep.dir))
        return math.nan
    cfg = job_config(cfg, hydra_cfg)
    try:
        outcome: Any = run(cfg, run_dir, search=resume_search(hydra_cfg, cfg, multirun), sweep=multirun)
    except signals.Interrupted as err:  # before the run could record anything
        outcome = RunFailed(f"{err} before it started; nothing to resume: run the same command again")
        outcome.exit_code = err.code
        RunDir(run_dir).remove_if_unused(stop_at=Path(hydra_cfg.sweep.dir) if multirun else None)
        if not multirun:
            print(f"negrl: error: {outcome}", file=sys.stderr)
            sys.exit(err.code)
    except (NegrlError, RunFailed) as err:
        if not multirun:
            print(f"negrl: error: {err}", file=sys.stderr)
            if isinstance(err, NegrlError):
                RunDir(run_dir).remove_if_unused()
            sys.exit(err.exit_code)
        outcome = err
    except Exception as err:  # a bug or a crash: recorded by run(); a sweep goes on
        if not multirun:
            raise
        outcome = err
    value = job_outcome(hydra_cfg, run_dir, outcome)
    stop_sweep_if_asked()
    return value


def stop_sweep_if_asked() -> None:
    """In the process that runs a sweep's jobs one after another (Hydra's basic launcher, the stacked one), a
    signal that stopped a job stops the sweep (`guarded` says how to continue it). In a local sweep's worker
    process, the job returns and the worker starts no other."""
    signum = signals.received()
    if signum is not None and _LAUNCH["guarded"]:
        signals.stop(signum)


def run_stacked_from_hydra(jobs: list[tuple[DictConfig, DictConfig]]) -> list[float]:
    """Jobs of a sweep that differ only in `seed` (hydra/launcher=stacked: (config, hydra node) each), trained as
    one stack (negrl.stacked.runner; a job alone as a plain run); each job's return value as `run_from_hydra`'s.
    With `resume=true` the jobs already complete are skipped (nothing to do), those that never reached a checkpoint
    start afresh as one stack and those with a checkpoint continue as another (a stack's seeds share their step)."""
    if len(jobs) == 1:
        return [run_from_hydra(*jobs[0])]
    if jobs[0][0].get("resume") is not True:
        return _stack(jobs)
    kinds = [resume_kind(cfg, hydra_cfg) for cfg, hydra_cfg in jobs]
    values: list[float] = [math.nan] * len(jobs)
    for kind in ("complete", "fresh", "continue"):
        part = [i for i, k in enumerate(kinds) if k == kind]
        if kind == "complete" or len(part) == 1:  # a plain run says "nothing to do", or runs alone
            outcomes = [run_from_hydra(*jobs[i]) for i in part]
        else:
            outcomes = _stack([jobs[i] for i in part], fresh=kind == "fresh") if part else []
        for i, value in zip(part, outcomes):
            values[i] = value
    return values


def resume_kind(cfg: DictConfig, hydra_cfg: DictConfig) -> str:
    """"complete", "fresh" or "continue": what `resume=true` finds for this job of a sweep (negrl.run.checkpoint)."""
    c = validate(job_config(copy.deepcopy(cfg), hydra_cfg), warn=False).config  # job_config edits in place
    return checkpoint.sweep_resume_dir(resume_search(hydra_cfg, cfg, True), c)[0]


def _stack(jobs: list[tuple[DictConfig, DictConfig]], fresh: bool = False) -> list[float]:
    """Train `jobs` as one stack; `fresh`: jobs of a resumed sweep that never reached a checkpoint (no resume)."""
    cfgs = [job_config(cfg, hydra_cfg) for cfg, hydra_cfg in jobs]
    if fresh:
        for cfg in cfgs:
            with open_dict(cfg):
                cfg.resume = False
        print(f"negrl: resume=true: {len(cfgs)} jobs never reached a checkpoint: started afresh")
    dirs = [Path(hydra_cfg.runtime.output_dir) for _, hydra_cfg in jobs]
    searches = [resume_search(hydra_cfg, cfg, True) for cfg, (_, hydra_cfg) in zip(cfgs, jobs)]
    try:
        outcomes: list[Any] = run_stacked(cfgs, dirs, searches=searches)
    except StackFailed as err:  # interrupted: each seed's own reason
        outcomes = [RunFailed(reason) for reason in err.reasons]
    except signals.Interrupted as err:  # before the stack could record anything
        outcomes = [RunFailed(f"{err} before it started; run the same command again")] * len(jobs)
    except Exception as err:  # bad input for the stack, or a crash (each seed's results.json records it)
        outcomes = [err] * len(jobs)
    values = [job_outcome(hydra_cfg, run_dir, o) for (_, hydra_cfg), run_dir, o in zip(jobs, dirs, outcomes)]
    stop_sweep_if_asked()
    return values


def job_config(cfg: DictConfig, hydra_cfg: DictConfig) -> DictConfig:
    """A job's config as it runs: in a sweep, the sweep's W&B group and tags, and its GPU with `gpu_per_job`."""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.wandb = sweep_wandb(cfg.wandb, hydra_cfg.sweep.dir, list(hydra_cfg.overrides.task))
            if cfg.get("gpu_per_job"):
                cfg.trainer.devices = job_devices(hydra_cfg.job.num, _cuda_count())
    return cfg


def job_outcome(hydra_cfg: DictConfig, run_dir: Path, outcome: dict[str, Any] | BaseException) -> float:
    """What a job of a sweep (or a finished single run) returns, says and records: the held-out delta and the
    verdict, or NaN and the failure."""
    if isinstance(outcome, (NegrlError, RunFailed)):
        print(f"negrl: error: {outcome}", file=sys.stderr)
        _record_failure(run_dir, outcome)
        _record_job(hydra_cfg, run_dir)
        return math.nan
    if isinstance(outcome, BaseException):
        print(f"negrl: job {hydra_cfg.job.num} failed: {type(outcome).__name__}: {outcome}", file=sys.stderr)
        _record_job(hydra_cfg, run_dir)
        return math.nan
    if hydra_cfg.mode == RunMode.MULTIRUN and is_rank_zero():
        _record_job(hydra_cfg, outcome["run"]["dir"])
        if Path(outcome["run"]["dir"]).resolve() != run_dir.resolve():  # resumed an earlier run of this job
            RunDir(run_dir).remove_if_unused(stop_at=Path(hydra_cfg.sweep.dir))
    if is_rank_zero():
        print(outcome["verdict"])
    return outcome["delta"]


def resume_search(hydra_cfg: DictConfig, cfg: DictConfig, multirun: bool) -> str:
    """Where runs of this config are written, as a glob: Hydra's run (or sweep) directory template with each
    `${now:...}` and `${hydra.job.num}` a wildcard and the other keys (model name, seed) filled in."""
    node = OmegaConf.to_container(hydra_cfg.sweep if multirun else hydra_cfg.run, resolve=False)
    template = f"{node['dir']}/{node['subdir']}" if multirun else node["dir"]
    template = re.sub(r"\$\{(now:[^}]*|hydra\.job\.num)\}", "*", str(template))
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(OmegaConf.select(plain, m.group(1))), template)


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
    owner = RunDir(run_dir)
    if not owner.results.exists():  # a config error in a sweep, or a signal before the job started: it must show up
        # as failed; a RunFailed's message is the reason itself ("interrupted by SIGTERM before it started; ...")
        reason = str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"
        owner.write_results({"status": "failed", "reason": reason, "run": {"dir": str(run_dir)}})
