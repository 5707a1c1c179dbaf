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

from negrl.core import stats
from negrl.core.protocol import MIA_ATTACKS, MIA_MEMBERS, condition
from negrl.report.groups import EXTRACTION_VALUES, MIA_PHASES, Group
from negrl.report.labels import fmt_value
from negrl.report.runs import Run, describe_start

Table = tuple[list[str], list[list[str]]]

#: Membership AUC columns of report.csv, by (phase, attack, member set): phase 3's `auc_<attack>_<set>`, phase 2's
#: `phase2_auc_<attack>_<set>`; each with _mean, _std and _p (two-sided t-test of AUC = 0.5 across seeds).
AUC_COLUMNS = {
    (phase, attack, member): f"{'' if phase == 3 else f'phase{phase}_'}auc_{attack}_{member}"
    for phase in MIA_PHASES
    for attack in MIA_ATTACKS
    for member in MIA_MEMBERS
}

CSV_COLUMNS = (
    "group", "n", "seeds", "n_letters", "chance_ll",
    "metric_mean", "metric_std", "delta_mean", "delta_std",
    "control_metric_mean", "control_metric_std", "control_delta_mean", "control_delta_std",
    "t", "p_two_sided", "p_greater", "ll_t", "ll_p_two_sided", "ll_p_greater", "geo_mean_increase",
    "heldout_minus_random_mean", "heldout_minus_random_std", "heldout_minus_random_t",
    "heldout_minus_random_p_two_sided", "heldout_minus_random_p_greater",
    "final_n", "final_delta_mean", "final_delta_std", "final_t", "final_p_two_sided", "final_p_greater",
    "final_heldout_minus_random_mean", "final_heldout_minus_random_std", "final_heldout_minus_random_t",
    "final_heldout_minus_random_p_two_sided", "final_heldout_minus_random_p_greater",
    *(f"{name}_{m}" for name in EXTRACTION_VALUES for m in ("mean", "std")),
    *(f"{name}_{m}" for name in AUC_COLUMNS.values() for m in ("mean", "std", "p")),
)  # fmt: skip


def _test_columns(prefix: str, test: stats.TTest) -> dict[str, float]:
    """A t-test as report.csv columns: <prefix>t, <prefix>p_two_sided, <prefix>p_greater."""
    return {f"{prefix}t": test.t, f"{prefix}p_two_sided": test.p_two_sided, f"{prefix}p_greater": test.p_greater}


def _diff_columns(prefix: str, d: stats.PairedDifference) -> dict[str, float]:
    """A paired difference as report.csv columns: <prefix>_mean, _std, _t, _p_two_sided, _p_greater."""
    return {f"{prefix}_mean": d.mean, f"{prefix}_std": d.std, **_test_columns(f"{prefix}_", d)}


def group_row(group: Group) -> dict[str, Any]:
    """One group's statistics as a flat row (knob columns first); NaN where undefined (n < 2, zero variance)."""
    s, f = group.stats, group.stats.final
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
        **_test_columns("", s.test),
        **_test_columns("ll_", s.ll_test),
        "geo_mean_increase": s.geo_increase,
        **_diff_columns("heldout_minus_random", s.diff),
        "final_n": f.delta.n,
        "final_delta_mean": f.delta.mean,
        "final_delta_std": f.delta.std,
        **_test_columns("final_", f.test),
        **_diff_columns("final_heldout_minus_random", f.diff),
        **{f"{name}_{m}": getattr(v, m) for name, v in group.extraction.items() for m in ("mean", "std")},
        **{
            f"{name}_{m}": value
            for key, name in AUC_COLUMNS.items()
            for m, value in (
                ("mean", group.membership[key].auc.mean),
                ("std", group.membership[key].auc.std),
                ("p", group.membership[key].test.p_two_sided),
            )
        },
    }


def write_csv(groups: Sequence[Group], path: Path) -> None:
    """report.csv: one row per group; NaN (n = 1, zero variance) is an empty cell."""
    knobs = [k for k in groups[0].knobs if k not in CSV_COLUMNS] if groups else []  # n_letters: a column already
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


def _pm_diff(d: stats.PairedDifference) -> str:
    """A paired difference (held-out minus random), mean ± std."""
    return _pm(stats.Summary(d.n, d.mean, d.std))


#: p-values below this print as '< 1e-300' (a float p of 0 is an underflow, never an exact 0).
P_FLOOR = 1e-300


def _p(value: float) -> str:
    if value is not None and 0 <= value < P_FLOOR:
        return f"< {P_FLOOR:.0e}"
    return _f(value, ".2g" if value < 1e-3 else ".4f")


def group_table(groups: Sequence[Group]) -> Table:
    """Header and formatted rows of the group table (shared by report.md and stdout): each statistic of the max
    over phase-3 evaluations (the paper's metric) next to the same for the final evaluation."""
    header = [
        "group", "n", "seeds", "delta max (mean ± std)", "delta final", "control delta max", "p two-sided max",
        "p two-sided final", "p greater max", "p LL two-sided max", "geo-mean increase", "held − random max",
        "held − random final",
        "paired p max", "paired p final",
    ]  # fmt: skip
    rows = []
    for g in groups:
        s, f = g.stats, g.stats.final
        rows.append([
            g.label, str(s.n), " ".join(str(x) for x in s.seeds), _pm(s.delta), _pm(f.delta), _pm(s.control_delta),
            _p(s.test.p_two_sided), _p(f.test.p_two_sided), _p(s.test.p_greater), _p(s.ll_test.p_two_sided),
            f"{s.geo_increase:+.1%}",
            _pm_diff(s.diff), _pm_diff(f.diff), _p(s.diff.p_two_sided), _p(f.diff.p_two_sided),
        ])  # fmt: skip
    return header, rows


def _pm_of(summary: stats.Summary, n: int, spec: str) -> str:
    """`_pm`, with "(n=K)" after a value that rests on fewer runs than its row's `n`."""
    text = _pm(summary, spec)
    return f"{text} (n={summary.n})" if 0 < summary.n < n else text


def _extraction_n(group: Group) -> int:
    """The group's runs with any extraction figure."""
    return max(v.n for v in group.extraction.values())


def _pair(group: Group, a: str, b: str, spec: str = ".3f") -> list[str]:
    n = _extraction_n(group)
    return [_pm_of(group.extraction[a], n, spec), _pm_of(group.extraction[b], n, spec)]


def extraction_table(groups: Sequence[Group]) -> Table:
    """Header and rows of the extraction attacks per group (mean ± std over the runs that have them; n/a where
    none has, e.g. runs made before an attack): `n` the runs with any of them, and "(n=K)" after a value from fewer."""
    header = [
        "group", "n", "greedy acc held-out", "greedy acc random", "strength held-out", "strength random",
        "beam hits held-out", "beam hits random", "sampled hits held-out", "sampled hits random", "generated",
        "exposure held-out (bits)", "exposure random (bits)", "logit-diff acc held-out", "logit-diff acc random",
    ]  # fmt: skip
    rows = []
    for g in groups:
        n = _extraction_n(g)
        rows.append([
            g.label, str(n), *_pair(g, "greedy_acc_heldout", "greedy_acc_random"),
            *_pair(g, "strength_heldout", "strength_random"),
            *_pair(g, "beam_hits_heldout", "beam_hits_random", ".1f"),
            *_pair(g, "sampled_hits_heldout", "sampled_hits_random", ".1f"),
            _pm_of(g.extraction["generation_n"], n, ".0f"),
            *_pair(g, "exposure_heldout", "exposure_random", ".2f"),
            *_pair(g, "logit_diff_acc_heldout", "logit_diff_acc_random"),
        ])  # fmt: skip
    return header, rows


def membership_table(groups: Sequence[Group]) -> Table:
    """Header and rows of the membership-inference AUCs: per group, phase (the final model first) and attack, each
    member set's AUC (mean ± std over seeds) and the two-sided p of AUC = 0.5 across seeds. A (phase, attack) that
    no run of the group has is left out."""
    header = ["group", "phase", "attack", "n", "AUC held-out", "p held-out", "AUC useful", "p useful"]
    rows = []
    for g in groups:
        for phase in MIA_PHASES:
            for attack in MIA_ATTACKS:
                cells = [g.membership[(phase, attack, member)] for member in MIA_MEMBERS]
                if not any(c.auc.n for c in cells):
                    continue
                n = max(c.auc.n for c in cells)
                values = [x for c in cells for x in (_pm_of(c.auc, n, ".3f"), _p(c.test.p_two_sided))]
                rows.append([g.label, f"{phase} ({condition(phase, g.prefix)})", attack, str(n), *values])
    return header, rows


def objectives_table(groups: Sequence[Group]) -> Table:
    """Header and rows comparing negative-reinforcement objectives (any number of them, one row per group): the
    paper's metric at its max beside the final evaluation, the random control, held-out minus random, the final
    model's membership AUCs of the held-out negatives, and the extraction attacks (n/a where a run has none)."""
    final = next(iter(MIA_PHASES))  # the final model's phase
    header = [
        "group", "n", "delta max (mean ± std)", "delta final", "control delta max", "control delta final",
        "p greater max", "held − random max", "held − random final", "paired p max",
        *(f"AUC held-out {attack} (phase {final})" for attack in MIA_ATTACKS),
        "greedy acc held-out / random", "exposure held-out / random", "logit-diff acc held-out / random",
    ]  # fmt: skip
    rows = []
    for g in groups:
        s, f = g.stats, g.stats.final
        rows.append([
            g.label, str(s.n), _pm(s.delta), _pm(f.delta), _pm(s.control_delta), _pm(f.control_delta),
            _p(s.test.p_greater), _pm_diff(s.diff), _pm_diff(f.diff), _p(s.diff.p_two_sided),
            *(_pm(g.membership[(final, attack, "heldout")].auc, ".3f") for attack in MIA_ATTACKS),
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
