"""The report's tables: report.csv's rows, and each table as a header and formatted rows, rendered as
Markdown (report.md, the notebook) or plain text (stdout).

Every table function returns `(header, rows)` of strings; `markdown_table` and `text_table` render them.
Undefined values (NaN: one seed, zero variance) are an empty cell in report.csv and 'n/a' in the tables.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from negrl import stats
from negrl.groups import EXTRACTION_VALUES, Group, GroupStats
from negrl.labels import fmt_value
from negrl.runs import Run, describe_start

Table = tuple[list[str], list[list[str]]]

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


def group_table(groups: Sequence[Group]) -> Table:
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


def extraction_table(groups: Sequence[Group]) -> Table:
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


def objectives_table(groups: Sequence[Group]) -> Table:
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


def run_table(runs: Sequence[Run], groups: Sequence[Group]) -> Table:
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


def failed_table(runs: Sequence[Run]) -> Table:
    """Header and rows of the runs that are not complete, with status and reason."""
    rows = [[r.rel, r.status, str(r.seed), r.reason] for r in runs if not r.complete]
    return ["run", "status", "seed", "reason"], rows


def duplicates_table(groups: Sequence[Group]) -> Table:
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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as Markdown, `|` escaped and line breaks flattened in its cells."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as plain text in aligned columns, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
