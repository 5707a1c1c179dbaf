"""`negrl-report DIR`: collect every run under DIR, group the seeds, write tables and figures.

A run directory is any directory holding `config.yaml` or `results.json` (or Hydra's `.hydra/`),
at any depth under DIR. Complete runs whose configs differ only in `seed` (and run-specific
keys, see `IGNORED_KEYS`) form a group; each group gets the paper's across-seed statistics over its
distinct seeds: a seed run more than once counts once, by its newest complete run (`start_time`),
and the others are listed. Chance is 1/K for the K letters a run used (`Run.n_letters`).
Runs that are missing, running or failed are listed in the report, never dropped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from negrl import figures, stats
from negrl.labels import fmt_value, sort_value

CONFIG, RESULTS, METRICS = "config.yaml", "results.json", "metrics.csv"
EVAL_SETS = ("heldout", "useful", "random")
#: Config keys (dotted; a key covers its sub-keys) that do not define an experiment.
IGNORED_KEYS = ("seed", "resume", "checkpoint", "trainer.enable_progress_bar", "wandb", "hydra")
#: Directories never searched for runs (besides hidden ones such as `.hydra`).
SKIPPED_DIRS = {"checkpoints", "wandb", "__pycache__"}
#: Knobs shown first in group labels, in this order; other varying keys follow alphabetically.
KNOB_ORDER = ("model", "data", "objective", "holdout_frac", "prefix", "freeze")
#: Config groups whose many sub-keys collapse into one knob named by the group's choice.
CHOICE_GROUPS = ("model", "data", "objective")


class ReportError(Exception):
    """Bad input to the report (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


@dataclass
class Curves:
    """The evaluation rows of a run: global step, phase, and each set's mean per-token LL."""

    step: np.ndarray
    phase: np.ndarray
    ll: dict[str, np.ndarray]

    def boundaries(self) -> list[int]:
        """The first global step of every phase after the first."""
        return [int(self.step[self.phase == p].min()) for p in np.unique(self.phase)[1:]]


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

    @property
    def wall_time_s(self) -> float:
        value = (self.results or {}).get("wall_time_s")
        return float(value) if isinstance(value, (int, float)) else math.nan

    def boundaries(self) -> list[int]:
        """Global steps where phases 2 and 3 start: from results.json's step counts, else metrics.csv."""
        phases = (self.results or {}).get("phases") or {}
        try:
            steps = [int(phases[p]["steps"]) for p in sorted(phases, key=int)]
            return [int(s) for s in np.cumsum(steps)[:-1]]
        except (KeyError, TypeError, ValueError):
            return self.curves.boundaries() if self.curves is not None else []


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
        if CONFIG in filenames or RESULTS in filenames or ".hydra" in dirnames:
            found.append(here)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
    return sorted(found)


def load_run(path: Path, root: Path) -> Run:
    """Read a run directory; never raises on a broken run (its status says what is wrong)."""
    rel = path.relative_to(root).as_posix() if path != root else "."
    config, config_error = _read_config(path)
    run = Run(path=path, rel=rel, status="missing", config=config, choices=_read_choices(path, config))
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
        run.status, run.reason = _check_complete(run, config_error)
    elif run.status == "running":
        run.reason = "results.json says running (still training, or killed before it could record a failure)"
    else:
        res = run.results
        run.reason = str(res.get("reason") or res.get("error") or res.get("message") or "no reason recorded")
    if run.complete:
        run.curves = read_curves(path / METRICS)
    return run


def _check_complete(run: Run, config_error: str) -> tuple[str, str]:
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


def _read_choices(path: Path, config: dict[str, Any] | None) -> dict[str, str]:
    """Hydra's config-group choices (e.g. data: small), from .hydra/hydra.yaml; `model` from model.name."""
    choices: dict[str, str] = {}
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            picked = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices")
            if picked is not None:
                choices = {k: str(v) for k, v in OmegaConf.to_container(picked).items() if k in CHOICE_GROUPS}
        except Exception:  # the choices only shorten labels: without them, labels list the keys
            pass
    for group in ("model", "objective"):  # both configs carry their own name
        value = (config or {}).get(group)
        if isinstance(value, dict) and value.get("name"):
            choices[group] = str(value["name"])
    return choices


def read_curves(path: Path) -> Curves | None:
    """The evaluation rows of a metrics.csv (None if there is no file or no evaluation row)."""
    try:
        with open(path, newline="") as f:
            return curves_from_rows(csv.DictReader(f), step_key="step")
    except (OSError, ValueError, csv.Error):
        return None


def curves_from_rows(rows: Iterable[Mapping[str, Any]], step_key: str = "step") -> Curves | None:
    """Curves from metric rows (a CSV or a W&B history); a step logged twice keeps its last row."""
    by_step: dict[int, tuple[int, dict[str, float]]] = {}
    for row in rows:
        values = {s: _number(row.get(f"eval/{s}_ll")) for s in EVAL_SETS}
        step, phase = _number(row.get(step_key)), _number(row.get("phase"))
        if math.isnan(step) or math.isnan(phase) or all(math.isnan(v) for v in values.values()):
            continue
        by_step[int(step)] = (int(phase), values)
    if not by_step:
        return None
    steps = sorted(by_step)
    return Curves(
        step=np.array(steps, dtype=int),
        phase=np.array([by_step[s][0] for s in steps], dtype=int),
        ll={s: np.array([by_step[t][1][s] for t in steps], dtype=float) for s in EVAL_SETS},
    )


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------


@dataclass
class GroupStats:
    """The paper's across-seed statistics (docs/experiment.md) of one group."""

    n: int
    seeds: list[Any]
    metric: stats.Summary
    delta: stats.Summary
    control_metric: stats.Summary
    control_delta: stats.Summary
    test: stats.TTest
    geo_increase: float
    diff: stats.PairedDifference


#: Extraction figures of a run, by column name: where each sits in results.json's `extraction`.
EXTRACTION_VALUES = {
    "greedy_acc_heldout": ("greedy", "heldout", "accuracy"),
    "greedy_acc_random": ("greedy", "random", "accuracy"),
    "greedy_exact_heldout": ("greedy", "heldout", "exact"),
    "exposure_heldout": ("exposure", "heldout"),
    "exposure_random": ("exposure", "random"),
    "logit_diff_acc_heldout": ("logit_diff", "heldout", "accuracy"),
    "logit_diff_acc_random": ("logit_diff", "random", "accuracy"),
    "logit_diff_exact_heldout": ("logit_diff", "heldout", "exact"),
}


def extraction_value(run: Run, where: Sequence[str]) -> float:
    """One extraction figure of a run, NaN if the run has none."""
    value: Any = run.extraction
    for key in where:
        value = value.get(key) if isinstance(value, dict) else None
    return _number(value)


@dataclass
class RepeatedSeed:
    """Complete runs of one seed in one group: only `kept` (the newest, see `start_time`) is in the statistics."""

    seed: Any
    kept: Run
    dropped: list[Run]


@dataclass
class Group:
    """Complete runs of one config (all but the seed), one per distinct seed (`duplicates`: the runs left out);
    `knobs` are the keys that vary across groups."""

    flat: dict[str, Any]
    runs: list[Run]
    knobs: dict[str, Any] = field(default_factory=dict)
    label: str = "all"
    duplicates: list[RepeatedSeed] = field(default_factory=list)

    @property
    def n_letters(self) -> int:
        """K of the group's runs (one K per group: it is part of the grouping key)."""
        return self.runs[0].n_letters

    @cached_property
    def stats(self) -> GroupStats:
        metric = [r.metric for r in self.runs]
        control = [r.control_metric for r in self.runs]
        return GroupStats(
            n=len(self.runs),
            seeds=[r.seed for r in self.runs],
            metric=stats.summary(metric),
            delta=stats.summary([r.delta for r in self.runs]),
            control_metric=stats.summary(control),
            control_delta=stats.summary([r.control_delta for r in self.runs]),
            test=stats.ttest_probabilities(metric, self.n_letters),
            geo_increase=stats.geometric_increase([r.delta for r in self.runs]),
            diff=stats.paired_difference(metric, control),
        )

    @property
    def choices(self) -> dict[str, str]:
        return self.runs[0].choices

    @cached_property
    def extraction(self) -> dict[str, stats.Summary]:
        """Each extraction figure over the group's runs that have it (n = 0: none has)."""
        out = {}
        for name, where in EXTRACTION_VALUES.items():
            values = [extraction_value(r, where) for r in self.runs]
            out[name] = stats.summary([v for v in values if not math.isnan(v)])
        return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists become JSON strings (hashable, comparable)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def experiment_key(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config without the seed and run-specific keys (`IGNORED_KEYS`)."""
    return {k: v for k, v in flatten(config).items() if not any(k == i or k.startswith(f"{i}.") for i in IGNORED_KEYS)}


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Complete runs grouped by config (all but the seed) and K, one run per seed (`newest_per_seed`),
    labelled by their varying knobs and sorted."""
    by_key: dict[str, Group] = {}
    for run in runs:
        if run.complete:
            flat = experiment_key(run.config)
            if "tokens.letters" not in flat:  # K from results.json's baseline: it still defines the experiment
                flat["n_letters"] = run.n_letters
            key = json.dumps(flat, sort_keys=True, default=str)
            by_key.setdefault(key, Group(flat=flat, runs=[])).runs.append(run)
    groups = list(by_key.values())
    for g in groups:
        g.runs, g.duplicates = newest_per_seed(g.runs)
        g.runs.sort(key=lambda r: (sort_value(r.seed), r.rel))
    label_groups(groups)
    groups.sort(key=lambda g: tuple(sort_value(v, k) for k, v in g.knobs.items()))
    return groups


def newest_per_seed(runs: Sequence[Run]) -> tuple[list[Run], list[RepeatedSeed]]:
    """One run per distinct seed, the newest by `start_time`; and each repeated seed with the runs left out."""
    by_seed: dict[str, list[Run]] = {}
    for run in runs:
        by_seed.setdefault(json.dumps(run.seed, sort_keys=True, default=str), []).append(run)
    kept, repeated = [], []
    for same in by_seed.values():
        newest, *older = sorted(same, key=start_time, reverse=True)
        kept.append(newest)
        if older:
            repeated.append(RepeatedSeed(newest.seed, newest, older))
    repeated.sort(key=lambda d: sort_value(d.seed))
    return kept, repeated


_MISSING = "(unset)"


def varying_knobs(groups: Sequence[Group]) -> list[str]:
    """Keys whose value differs across groups; sub-keys of `model`/`data` collapse into the group choice."""
    keys = sorted({k for g in groups for k in g.flat})
    varying = [k for k in keys if len({json.dumps(g.flat.get(k, _MISSING), default=str) for g in groups}) > 1]
    for name in CHOICE_GROUPS:
        sub = [k for k in varying if k.startswith(f"{name}.")]
        if not sub or not all(name in g.choices for g in groups):
            continue
        # Keys that still differ between groups of the same choice stay visible.
        keep = [
            k
            for k in sub
            if any(
                g.choices[name] == h.choices[name] and g.flat.get(k, _MISSING) != h.flat.get(k, _MISSING)
                for g in groups
                for h in groups
            )
        ]
        varying = [k for k in varying if k not in sub or k in keep] + [name]
    rank = {k: i for i, k in enumerate(KNOB_ORDER)}
    return sorted(dict.fromkeys(varying), key=lambda k: (rank.get(k, len(rank)), k))


def label_groups(groups: Sequence[Group]) -> None:
    """Set each group's `knobs` and `label` (e.g. 'holdout_frac=0.1'); 'all' for a single group."""
    knobs = varying_knobs(groups) if len(groups) > 1 else []
    for g in groups:
        g.knobs = {k: g.choices[k] if k in CHOICE_GROUPS else g.flat.get(k, _MISSING) for k in knobs}
        g.label = " ".join(f"{k}={fmt_value(v)}" for k, v in g.knobs.items()) or "all"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "group", "n", "seeds", "n_letters", "chance_ll",
    "metric_mean", "metric_std", "delta_mean", "delta_std",
    "control_metric_mean", "control_metric_std", "control_delta_mean", "control_delta_std",
    "t", "p_two_sided", "p_greater", "geo_mean_increase",
    "heldout_minus_random_mean", "heldout_minus_random_std", "heldout_minus_random_t",
    "heldout_minus_random_p_two_sided", "heldout_minus_random_p_greater",
    *(f"{name}_{m}" for name in EXTRACTION_VALUES for m in ("mean", "std")),
)  # fmt: skip


def group_row(group: Group) -> dict[str, Any]:
    """One group's statistics as a flat row (knob columns first); NaN where undefined (n < 2, zero variance)."""
    s = group.stats
    return {
        "group": group.label,
        **{k: fmt_value(v) for k, v in group.knobs.items()},
        "n": s.n,
        "seeds": " ".join(str(x) for x in s.seeds),
        "n_letters": group.n_letters,
        "chance_ll": stats.chance_ll(group.n_letters),
        "metric_mean": s.metric.mean,
        "metric_std": s.metric.std,
        "delta_mean": s.delta.mean,
        "delta_std": s.delta.std,
        "control_metric_mean": s.control_metric.mean,
        "control_metric_std": s.control_metric.std,
        "control_delta_mean": s.control_delta.mean,
        "control_delta_std": s.control_delta.std,
        "t": s.test.t,
        "p_two_sided": s.test.p_two_sided,
        "p_greater": s.test.p_greater,
        "geo_mean_increase": s.geo_increase,
        "heldout_minus_random_mean": s.diff.mean,
        "heldout_minus_random_std": s.diff.std,
        "heldout_minus_random_t": s.diff.t,
        "heldout_minus_random_p_two_sided": s.diff.p_two_sided,
        "heldout_minus_random_p_greater": s.diff.p_greater,
        **{f"{name}_{m}": getattr(v, m) for name, v in group.extraction.items() for m in ("mean", "std")},
    }


def write_csv(groups: Sequence[Group], path: Path) -> None:
    """report.csv: one row per group; NaN (n = 1, zero variance) is an empty cell."""
    knobs = list(groups[0].knobs) if groups else []
    columns = [CSV_COLUMNS[0], *knobs, *CSV_COLUMNS[1:]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for g in groups:
            row = group_row(g)
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def _f(value: float, spec: str = ".4f", missing: str = "n/a") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _pm(summary: stats.Summary, spec: str = "+.4f") -> str:
    """mean ± std in `spec` (the std unsigned); the mean alone for one value, n/a for none."""
    if summary.n == 0:
        return "n/a"
    mean = format(summary.mean, spec)
    return mean if summary.n < 2 else f"{mean} ± {summary.std:{spec.lstrip('+')}}"


def _pm_diff(s: GroupStats) -> str:
    """Held-out minus random, mean ± std."""
    return _pm(stats.Summary(s.diff.n, s.diff.mean, s.diff.std))


#: p-values below this print as '< 1e-300' (a float p of 0 is an underflow, never an exact 0).
P_FLOOR = 1e-300


def _p(value: float) -> str:
    if value is not None and 0 <= value < P_FLOOR:
        return f"< {P_FLOOR:.0e}"
    return _f(value, ".2g" if value < 1e-3 else ".4f")


def group_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the group table (shared by report.md and stdout)."""
    header = [
        "group", "n", "seeds", "delta (mean ± std)", "control delta", "p two-sided", "p greater",
        "geo-mean increase", "held − random", "paired p",
    ]  # fmt: skip
    rows = []
    for g in groups:
        s = g.stats
        rows.append([
            g.label, str(s.n), " ".join(str(x) for x in s.seeds), _pm(s.delta), _pm(s.control_delta),
            _p(s.test.p_two_sided), _p(s.test.p_greater), f"{s.geo_increase:+.1%}",
            _pm_diff(s), _p(s.diff.p_two_sided),
        ])  # fmt: skip
    return header, rows


def _pair(group: Group, a: str, b: str, spec: str = ".3f") -> list[str]:
    return [_pm(group.extraction[a], spec), _pm(group.extraction[b], spec)]


def extraction_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the extraction attacks per group (mean ± std over the runs that have them)."""
    header = [
        "group", "n", "greedy acc held-out", "greedy acc random", "exact held-out", "exposure held-out (bits)",
        "exposure random (bits)", "logit-diff acc held-out", "logit-diff acc random", "logit-diff exact held-out",
    ]  # fmt: skip
    rows = []
    for g in groups:
        e = g.extraction
        rows.append([
            g.label, str(e["greedy_acc_heldout"].n), *_pair(g, "greedy_acc_heldout", "greedy_acc_random"),
            _pm(e["greedy_exact_heldout"], ".1f"), *_pair(g, "exposure_heldout", "exposure_random", ".2f"),
            *_pair(g, "logit_diff_acc_heldout", "logit_diff_acc_random"), _pm(e["logit_diff_exact_heldout"], ".1f"),
        ])  # fmt: skip
    return header, rows


def objectives_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows comparing negative-reinforcement objectives: the paper's metric and the attacks."""
    header = [
        "group", "n", "delta (mean ± std)", "p greater", "held − random", "greedy acc held-out / random",
        "exposure held-out / random", "logit-diff acc held-out / random",
    ]  # fmt: skip
    rows = []
    for g in groups:
        s = g.stats
        rows.append([
            g.label, str(s.n), _pm(s.delta), _p(s.test.p_greater), _pm_diff(s),
            " / ".join(_pair(g, "greedy_acc_heldout", "greedy_acc_random")),
            " / ".join(_pair(g, "exposure_heldout", "exposure_random", ".2f")),
            " / ".join(_pair(g, "logit_diff_acc_heldout", "logit_diff_acc_random")),
        ])  # fmt: skip
    return header, rows


def run_table(runs: Sequence[Run], groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-run table (complete runs, by group then seed)."""
    header = ["run", "group", "seed", "metric", "delta", "control delta", "held − random", "wall time (s)"]
    rows = [
        [
            r.rel, g.label, str(r.seed), f"{r.metric:.4f}", f"{r.delta:+.4f}", f"{r.control_delta:+.4f}",
            f"{r.delta - r.control_delta:+.4f}", _f(r.wall_time_s, ".1f"),
        ]
        for g in groups
        for r in g.runs
    ]  # fmt: skip
    return header, rows


def failed_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the runs that are not complete, with status and reason."""
    rows = [[r.rel, r.status, str(r.seed), r.reason] for r in runs if not r.complete]
    return ["run", "status", "seed", "reason"], rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def chance_text(groups: Sequence[Group]) -> str:
    """Each K with its chance level, 'K = 26 (log(1/26) = -3.2581)', naming the groups when K differs."""
    by_k: dict[int, list[str]] = {}
    for g in groups:
        by_k.setdefault(g.n_letters, []).append(g.label)
    if len(by_k) == 1:
        return f"here K = {next(iter(by_k))} ({stats.chance_name(next(iter(by_k)))})"
    return "K per group: " + "; ".join(
        f"K = {k} ({stats.chance_name(k)}): {', '.join(labels)}" for k, labels in sorted(by_k.items())
    )


def column_notes(groups: Sequence[Group]) -> str:
    """The notes under the group table, with the groups' chance levels filled in."""
    chance = chance_text(groups) if groups else "no group"
    return f"""\
- **delta** = metric − log(1/K), K the number of letters (`tokens.letters`; chance is 1/K per token), where metric
  is the max over phase-3 evaluations of the mean per-token log-likelihood of the held-out negatives under the
  `reverse` prefix; {chance}. delta > 0: the model uses knowledge it only saw in negatively-reinforced examples.
  Mean ± std (ddof=1) over seeds.
- **n**: distinct seeds; a seed run more than once counts once, by its newest complete run (see Repeated seeds).
- **control delta**: the same max for the random passwords (the upward bias of taking a max).
- **p two-sided**: one-sample t-test of the per-seed probabilities exp(metric) against chance 1/K (H1: mean ≠ 1/K).
  **p greater**: the same test, one-sided (H1: mean > 1/K), the direction of the paper's claim.
- **geo-mean increase**: exp(mean delta) − 1, the relative increase of the geometric-mean probability over 1/K
  (the paper: +13% over 8 seeds, Pythia-160M, K = 26).
- **held − random**: per-seed metric − control metric, mean ± std; **paired p**: two-sided paired t-test
  (held-out vs random, same seeds). report.csv also has the one-sided p (held-out > random).
- n/a: std and p-values are undefined with a single seed (they need n ≥ 2); t and p also with zero variance
  (every seed gives the same value): no t-test, rather than t = ±inf and p = 0.
- p-values are per group, not corrected for the number of groups compared."""


def extraction_notes(groups: Sequence[Group]) -> str:
    """The notes under the extraction table, with each K's chance accuracy 1/K."""
    ks = sorted({g.n_letters for g in groups})
    chance = ", ".join(f"1/{k} = {stats.chance_p(k):.3f}" for k in ks) + (" by the groups' K" if len(ks) > 1 else "")
    return f"""\
Attacks on the final models (see README, "Extraction"): **greedy acc** is the per-token accuracy of the
phase-3 model's most likely letter after `reverse` given the true letters before it (chance {chance});
**exact** the passwords of the evaluation set (`data.eval_size`) it recovers whole (what greedy decoding
outputs). **exposure**: log2(C + 1) − log2(rank) among C random candidate passwords (results.json has C), the
random set being the control. **logit-diff**: the phase-2 model against its reference, under `regular`: the
letter whose log-prob dropped most."""


REPEATED_NOTES = """\
A seed run more than once in a group counts once: only its newest complete run enters the statistics, the
tables and the figures. Newest: the latest `run.started` in results.json, else (no start time recorded) the
latest modification time of the run directory; ties go to the later-modified directory, then the later path."""


def duplicates_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the repeated seeds: the run kept and the runs left out, with their start times."""
    rows = [
        [
            g.label, str(d.seed), f"{d.kept.rel} ({describe_start(d.kept)})",
            "; ".join(f"{r.rel} ({describe_start(r)})" for r in d.dropped),
        ]
        for g in groups
        for d in g.duplicates
    ]  # fmt: skip
    return ["group", "seed", "kept (in the statistics)", "left out"], rows


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What `write_report` read and wrote."""

    runs: list[Run]
    groups: list[Group]
    written: list[Path]
    skipped: list[tuple[str, str]]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.complete]

    @property
    def left_out(self) -> int:
        """Complete runs not in the statistics: older runs of a seed already in their group."""
        return sum(len(d.dropped) for g in self.groups for d in g.duplicates)


def write_report(root: Path | str, out: Path | str | None = None) -> Report:
    """Load the runs under `root`; write report.md, report.csv and the figures into `out` (default `root`)."""

    root = Path(root)
    runs = load_runs(root)
    groups = group_runs(runs)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = figures.make_figures(groups, out)
    write_csv(groups, out / "report.csv")
    report = Report(runs, groups, [out / "report.csv", out / "report.md", *written], skipped)
    (out / "report.md").write_text(render_markdown(root, report, out))
    return report


def render_markdown(root: Path, report: Report, out: Path) -> str:
    """report.md: groups, runs, failed runs and figures."""
    n_ok = len(report.runs) - len(report.failed)
    n_out = report.left_out
    repeated = f" ({n_out} left out as repeated seeds, see Repeated seeds)" if n_out else ""
    parts = [
        "# negrl report",
        f"Runs under `{root}`: {len(report.runs)} run directories, {n_ok} complete{repeated} in {len(report.groups)} "
        f"group(s), {len(report.failed)} failed or incomplete. Generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        "Groups are runs whose configs are identical except for `seed` (and `resume`, `checkpoint`, `wandb`, "
        "`trainer.enable_progress_bar`); a group is labelled by the keys that differ across groups.",
        "## Groups",
        markdown_table(*group_table(report.groups)) if report.groups else "No complete run.",
        column_notes(report.groups),
    ]
    if report.left_out:
        parts += ["## Repeated seeds", REPEATED_NOTES, markdown_table(*duplicates_table(report.groups))]
    if any(g.extraction["greedy_acc_heldout"].n for g in report.groups):
        if "objective" in (report.groups[0].knobs if report.groups else {}):
            parts += ["## Objectives compared", markdown_table(*objectives_table(report.groups))]
        parts += ["## Extraction", markdown_table(*extraction_table(report.groups)), extraction_notes(report.groups)]
    parts += [
        "## Runs",
        markdown_table(*run_table(report.runs, report.groups)) if report.groups else "No complete run.",
        "## Failed or incomplete runs",
        markdown_table(*failed_table(report.runs)) if report.failed else "None.",
        "## Figures",
    ]
    for path in report.written[2:]:
        parts.append(f"![{path.stem}]({os.path.relpath(path, out)})")
    if report.skipped:
        parts.append("Skipped:\n" + "\n".join(f"- `{name}`: {why}" for name, why in report.skipped))
    return "\n\n".join(parts) + "\n"


def print_summary(report: Report, stream: Any = None) -> None:
    """The group table, the failed runs and the files written, in plain text."""
    stream = stream or sys.stdout
    if report.groups and "objective" in report.groups[0].knobs:
        print(text_table(*objectives_table(report.groups)), file=stream)
    elif report.groups:
        print(text_table(*group_table(report.groups)), file=stream)
    else:
        print("no complete run", file=stream)
    if report.left_out:
        print(f"\nrepeated seeds: {report.left_out} run(s) left out; only the newest run of a seed is in the "
              "statistics (by run.started, else directory mtime):", file=stream)  # fmt: skip
        print(text_table(*duplicates_table(report.groups)), file=stream)
    if report.failed:
        print(f"\n{len(report.failed)} failed or incomplete run(s):", file=stream)
        print(text_table(*failed_table(report.runs)), file=stream)
    for name, why in report.skipped:
        print(f"skipped {name}: {why}", file=stream)
    print("\nwrote:\n" + "\n".join(f"  {p}" for p in report.written), file=stream)


# ---------------------------------------------------------------------------------------------
# W&B (optional, for the notebook)
# ---------------------------------------------------------------------------------------------

WANDB_STATES = {"finished": "complete", "running": "running", "pending": "running"}


def run_from_wandb(wandb_run: Any) -> Run:
    """A W&B run (from `wandb.Api().runs(...)`) as a `Run`: its config, eval history and phase-3 maxima."""
    config = dict(wandb_run.config)
    keys = [f"eval/{s}_ll" for s in EVAL_SETS]
    rows = list(wandb_run.scan_history(keys=[*keys, "phase", "trainer/global_step"]))
    curves = curves_from_rows(rows, step_key="trainer/global_step")
    state = str(getattr(wandb_run, "state", "unknown"))
    where = wandb_run.path if isinstance(wandb_run.path, str) else "/".join(map(str, wandb_run.path))
    run = Run(path=Path(where), rel=str(wandb_run.name), status=WANDB_STATES.get(state, "failed"))
    run.config = config or None
    run.choices = _read_choices(Path("/nonexistent"), config)
    run.curves = curves
    if run.status != "complete":
        run.reason = f"W&B state: {state}"
        return run
    k = config_letters(config)
    if k is None:
        run.status, run.reason = "invalid", "no tokens.letters in the W&B config: chance log(1/K) is unknown"
        return run
    run.results = results_from_curves(curves, k) if curves is not None else None
    runtime = dict(wandb_run.summary).get("_runtime") if wandb_run.summary is not None else None
    if run.results is not None and isinstance(runtime, (int, float)):
        run.results["wall_time_s"] = float(runtime)
    if run.results is not None and isinstance(getattr(wandb_run, "created_at", None), str):
        run.results["run"] = {"seed": config.get("seed"), "started": wandb_run.created_at}
    run.status, run.reason = _check_complete(run, "no config in W&B") if run.results else ("invalid", "no phase 3")
    return run


def results_from_curves(curves: Curves, n_letters: int) -> dict[str, Any] | None:
    """results.json's metric and control recomputed from the curves: maxima over phase-3 evaluations,
    against chance log(1/K) for `n_letters` = K."""
    last = curves.phase == 3
    if not last.any():
        return None
    metric, control = float(np.nanmax(curves.ll["heldout"][last])), float(np.nanmax(curves.ll["random"][last]))
    base = stats.chance_ll(n_letters)
    return {
        "status": "complete",
        "metric": metric,
        "delta": metric - base,
        "baseline": base,
        "control": {"metric": control, "delta": control - base},
        "heldout_minus_random": metric - control,
    }


def repo_root(start: Path | str | None = None) -> Path | None:
    """The negrl checkout: the nearest folder at or above `start` (default: the working directory) holding
    pyproject.toml and negrl/, else the one this package was imported from if it is a checkout, else None."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents, Path(__file__).resolve().parents[1]):
        if (folder / "pyproject.toml").is_file() and (folder / "negrl").is_dir():
            return folder
    return None


def resolve_runs_dir(path: Path | str, start: Path | str | None = None) -> Path:
    """`path` as given if absolute, else from the repository root (`repo_root`), so that the notebook finds
    `runs/` wherever Jupyter started (e.g. in notebooks/); from the working directory outside a checkout."""
    path = Path(path).expanduser()
    root = None if path.is_absolute() else repo_root(start)
    return root / path if root is not None else path


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negrl-report",
        description="Group the runs under DIR by config (seeds pooled), write report.md, report.csv and figures.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="directory searched recursively for run directories")
    parser.add_argument("--out", metavar="OUTDIR", type=Path, help="where to write the report (default: DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code 0 on success, 1 if no run is complete (the report still lists them), 2 on bad input."""
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    try:
        report = write_report(args.dir, args.out)
    except ReportError as err:
        print(f"negrl-report: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"negrl-report: error: cannot write the report: {err}; pass a writable --out OUTDIR", file=sys.stderr)
        return 2
    print_summary(report)
    if not report.groups:
        print("negrl-report: no complete run; see 'Failed or incomplete runs' in report.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
