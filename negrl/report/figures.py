"""The paper's figures from grouped runs (`negrl.report.groups`), drawn without pyplot's global state.

Each `plot_*` function takes groups and an optional output path, saves a PNG there (Agg) and
returns the `Figure` (a notebook displays it inline). `make_figures` draws those the data supports.
Chance is drawn at each group's own log(1/K) (K letters; 1/K on fig_positions' rates), one line per K when
groups differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from negrl.core import stats
from negrl.core.protocol import EVAL_SETS, PHASES, condition
from negrl.core.stats import Summary
from negrl.report.curves import as_float
from negrl.report.groups import Group
from negrl.report.labels import fmt_value, slug, sort_value
from negrl.report.runs import Run

COLORS = {"heldout": "tab:red", "useful": "tab:blue", "random": "tab:gray"}
SET_LABELS = {"heldout": "held-out negatives", "useful": "useful negatives", "random": "random passwords"}
#: Line styles of the chance levels, one per K in a figure.
CHANCE_STYLES = (":", "-.", (0, (1, 3)), (0, (5, 2)))


def _save(fig: Figure, path: Path | str | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _err(s: Summary) -> float:
    return 0.0 if math.isnan(s.std) else s.std


def _letters(groups: Sequence[Group]) -> list[int]:
    """The distinct K (numbers of letters) of `groups`."""
    return sorted({g.n_letters for g in groups})


def _chance_symbol(groups: Sequence[Group]) -> str:
    """'log(1/26)' when the groups share K, else 'log(1/K)' (each group's own K)."""
    ks = _letters(groups)
    return f"log(1/{ks[0]})" if len(ks) == 1 else "log(1/K)"


def _chance_line(ax: Axes, groups: Sequence[Group], vertical: bool = False) -> None:
    """Chance log(1/K): on an LL axis a line at each K's level (named by K when they differ), on a (vertical)
    delta axis at 0, which is chance for every group."""
    ks = _letters(groups)
    if vertical:
        where = stats.chance_name(ks[0]) if len(ks) == 1 else f"log(1/K) of each group's K ({', '.join(map(str, ks))})"
        ax.axvline(0.0, color="black", lw=0.8, ls=":", label=f"chance: delta = 0, LL = {where}")
        return
    for i, k in enumerate(ks):
        which = f" (groups with {k} letters)" if len(ks) > 1 else ""
        style = CHANCE_STYLES[i % len(CHANCE_STYLES)]
        ax.axhline(stats.chance_ll(k), color="black", lw=0.8, ls=style, label=f"chance {stats.chance_name(k)}{which}")


def _spread(groups: Sequence[Group]) -> str:
    """What the error bars are: mean ± std over seeds, none for single-seed groups."""
    ones = [g.stats.n == 1 for g in groups]
    if all(ones):
        return "one seed each, no error bars"
    return "mean ± std over seeds; no error bar where n = 1" if any(ones) else "mean ± std over seeds"


def _seeds_label(runs: Sequence[Run]) -> str:
    """'mean of 3 seeds', or the seed itself when there is one."""
    return f"seed {runs[0].seed}" if len(runs) == 1 else f"mean of {len(runs)} seeds"


def _rest_label(group: Group, knob: str) -> str:

    return " ".join(f"{k}={fmt_value(v)}" for k, v in group.knobs.items() if k != knob)


def plot_sweep(
    groups: Sequence[Group], knob: str, path: Path | str | None = None, order: Callable[[Any], Any] | None = None
) -> Figure:
    """Held-out and random max LL (mean ± std over seeds) against `knob`; one line pair per other-knob setting.

    Numeric knobs are placed by value; others (e.g. model) categorically, sorted by `order`.
    """

    values = sorted({g.knobs[knob] for g in groups}, key=order or sort_value)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    series: dict[str, list[Group]] = {}
    for g in groups:
        series.setdefault(_rest_label(g, knob), []).append(g)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    shift = 0.0 if numeric else 0.06
    for i, (rest, members) in enumerate(series.items()):
        members = sorted(members, key=lambda g: position[g.knobs[knob]])
        x = np.array([position[g.knobs[knob]] for g in members], dtype=float)
        suffix = f" ({rest})" if rest else ""
        color = f"C{i}"
        for which, marker, ls, dx in (("metric", "o", "-", -shift), ("control_metric", "s", "--", shift)):
            summaries = [getattr(g.stats, which) for g in members]
            name = "held-out negatives" if which == "metric" else "random (control)"
            ax.errorbar(
                x + dx, [s.mean for s in summaries], yerr=[_err(s) for s in summaries], marker=marker, ls=ls,
                color=color, alpha=1.0 if which == "metric" else 0.6, capsize=3, label=f"{name}{suffix}",
            )  # fmt: skip
    _chance_line(ax, groups)
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(knob)
    ax.set_ylabel("max phase-3 log-likelihood per token")
    ax.set_title(f"Held-out vs random passwords against {knob} ({_spread(groups)})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_holdout(groups: Sequence[Group], path: Path | str | None = None) -> Figure:
    """fig_holdout: LL of held-out negatives and of random passwords vs the held-out fraction."""
    return plot_sweep(groups, "holdout_frac", path)


def plot_models(groups: Sequence[Group], path: Path | str | None = None) -> Figure:
    """fig_models: the same vs model, ordered by size."""

    return plot_sweep(groups, "model", path, order=lambda v: sort_value(v, "model"))


def plot_ablations(groups: Sequence[Group], path: Path | str | None = None) -> Figure:
    """fig_ablations: each group's delta and control delta as horizontal error bars around 0 = chance log(1/K)."""
    fig = Figure(figsize=(7, 1.2 + 0.55 * len(groups)))
    ax = fig.add_subplot()
    y = np.arange(len(groups))[::-1].astype(float)
    for which, marker, color, dy, name in (
        ("delta", "o", COLORS["heldout"], 0.12, "held-out negatives"),
        ("control_delta", "s", COLORS["random"], -0.12, "random (control)"),
    ):
        summaries = [getattr(g.stats, which) for g in groups]
        ax.errorbar(
            [s.mean for s in summaries], y + dy, xerr=[_err(s) for s in summaries], fmt=marker, color=color,
            capsize=3, label=name,
        )  # fmt: skip
    _chance_line(ax, groups, vertical=True)
    ax.set_yticks(y, [f"{g.label} (n={g.stats.n})" for g in groups])
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel(f"delta = max phase-3 LL − {_chance_symbol(groups)}  ({_spread(groups)})")
    ax.set_title("Per group: held-out negatives vs random control around chance")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def mean_curves(group: Group) -> tuple[np.ndarray, dict[str, np.ndarray], list[Run]]:
    """Steps, the per-set mean LL over the group's seeds at each step (NaN-aware), and the runs with curves."""
    runs = [r for r in group.runs if r.curves is not None]
    steps = np.unique(np.concatenate([r.curves.step for r in runs])) if runs else np.array([], dtype=int)
    means = {}
    for s in EVAL_SETS:
        stack = np.full((len(runs), steps.size), np.nan)
        for i, r in enumerate(runs):
            stack[i, np.searchsorted(steps, r.curves.step)] = r.curves.ll[s]
        with np.errstate(all="ignore"):
            means[s] = np.nanmean(stack, axis=0) if runs else stack.mean(axis=0)
    return steps, means, runs


def plot_curves(group: Group, path: Path | str | None = None) -> Figure:
    """fig_curves: the three eval LL curves over all phases vs global step; per-seed thin lines, mean thick
    (a single seed: its own curve, labelled by the seed)."""
    steps, means, runs = mean_curves(group)
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    for s in EVAL_SETS:
        for r in runs if len(runs) > 1 else []:
            ax.plot(r.curves.step, r.curves.ll[s], color=COLORS[s], lw=0.6, alpha=0.3)
        ax.plot(steps, means[s], color=COLORS[s], lw=2, label=f"{SET_LABELS[s]}, {_seeds_label(runs)}")
    bounds = runs[0].boundaries() if runs else []
    for i, b in enumerate(bounds):
        ax.axvline(b, color="black", lw=0.8, ls="--", label="phase boundary" if i == 0 else None)
    edges = [int(steps.min()), *bounds, int(steps.max())] if steps.size else []
    for p, (a, b) in enumerate(zip(edges[:-1], edges[1:]), start=1):
        ax.text(
            (a + b) / 2, 1.01, f"phase {p}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8
        )
    _chance_line(ax, [group])
    ax.set_xlabel("global step")
    ax.set_ylabel("log-likelihood per token")
    conditioned = "prefix regular (phases 1-2) then reverse (3)" if group.prefix else "no prefix"
    ax.set_title(f"Eval log-likelihood, {conditioned}: {group.label}", pad=16)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _legend_below(ax: Axes, ncol: int) -> None:
    """The legend under the axes (figures with many lines), where it hides no data."""
    ax.legend(fontsize=7, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False, handlelength=4)


def has_curves(group: Group) -> bool:
    """Whether any run of the group has evaluation curves (a readable metrics.csv)."""
    return any(r.curves is not None for r in group.runs)


#: Line style of each phase's model in fig_lens.
PHASE_STYLES = {1: ":", 2: "--", 3: "-"}
#: The letter-guessing attacks in fig_positions: where each sits in results.json's `extraction`, its line style and
#: its name (greedy on the final model, phase 3; the logit difference of the phase-2 model against its reference).
POSITION_ATTACKS = {
    "greedy": ("-", 3, "greedy, final model (phase 3, {})"),
    "logit_diff": ("--", 2, "logit difference, phase 2 vs reference ({})"),
}


def seed_mean(runs: Sequence[Run], where: Sequence[str]) -> tuple[np.ndarray, int]:
    """The element-wise mean over `runs` of the list at `where` in results.json (null entries skipped, NaN where no
    run has a value), and the number of runs that have the list."""
    lists = [v for v in (r.value(*where) for r in runs) if isinstance(v, list) and v]
    if not lists:
        return np.array([], dtype=float), 0
    stack = np.full((len(lists), max(map(len, lists))), np.nan)
    for i, values in enumerate(lists):
        stack[i, : len(values)] = [as_float(v) for v in values]
    known = np.isfinite(stack)
    count = known.sum(axis=0)
    total = np.where(known, stack, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(stack.shape[1], np.nan), where=count > 0), len(lists)


def lens_where(phase: int, name: str) -> tuple[str, ...]:
    """Where the logit lens of set `name` on phase `phase`'s final model sits in results.json."""
    return ("phases", str(phase), "extraction", "lens", name)


def has_lens(group: Group) -> bool:
    """Whether any run of the group recorded a logit lens."""
    return any(seed_mean(group.runs, lens_where(p, s))[1] for p in PHASES for s in EVAL_SETS)


def plot_lens(group: Group, path: Path | str | None = None) -> Figure:
    """fig_lens: the logit lens, each layer's mean letter-renormalised log-likelihood (0 = the embeddings) of each
    set (colour) on each phase's final model (line style), mean over the group's seeds; chance log(1/K)."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for phase in PHASES:
        for name in EVAL_SETS:
            mean, n = seed_mean(group.runs, lens_where(phase, name))
            if n:
                label = f"{SET_LABELS[name]}, phase {phase} ({condition(phase, group.prefix)})"
                ax.plot(np.arange(mean.size), mean, color=COLORS[name], ls=PHASE_STYLES[phase], marker=".", label=label)
    _chance_line(ax, [group])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer read out (0 = embeddings, last = the model's output)")
    ax.set_ylabel("mean letter LL (renormalised over K)")
    ax.set_title(f"Logit lens of each phase's final model: {group.label} ({_seeds_label(group.runs)})")
    _legend_below(ax, ncol=3)
    return _save(fig, path)


def positions_where(attack: str, name: str) -> tuple[str, ...]:
    """Where the per-position recovery rate of `attack` on set `name` sits in results.json."""
    return ("extraction", attack, name, "position_accuracy")


def has_positions(group: Group) -> bool:
    """Whether any run of the group recorded greedy recovery per letter position."""
    return any(seed_mean(group.runs, positions_where("greedy", s))[1] for s in ("heldout", "random"))


def plot_positions(group: Group, path: Path | str | None = None) -> Figure:
    """fig_positions: the recovery rate at each letter position (1..L; a position where the letter is given is
    skipped) of the greedy attack on the final model and, if recorded, of phase 2's logit difference, held-out vs
    random, mean over the group's seeds; chance 1/K."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    length = 0
    for attack, (style, phase, named) in POSITION_ATTACKS.items():
        attack_label = named.format(condition(phase, group.prefix))
        for name in ("heldout", "random"):
            mean, n = seed_mean(group.runs, positions_where(attack, name))
            if n:
                length = max(length, mean.size)
                label = f"{attack_label}: {SET_LABELS[name]}"
                ax.plot(np.arange(1, mean.size + 1), mean, color=COLORS[name], ls=style, marker="o", ms=3, label=label)
    k = group.n_letters
    ax.axhline(stats.chance_p(k), color="black", lw=0.8, ls=":", label=f"chance 1/{k} = {stats.chance_p(k):.3f}")
    ax.set_xticks(range(1, length + 1))
    ax.set_xlim(0.5, length + 0.5)
    ax.set_xlabel("letter position in the password")
    ax.set_ylabel("recovery rate (true letter strictly most likely)")
    ax.set_title(f"Letter-by-letter recovery: {group.label} ({_seeds_label(group.runs)})")
    _legend_below(ax, ncol=2)
    return _save(fig, path)


Drawer = Callable[[Path | str | None], Figure]
#: The figures drawn once per group: file stem, the test of whether the group has the data, the drawer, and why a
#: group without the data is skipped.
PER_GROUP = (
    ("fig_curves", has_curves, plot_curves, "no complete run of the group has a readable metrics.csv"),
    ("fig_lens", has_lens, plot_lens, "no complete run of the group has a logit lens (results.json lens)"),
    ("fig_positions", has_positions, plot_positions,
     "no complete run of the group has greedy recovery per letter position (results.json position_accuracy)"),
)  # fmt: skip


def plan(groups: Sequence[Group]) -> tuple[list[tuple[str, Drawer]], list[tuple[str, str]]]:
    """The figures the groups support, as (file name, draw(path) -> Figure), and (file name, why skipped)."""

    todo: list[tuple[str, Drawer]] = []
    skipped: list[tuple[str, str]] = []
    if not groups:
        return todo, [("all figures", "no complete run")]
    knobs = set(groups[0].knobs)
    for name, knob, plot in (
        ("fig_holdout.png", "holdout_frac", plot_holdout),
        ("fig_models.png", "model", plot_models),
    ):
        if knob in knobs:
            todo.append((name, partial(plot, groups)))
        else:
            skipped.append((name, f"the groups do not differ in {knob}"))
    if len(groups) > 1:
        todo.append(("fig_ablations.png", partial(plot_ablations, groups)))
    else:
        skipped.append(("fig_ablations.png", "needs at least two groups"))
    for stem, ready, drawer, why in PER_GROUP:
        for g in groups:
            name = f"{stem}.png" if len(groups) == 1 else f"{stem}_{slug(g.label)}.png"
            if ready(g):
                todo.append((name, partial(drawer, g)))
            else:
                skipped.append((name, why))
    return todo, skipped


def make_figures(groups: Sequence[Group], out: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Draw every figure the groups support into `out`; returns (written paths, [(file name, why skipped)])."""
    todo, skipped = plan(groups)
    for name, draw in todo:
        draw(out / name)
    return [out / name for name, _ in todo], skipped
