"""Finding and reading run directories: each becomes a `Run` whose `status` says whether it can be grouped.

A run directory is any directory holding `config.yaml` or `results.json` (or Hydra's `.hydra/`), at any
depth under the directory searched. Runs that are missing, running, failed or invalid are kept, with
the reason, never dropped. Chance is 1/K for the K letters a run used (`Run.n_letters`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from negrl.core import stats
from negrl.core.metric import task_check
from negrl.report.curves import Curves, as_float, read_curves

CONFIG, RESULTS, METRICS = "config.yaml", "results.json", "metrics.csv"
#: Directories never searched for runs (besides hidden ones such as `.hydra`).
SKIPPED_DIRS = {"checkpoints", "wandb", "__pycache__"}
#: Config groups whose many sub-keys collapse into one knob named by the group's choice.
CHOICE_GROUPS = ("model", "adapter", "data", "objective")


class ReportError(Exception):
    """Bad input to the report (exit code 2)."""


@dataclass
class Run:
    """One run directory and what could be read from it; `status` is 'complete' or why it is not."""

    path: Path
    rel: str
    status: str
    reason: str = ""
    config: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    curves: Curves | None = None
    choices: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def seed(self) -> Any:
        if self.config and "seed" in self.config:
            return self.config["seed"]
        return ((self.results or {}).get("run") or {}).get("seed")

    @property
    def n_letters(self) -> int | None:
        """K, the number of letters: len(tokens.letters) in the config, else from results.json's baseline log(1/K)."""
        return config_letters(self.config) or baseline_letters(self.results)

    @property
    def chance_ll(self) -> float:
        """Chance log(1/K) for this run's K letters."""
        return stats.chance_ll(self.n_letters)

    @property
    def metric(self) -> float:
        return float(self.results["metric"])

    @property
    def delta(self) -> float:
        return float(self.results.get("delta", self.metric - self.chance_ll))

    @cached_property
    def task(self) -> dict[str, Any] | None:
        """The task check (learned, diverged) measured from the run's evaluations, so that every run, whenever it was
        written, is judged by the current definition (`negrl.core.metric.task_check`); results.json's `task` where
        the evaluations are not recorded."""
        try:
            phases = {int(p): v["eval"] for p, v in self.results["phases"].items()}
            if 3 in phases:
                return task_check(phases, self.chance_ll)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        return self.results.get("task")

    @property
    def learned(self) -> bool:
        """Whether the model learned the task (unknown counts as learned: nothing is claimed against it)."""
        return (self.task or {}).get("learned", True)

    @property
    def control_metric(self) -> float:
        return float(self.results["control"]["metric"])

    @property
    def control_delta(self) -> float:
        return float(self.results["control"].get("delta", self.control_metric - self.chance_ll))

    @property
    def extraction(self) -> dict[str, Any] | None:
        """results.json's extraction attacks (runs made before them, or with them off, have none)."""
        value = (self.results or {}).get("extraction")
        return value if isinstance(value, dict) else None

    def value(self, *where: str) -> Any:
        """What sits at `where` (nested keys) in results.json, None where any key is missing."""
        value: Any = self.results
        for key in where:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def final_ll(self, name: str) -> float:
        """The last phase-3 evaluation of set `name`: results.json's `final`, else (older runs)
        `phases.3.eval.<name>.final`, else NaN."""
        value = self.value("final", name)
        return as_float(self.value("phases", "3", "eval", name, "final") if value is None else value)

    @property
    def final_delta(self) -> float:
        """The final held-out LL minus chance log(1/K) (NaN without a final evaluation)."""
        return self.final_ll("heldout") - self.chance_ll

    @property
    def wall_time_s(self) -> float:
        value = (self.results or {}).get("wall_time_s")
        return float(value) if isinstance(value, (int, float)) else math.nan

    def boundaries(self) -> list[int]:
        """Global steps where phases 2 and 3 start: from results.json's step counts, else metrics.csv."""
        phases = (self.results or {}).get("phases") or {}
        try:
            steps = [int(phases[p]["steps"]) for p in sorted(phases, key=int)]
        except (KeyError, TypeError, ValueError):
            steps = []
        if steps:
            return [int(s) for s in np.cumsum(steps)[:-1]]
        return self.curves.boundaries() if self.curves is not None else []  # W&B runs, results without phases


def config_letters(config: Mapping[str, Any] | None) -> int | None:
    """len(tokens.letters) of a config (a string of letters or a list of token ids), None if it has none."""
    tokens = (config or {}).get("tokens")
    letters = tokens.get("letters") if isinstance(tokens, Mapping) else None
    return len(letters) if isinstance(letters, (str, list, tuple)) and letters else None


def baseline_letters(results: Mapping[str, Any] | None) -> int | None:
    """K from results.json's `baseline` = log(1/K), None if there is none (or it is no such level)."""
    value = (results or {}).get("baseline")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return stats.letters_of_chance(float(value)) if ok else None


def _started(run: Run) -> tuple[float, str] | None:
    """results.json's `run.started` as (POSIX time, text as recorded); None if absent or not an ISO time."""
    ident = (run.results or {}).get("run")
    text = ident.get("started") if isinstance(ident, dict) else None
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp(), text


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -math.inf


def start_time(run: Run) -> tuple[float, float, str]:
    """Sort key for 'newest run': results.json's `run.started` if present, else the run directory's
    modification time; ties go to the later-modified directory, then to the later path."""
    started, mtime = _started(run), _mtime(run.path)
    return (started[0] if started else mtime, mtime, run.rel)


def describe_start(run: Run) -> str:
    """What `start_time` went by: 'started <run.started>' or 'modified <directory mtime>'."""
    started, mtime = _started(run), _mtime(run.path)
    if started:
        return f"started {started[1]}"
    if math.isinf(mtime):
        return "no start time"
    return f"modified {datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec='seconds')}"


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory under `root` (itself included), without descending into a run directory."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if RESULTS in filenames or ".hydra" in dirnames or (CONFIG in filenames and _written_config(here / CONFIG)):
            found.append(here)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
    return sorted(found)


def _written_config(path: Path) -> bool:
    """Whether `path` is a config.yaml a run wrote (its resolved config, with a `seed`), not a Hydra config source
    such as the repository's conf/config.yaml (a `defaults` list)."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # unreadable: a run's config.yaml that broke; the run is listed with the reason
        return True
    return isinstance(data, dict) and "seed" in data and "defaults" not in data


def load_run(path: Path, root: Path) -> Run:
    """Read a run directory; never raises on a broken run (its status says what is wrong)."""
    rel = path.relative_to(root).as_posix() if path != root else "."
    config, config_error = _read_config(path)
    run = Run(path=path, rel=rel, status="missing", config=config, choices=read_choices(path, config))
    results_path = path / RESULTS
    if not results_path.is_file():
        run.reason = "no results.json (crashed before writing it, or still starting)"
        return run
    try:
        run.results = json.loads(results_path.read_text())
        if not isinstance(run.results, dict):
            raise ValueError(f"expected a JSON object, got {type(run.results).__name__}")
    except (OSError, ValueError) as err:
        run.status, run.reason, run.results = "unreadable", f"results.json: {err}", None
        return run
    run.status = str(run.results.get("status", "unknown"))
    if run.status == "complete":
        run.status, run.reason = check_complete(run, config_error)
    elif run.status == "running":
        run.reason = "results.json says running (still training, or killed before it could record a failure)"
    else:
        res = run.results
        run.reason = str(res.get("reason") or res.get("error") or res.get("message") or "no reason recorded")
    if run.complete:
        run.curves = read_curves(path / METRICS)
    return run


def check_complete(run: Run, config_error: str) -> tuple[str, str]:
    """('complete', '') if the run can be grouped, else ('invalid', why)."""
    if run.config is None:
        return "invalid", f"complete, but its config cannot be read ({config_error})"
    k, recorded = config_letters(run.config), baseline_letters(run.results)
    if k is None and recorded is None:
        return "invalid", "complete, but its number of letters is unknown (no tokens.letters, no results.json baseline)"
    if k is not None and "baseline" in run.results and recorded != k:
        return "invalid", (
            f"complete, but results.json's baseline {run.results['baseline']} is not log(1/{k}) "
            f"for the {k} letters of tokens.letters"
        )
    try:
        values = (run.metric, run.delta, run.control_metric, run.control_delta)
    except (KeyError, TypeError, ValueError) as err:
        return "invalid", f"complete, but results.json lacks the metric or its control ({type(err).__name__}: {err})"
    task = run.task or {}
    if task.get("diverged"):
        return "diverged", task["note"]
    if not all(math.isfinite(v) for v in values):
        return "invalid", "complete, but its metric or control is not finite"
    return "complete", ""


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The run's resolved config.yaml (else Hydra's .hydra/config.yaml), and the error if neither reads."""
    error = "no config.yaml"
    for candidate in (path / CONFIG, path / ".hydra" / CONFIG):
        if not candidate.is_file():
            continue
        try:
            cfg = OmegaConf.to_container(OmegaConf.load(candidate), resolve=False)
        except Exception as err:  # a truncated or hand-edited YAML file
            error = f"{candidate.name}: {type(err).__name__}: {err}"
            continue
        if isinstance(cfg, dict):
            return cfg, ""
    return None, error


def read_choices(path: Path, config: Mapping[str, Any] | None) -> dict[str, str]:
    """Hydra's config-group choices of a run directory (`hydra_choices`), named ones from its config overriding."""
    return {**hydra_choices(path), **config_choices(config)}


def hydra_choices(path: Path) -> dict[str, str]:
    """Hydra's config-group choices (e.g. data: small), from .hydra/hydra.yaml; {} without one."""
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return {}
    try:
        picked = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices")
        if picked is None:
            return {}
        return {k: str(v) for k, v in OmegaConf.to_container(picked).items() if k in CHOICE_GROUPS}
    except Exception:  # the choices only shorten labels: without them, labels list the keys
        return {}


def config_choices(config: Mapping[str, Any] | None) -> dict[str, str]:
    """`model`, `adapter` and `objective` named by their configs' own `name` key."""
    choices = {}
    for group in ("model", "adapter", "objective"):
        value = (config or {}).get(group)
        if isinstance(value, dict) and value.get("name"):
            choices[group] = str(value["name"])
    return choices


def load_runs(root: Path | str) -> list[Run]:
    """Every run under `root`; `ReportError` if `root` is not a directory or holds no run."""
    root = Path(root)
    if not root.exists():
        raise ReportError(f"{root} does not exist; pass the directory of your runs (e.g. runs/ or multirun/)")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory; pass the directory of your runs (e.g. runs/ or multirun/)")
    dirs = find_run_dirs(root)
    if not dirs:
        raise ReportError(
            f"{root} holds no run directories (none has config.yaml or results.json); "
            "pass the directory that `python train.py` wrote (hydra.run.dir or hydra.sweep.dir)"
        )
    return [load_run(d, root) for d in dirs]


def repo_root(start: Path | str | None = None) -> Path | None:
    """The negrl checkout: the nearest folder at or above `start` (default: the working directory) holding
    pyproject.toml and negrl/, else the one this package was imported from if it is a checkout, else None."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (folder / "pyproject.toml").is_file() and (folder / "negrl").is_dir():
            return folder
    return None


def resolve_runs_dir(path: Path | str, start: Path | str | None = None) -> Path:
    """`path` as given if absolute, else from the repository root (`repo_root`), so that the notebook finds
    `runs/` wherever Jupyter started (e.g. in notebooks/); from the working directory outside a checkout."""
    path = Path(path).expanduser()
    root = None if path.is_absolute() else repo_root(start)
    return root / path if root is not None else path
