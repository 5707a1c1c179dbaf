"""`negrl-report DIR`: collect every run under DIR, group the seeds, write report.md, report.csv and figures.

The command only: runs are read by `runs`, grouped by `groups`, tabulated by `tables` (explained by `notes`) and
drawn by `figures` (all in negrl.report); their public names are re-exported here. Runs read back from W&B
(`wandb_runs`, for the notebook) are not: the command does without W&B.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from negrl.core.protocol import EVAL_SETS, MIA_ATTACKS, MIA_MEMBERS
from negrl.report import figures
from negrl.report.curves import Curves, curves_from_rows, read_curves
from negrl.report.groups import (
    CHANCE_AUC,
    EXTRACTION_VALUES,
    IGNORED_KEYS,
    KNOB_ORDER,
    MIA_PHASES,
    AucStats,
    FinalStats,
    Group,
    GroupStats,
    RepeatedSeed,
    auc_stats,
    experiment_key,
    extraction_value,
    final_stats,
    flatten,
    group_runs,
    label_groups,
    newest_per_seed,
    varying_knobs,
)
from negrl.report.notes import (
    REPEATED_NOTES,
    chance_text,
    column_notes,
    extraction_notes,
    membership_notes,
    not_learned_notes,
)
from negrl.report.runs import (
    CHOICE_GROUPS,
    CONFIG,
    METRICS,
    RESULTS,
    SKIPPED_DIRS,
    ReportError,
    Run,
    baseline_letters,
    config_letters,
    describe_start,
    find_run_dirs,
    load_run,
    load_runs,
    repo_root,
    resolve_runs_dir,
    start_time,
)
from negrl.report.tables import (
    AUC_COLUMNS,
    CSV_COLUMNS,
    P_FLOOR,
    duplicates_table,
    extraction_table,
    failed_table,
    group_row,
    group_table,
    markdown_table,
    membership_table,
    objectives_table,
    run_table,
    text_table,
    write_csv,
)

__all__ = [
    # the command
    "Report", "write_report", "render_markdown", "print_summary", "build_parser", "main",
    # negrl.report.curves (and negrl.method.data's evaluation sets)
    "Curves", "curves_from_rows", "read_curves", "EVAL_SETS",
    # negrl.report.runs
    "CHOICE_GROUPS", "CONFIG", "METRICS", "RESULTS", "SKIPPED_DIRS", "ReportError", "Run", "baseline_letters",
    "config_letters", "describe_start", "find_run_dirs", "load_run", "load_runs", "repo_root", "resolve_runs_dir",
    "start_time",
    # negrl.report.groups
    "CHANCE_AUC", "EXTRACTION_VALUES", "IGNORED_KEYS", "KNOB_ORDER", "MIA_ATTACKS", "MIA_MEMBERS", "MIA_PHASES",
    "AucStats", "FinalStats", "Group", "GroupStats", "RepeatedSeed", "auc_stats", "experiment_key",
    "extraction_value", "final_stats", "flatten", "group_runs", "label_groups", "newest_per_seed", "varying_knobs",
    # negrl.report.tables and negrl.report.notes
    "AUC_COLUMNS", "CSV_COLUMNS", "P_FLOOR", "duplicates_table", "extraction_table", "failed_table", "group_row",
    "group_table", "markdown_table", "membership_table", "objectives_table", "run_table", "text_table", "write_csv",
    "REPEATED_NOTES", "chance_text", "column_notes", "extraction_notes", "membership_notes",
]  # fmt: skip


MEMBERSHIP_TITLE = "Membership inference (ROC AUC)"


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
    if not_learned := not_learned_notes(report.groups):
        parts += ["## Runs that did not learn the task", not_learned]
    if report.left_out:
        parts += ["## Repeated seeds", REPEATED_NOTES, markdown_table(*duplicates_table(report.groups))]
    if "objective" in (report.groups[0].knobs if report.groups else {}):
        parts += ["## Objectives compared", markdown_table(*objectives_table(report.groups))]
    if any(g.extraction["greedy_acc_heldout"].n for g in report.groups):
        parts += ["## Extraction", markdown_table(*extraction_table(report.groups)), extraction_notes(report.groups)]
    membership = membership_table(report.groups)
    if membership[1]:
        parts += [f"## {MEMBERSHIP_TITLE}", markdown_table(*membership), membership_notes()]
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
    if not_learned := not_learned_notes(report.groups):
        print("\nruns that did not learn the task:\n" + not_learned.replace("**", ""), file=stream)
    membership = membership_table(report.groups)
    if membership[1]:
        print(f"\n{MEMBERSHIP_TITLE}:", file=stream)
        print(text_table(*membership), file=stream)
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
