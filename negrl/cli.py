"""Command-line behaviour around Hydra: argument checks before it starts, exit codes after a run."""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from negrl.core.distributed import is_rank_zero
from negrl.core.errors import NegrlError, RunFailed
from negrl.launcher import check_max_stack
from negrl.pipeline import check_stackable, run, run_stacked
from negrl.run import checkpoint
from negrl.run.config import CONF_DIR, deprecation_notice, renamed_key, unknown_key_message
from negrl.run.rundir import RunDir, read_json, write_json_atomic
from negrl.run.validation import validate
from negrl.stacked.runner import StackFailed

#: hydra/launcher=stacked (conf/hydra/launcher/stacked.yaml): a sweep's jobs that differ only in `seed` train together.
STACKED_LAUNCHER = "hydra_plugins.negrl_launcher.StackedLauncher"
RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")
MULTIRUN_FLAGS = ("-m", "--multirun")
#: Hydra flags that print something instead of running (no check needed).
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-sc", "--shell-completion", "--version")


def rename_deprecated(argv: list[str]) -> list[str]:
    """Each override of a renamed key (`negrl.run.config.RENAMED`) under its new name, with a one-line notice:
    `dpo.reference_cache=false` becomes `reference.cache=false`."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        sign = key[: len(key) - len(key.lstrip("+~"))]
        new = None if arg.startswith("-") else renamed_key(key[len(sign) :])
        if new is None:
            out.append(arg)
            continue
        print(deprecation_notice(key[len(sign) :], new), file=sys.stderr)
        out.append(f"{'~' if sign == '~' else ''}{new}{sep}{value}")  # the new key exists: `+` is not needed
    return out


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


def preflight(argv: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """Compose and check every job of `python train.py ARGV` before Hydra starts, so that a refused command
    writes nothing. Returns argv with a single run's directory pinned (`hydra.run.dir`) to the one checked;
    with `resume=true`, to the run it continues (and `resume` to that directory)."""
    if "LOCAL_RANK" in os.environ or any(a.partition("=")[0] in INFO_FLAGS for a in argv):
        return argv  # a DDP worker of a checked run, or Hydra's --help/--cfg/--info: nothing runs
    overrides = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = _hydra_call(lambda: parser.parse_overrides(overrides))
    fixed = [a for a, o in zip(overrides, parsed) if not o.is_sweep_override()]
    base = _compose(fixed, conf_dir)
    if any(a in MULTIRUN_FLAGS for a in argv) or base.hydra.mode == RunMode.MULTIRUN:
        jobs, swept = sweep_jobs(parser, overrides, base)
        stacked = OmegaConf.select(base, "hydra.launcher._target_") == STACKED_LAUNCHER
        if stacked:
            check_max_stack(OmegaConf.select(base, "hydra.launcher.max_stack"))
        for i, job in enumerate(jobs):
            try:
                s = validate(_compose(job, conf_dir), warn=False)
                if stacked:
                    check_stackable([s])
            except NegrlError as err:
                knobs = " ".join(o for o in job if o.partition("=")[0] in swept)
                raise NegrlError(f"job {i} of the sweep{f' ({knobs})' if knobs else ''}: {err}") from None
        return argv
    if len(fixed) < len(overrides):
        several = next(a for a, o in zip(overrides, parsed) if o.is_sweep_override())
        raise NegrlError(f"{several} lists several values; sweep them with -m (python train.py -m {several})")
    c = validate(base, warn=False).config
    if c["resume"]:
        search = resume_search(base.hydra, base, multirun=False)
        run_dir, why = checkpoint.resume_dir(c["resume"], search, c)
        if c["resume"] is True:
            print(f"negrl: resume=true continues {run_dir}: {why}")
        return [*argv, f"resume={_quoted(run_dir)}", f"hydra.run.dir={_quoted(run_dir)}"]
    run_dir = Path(base.hydra.run.dir)
    RunDir(run_dir).check_usable()
    return [*argv, f"hydra.run.dir={_quoted(run_dir)}"]


def sweep_jobs(parser: OverridesParser, overrides: list[str], base: DictConfig) -> tuple[list[list[str]], set[str]]:
    """The override list of each job Hydra's basic sweeper launches (a preset's `hydra.sweeper.params` first),
    and the keys the sweep varies."""
    params = base.hydra.sweeper.get("params") or {}
    preset = [f"{k}={v}" for k, v in params.items()]
    parsed = _hydra_call(lambda: parser.parse_overrides(preset + overrides))
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch], swept


def _compose(overrides: list[str], conf_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return _hydra_call(lambda: compose(config_name="config", overrides=overrides, return_hydra_config=True))


def _hydra_call(fn: Callable[[], Any]) -> Any:
    """Hydra's composition errors (a bad override, an unknown group) as one line."""
    try:
        return fn()
    except (HydraException, OmegaConfBaseException) as err:
        unknown = re.match(r"Could not override '([^']+)'", str(err))
        if unknown:
            key = unknown.group(1)
            raise NegrlError(group_hint(key) or unknown_key_message(key)) from None
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        if len(lines) > 1 and lines[1].startswith("Available options"):  # every option, on the one line
            options = list(itertools.takewhile(lambda ln: not ln.endswith(":"), lines[2:]))
            raise NegrlError(f"{lines[0]}; {lines[1].rstrip(':').lower()}: {', '.join(options)}") from None
        raise NegrlError("; ".join(lines[:2]) or type(err).__name__) from None


def group_hint(key: str, conf_dir: Path = CONF_DIR) -> str | None:
    """A one-line error for a key that belongs to a config group of conf/ but not where it was given: a group the
    defaults do not list (`ablation=...`: it needs a plus), or `group.name` that the chosen option lacks (e.g.
    objective.tau, model.tokenizer on tiny: the options that have it). None: the key is no setting at all."""
    group, _, name = key.partition(".")
    folder = conf_dir / group
    if not folder.is_dir() or "." in name:
        return None
    if not name:
        options = ", ".join(sorted(f.stem for f in folder.glob("*.yaml")))
        return (
            f"{key} is a config group that is not in the defaults: add it with a plus, +{key}=<option> "
            f"(options: {options})"
        )
    having = sorted(f.stem for f in folder.glob("*.yaml") if name in _option_keys(f, folder))
    if not having:
        return None
    listed = ", ".join(f"{group}={o}" for o in having[:6]) + (", ..." if len(having) > 6 else "")
    return (
        f"{key} is not a setting of the chosen {group}=; it belongs to {listed}: choose one of those "
        f"(e.g. python train.py {group}={having[0]} {key}=...), or drop {key}"
    )


def _option_keys(path: Path, folder: Path) -> set[str]:
    """The top-level keys of a config group's option, with those of the bases its `defaults` list names."""
    data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    keys = set(data) - {"defaults"}
    for entry in data.get("defaults", []):
        base = folder / f"{str(entry).split('@')[0]}.yaml"
        if isinstance(entry, str) and entry != "_self_" and base.is_file():
            keys |= _option_keys(base, folder)
    return keys


def _quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold `,`, `:` or `=`)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


#: Where each job of a sweep records where it ran and how it ended (hidden: the report does not search it).
JOB_RECORDS = ".jobs"


class SweepSummary(Callback):
    """After a sweep (Hydra callback): one line on how many jobs failed, and exit code 1 if any did. A job counts
    by its record (a resumed job ran in its earlier directory), else by its directory's results.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
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

    A single run exits with code 2 on bad input (leaving no directory behind) and 1 on a failed run.
    In a multirun, a failing job is recorded in its results.json and the sweep goes on.
    `hydra_cfg`: the job's `hydra` node (default: Hydra's, inside its job).
    """
    hydra_cfg = hydra_cfg or HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    cfg = job_config(cfg, hydra_cfg)
    try:
        outcome: Any = run(cfg, run_dir, search=resume_search(hydra_cfg, cfg, multirun))
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
    return job_outcome(hydra_cfg, run_dir, outcome)


def run_stacked_from_hydra(jobs: list[tuple[DictConfig, DictConfig]]) -> list[float]:
    """Jobs of a sweep that differ only in `seed` (hydra/launcher=stacked: (config, hydra node) each), trained as
    one stack (negrl.stacked.runner; a job alone as a plain run); each job's return value as `run_from_hydra`'s."""
    if len(jobs) == 1:
        return [run_from_hydra(*jobs[0])]
    cfgs = [job_config(cfg, hydra_cfg) for cfg, hydra_cfg in jobs]
    dirs = [Path(hydra_cfg.runtime.output_dir) for _, hydra_cfg in jobs]
    searches = [resume_search(hydra_cfg, cfg, True) for cfg, (_, hydra_cfg) in zip(cfgs, jobs)]
    try:
        outcomes: list[Any] = run_stacked(cfgs, dirs, searches=searches)
    except StackFailed as err:  # interrupted: each seed's own reason
        outcomes = [RunFailed(reason) for reason in err.reasons]
    except Exception as err:  # bad input for the stack, or a crash (each seed's results.json records it)
        outcomes = [err] * len(jobs)
    return [job_outcome(hydra_cfg, run_dir, o) for (_, hydra_cfg), run_dir, o in zip(jobs, dirs, outcomes)]


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
    if not owner.results.exists():  # a config error in a sweep: nothing ran, but the job must show up as failed
        reason = f"{type(err).__name__}: {err}"
        owner.write_results({"status": "failed", "reason": reason, "run": {"dir": str(run_dir)}})
