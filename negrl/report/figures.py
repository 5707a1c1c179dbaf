"""The paper's figures from grouped runs (`negrl.report.groups`), drawn without pyplot's global state.

Each `plot_*` function takes groups and an optional output path, saves a PNG there (Agg) and returns the `Figure`
(a notebook displays it inline). `make_figures` draws those the data supports. Every figure keeps the same
conventions (tests/report/test_figures.py checks them on a synthetic sweep):

- one colour per evaluation set (`COLORS`), whatever the figure: held-out red, useful blue, random gray;
- where seeds are pooled, the mean and ± one standard deviation over seeds (error bars on the sweeps and the
  ablations, a shaded band on the curves, the lens and the positions), nothing where a group has one seed;
- the legend under the plot, in room of its own (constrained layout), never over the data;
- group labels longer than `labels.MAX_NAME` characters are G1, G2, ... on the axis, each spelled out in the key;
- every axis labelled; titles and legend entries wrapped to the figure's width (`WIDTH`).

Chance is drawn at each group's own log(1/K) (K letters; 1/K on fig_positions' rates), one line per K when groups
differ.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from negrl.core import stats
from negrl.core.protocol import EVAL_SETS, PHASES, condition
from negrl.core.stats import Summary
from negrl.report.curves import as_float, pooled, stack_curves
from negrl.report.groups import Group
from negrl.report.labels import fmt_value, group_names, slug, sort_value
from negrl.report.runs import Run

#: The colour of each evaluation set, in every figure.
COLORS = {"heldout": "tab:red", "useful": "tab:blue", "random": "tab:gray"}
SET_LABELS = {"heldout": "held-out negatives", "useful": "useful negatives", "random": "random passwords"}
#: Line styles of the chance levels, one per K in a figure.
CHANCE_STYLES = (":", "-.", (0, (1, 3)), (0, (5, 2)))
#: Markers of the series of a sweep figure (the settings of the other knobs), in order.
SERIES_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
#: Opacity of the ± std bands.
BAND_ALPHA = 0.18

#: Every figure's width and the height its plot gets (inches); the title, the axis labels and the legend add theirs.
WIDTH, PLOT_HEIGHT = 7.0, 3.4
DPI = 100
FONT, LABEL_FONT, TITLE_FONT = 8, 9, 10
#: Characters per line across the figure (DejaVu Sans, with a margin): titles at TITLE_FONT, legends at FONT.
TITLE_CHARS, LEGEND_CHARS = 84, 100
#: Inches per legend line at FONT (text and spacing), and what the title, tick labels and x label add.
LEGEND_LINE, TITLE_LINE, DECORATIONS = 1.75 * FONT / 72, 1.3 * TITLE_FONT / 72, 0.8

Entry = tuple[Artist, str]


def _save(fig: Figure, path: Path | str | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig


def _figure() -> tuple[Figure, Axes]:
    """A figure laid out by constrained layout (its size is set by `_finish`) and its axes."""
    fig = Figure(layout="constrained")
    ax = fig.add_subplot()
    ax.tick_params(labelsize=FONT)
    return fig, ax


def _wrap(text: str, width: int) -> str:
    """`text` wrapped at `width` characters, each of its lines on its own."""
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) or line for line in text.split("\n"))


def _columns(labels: Sequence[str]) -> int:
    """Legend columns: three or two where every label fits its column, else one."""
    for n in (3, 2):
        if len(labels) >= n and max(map(len, labels)) <= LEGEND_CHARS // n - 8:
            return n
    return 1


def _legend_lines(labels: Sequence[str], ncols: int) -> int:
    """The height of the legend in lines: matplotlib fills its columns top to bottom."""
    per_column = math.ceil(len(labels) / ncols)
    heights = [label.count("\n") + 1 for label in labels]
    return max(sum(heights[i : i + per_column]) for i in range(0, len(heights), per_column))


def _finish(
    fig: Figure,
    ax: Axes,
    title: str,
    entries: Sequence[Entry],
    path: Path | str | None,
    plot_height: float = PLOT_HEIGHT,
    title_pad: float = 6.0,
) -> Figure:
    """Title the axes (wrapped), put the legend under the plot, size the figure so the plot keeps `plot_height`
    inches, save it to `path`."""
    title = _wrap(title, TITLE_CHARS)
    ax.set_title(title, fontsize=TITLE_FONT, pad=title_pad)
    ax.xaxis.label.set_fontsize(LABEL_FONT)
    ax.yaxis.label.set_fontsize(LABEL_FONT)
    ncols = _columns([label for _, label in entries])
    labels = [_wrap(label, LEGEND_CHARS // ncols - 8) for _, label in entries]
    fig.legend(
        [h for h, _ in entries], labels, loc="outside lower center", ncols=ncols, fontsize=FONT, frameon=False,
        handlelength=3, columnspacing=1.5,
    )  # fmt: skip
    title_height = (title.count("\n") + 1) * TITLE_LINE
    fig.set_size_inches(WIDTH, plot_height + DECORATIONS + title_height + _legend_lines(labels, ncols) * LEGEND_LINE)
    return _save(fig, path)


def _tag(artists: Any, name: str) -> None:
    """Mark the artists of set `name` (its gid), so a reader of the figure (or a test) can tell which set each is."""
    for a in artists if isinstance(artists, (list, tuple)) else [artists]:
        if isinstance(a, (list, tuple)):
            _tag(a, name)
        elif a is not None:
            a.set_gid(name)


def _set_entry(name: str, ls: Any = "-", label: str | None = None) -> Entry:
    """The legend entry of evaluation set `name`: its colour."""
    return Line2D([], [], color=COLORS[name], ls=ls, lw=2), label or SET_LABELS[name]


def _style_entry(ls: Any, label: str, marker: str = "") -> Entry:
    """A legend entry for a line style or marker (in black: it means the same in every colour)."""
    return Line2D([], [], color="black", ls=ls, lw=1.2, marker=marker), label


def _spread_entry(n: int, bars: bool = False, note: str = "") -> list[Entry]:
    """The legend entry of the ± std bands (or error bars), if any was drawn (n >= 2 seeds)."""
    if n < 2:
        return []
    if bars:
        handle = Line2D([], [], color="black", marker="|", ms=10, ls="none")
        return [(handle, f"bars: ± 1 std over the {n} seeds{note}")]
    return [(Patch(color="black", alpha=BAND_ALPHA, lw=0), f"shaded: ± 1 std over the {n} seeds{note}")]


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str) -> None:
    """The ± std band of set `name` around `mean` (where the std is known: two or more seeds)."""
    known = np.isfinite(std) & np.isfinite(mean)
    if known.any():
        band = ax.fill_between(x, mean - std, mean + std, where=known, color=COLORS[name], alpha=BAND_ALPHA, lw=0)
        band.set_gid(name)


def _dodge(i: int, n: int, span: float) -> float:
    """The x offset of the i-th of n series drawn side by side within `span` around each x."""
    return (i - (n - 1) / 2) * span / n


def _bars(
    ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str, bounds: tuple[float, float] | None = None
) -> None:
    """The ± std error bars of set `name` at `x`, cut at `bounds` (a rate's 0 and 1) if given (no line, no caps: the
    line is drawn on its own)."""
    if not np.isfinite(std).any():
        return
    std = np.nan_to_num(std)
    low, high = (std, std) if bounds is None else (np.minimum(std, mean - bounds[0]), np.minimum(std, bounds[1] - mean))
    bars = ax.errorbar(x, mean, yerr=[low, high], fmt="none", ecolor=COLORS[name], elinewidth=1, capsize=0)
    _tag(list(bars.lines), name)


def _err(s: Summary) -> float:
    return 0.0 if math.isnan(s.std) else s.std


def _letters(groups: Sequence[Group]) -> list[int]:
    """The distinct K (numbers of letters) of `groups`."""
    return sorted({g.n_letters for g in groups})


def _chance_symbol(groups: Sequence[Group]) -> str:
    """'log(1/26)' when the groups share K, else 'log(1/K)' (each group's own K)."""
    ks = _letters(groups)
    return f"log(1/{ks[0]})" if len(ks) == 1 else "log(1/K)"


def _chance_line(ax: Axes, groups: Sequence[Group], vertical: bool = False) -> list[Entry]:
    """Chance log(1/K): on an LL axis a line at each K's level (named by K when they differ), on a (vertical)
    delta axis at 0, which is chance for every group. Returns their legend entries."""
    ks = _letters(groups)
    if vertical:
        where = stats.chance_name(ks[0]) if len(ks) == 1 else f"log(1/K) of each group's K ({', '.join(map(str, ks))})"
        line = ax.axvline(0.0, color="black", lw=0.8, ls=":", label=f"chance: delta = 0, LL = {where}")
        return [(line, line.get_label())]
    entries = []
    for i, k in enumerate(ks):
        which = f" (groups with {k} letters)" if len(ks) > 1 else ""
        style = CHANCE_STYLES[i % len(CHANCE_STYLES)]
        label = f"chance {stats.chance_name(k)}{which}"
        line = ax.axhline(stats.chance_ll(k), color="black", lw=0.8, ls=style, label=label)
        entries.append((line, line.get_label()))
    return entries


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
    """Held-out and random max LL (mean ± std over seeds) against `knob`: colour is the set, the marker the setting
    of the other knobs (one per series, named in the legend).

    Numeric knobs are placed by value; others (e.g. model) categorically, sorted by `order`.
    """
    values = sorted({g.knobs[knob] for g in groups}, key=order or sort_value)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    series: dict[str, list[Group]] = {}
    for g in groups:
        series.setdefault(_rest_label(g, knob), []).append(g)
    fig, ax = _figure()
    # Categorical x: each series' held-out and random bars side by side within ±0.15 of the tick.
    span = 0.0 if numeric else 0.3
    entries = [_set_entry("heldout"), _set_entry("random", "--", f"{SET_LABELS['random']} (control)")]
    for i, (rest, members) in enumerate(series.items()):
        members = sorted(members, key=lambda g: position[g.knobs[knob]])
        x = np.array([position[g.knobs[knob]] for g in members], dtype=float)
        marker = SERIES_MARKERS[i % len(SERIES_MARKERS)]
        for j, (name, which, ls) in enumerate((("heldout", "metric", "-"), ("random", "control_metric", "--"))):
            dx = _dodge(2 * i + j, 2 * len(series), span)
            summaries = [getattr(g.stats, which) for g in members]
            label = f"{SET_LABELS[name]} ({rest})" if rest else SET_LABELS[name]
            bars = ax.errorbar(
                x + dx, [s.mean for s in summaries], yerr=[_err(s) for s in summaries], marker=marker, ls=ls,
                color=COLORS[name], capsize=3, ms=5, label=label,
            )  # fmt: skip
            _tag(list(bars.lines), name)
        if rest:
            entries.append(_style_entry("none", rest, marker))
    entries += _chance_line(ax, groups)
    if not numeric:
        names = [str(v) for v in values]
        slanted = max(map(len, names)) > 10  # long names slant so neighbours do not overlap
        ax.set_xticks(range(len(values)), names, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_xlabel(knob)
    ax.set_ylabel("max phase-3 log-likelihood per token")
    title = f"Held-out vs random passwords against {knob}\n({_spread(groups)})"
    return _finish(fig, ax, title, entries, path)


def plot_holdout(groups: Sequence[Group], path: Path | str | None = None) -> Figure:
    """fig_holdout: LL of held-out negatives and of random passwords vs the held-out fraction."""
    return plot_sweep(groups, "holdout_frac", path)


def plot_models(groups: Sequence[Group], path: Path | str | None = None) -> Figure:
    """fig_models: the same vs model, ordered by size."""
    return plot_sweep(groups, "model", path, order=lambda v: sort_value(v, "model"))


def plot_ablations(groups: Sequence[Group], path: Path | str | None = None) -> Figure:
    """fig_ablations: each group's delta and control delta as horizontal error bars around 0 = chance log(1/K);
    groups whose labels are long are named G1, G2, ... on the axis and spelled out in the key."""
    fig, ax = _figure()
    y = np.arange(len(groups))[::-1].astype(float)
    entries: list[Entry] = []
    for name, which, marker, dy in (("heldout", "delta", "o", 0.15), ("random", "control_delta", "s", -0.15)):
        summaries = [getattr(g.stats, which) for g in groups]
        label = SET_LABELS[name] + (" (control)" if name == "random" else "")
        bars = ax.errorbar(
            [s.mean for s in summaries], y + dy, xerr=[_err(s) for s in summaries], fmt=marker, color=COLORS[name],
            capsize=3, ms=5, label=label,
        )  # fmt: skip
        _tag(list(bars.lines), name)
        entries.append((Line2D([], [], color=COLORS[name], marker=marker, ls="none"), label))
    entries += _chance_line(ax, groups, vertical=True)
    full = [g.label for g in groups]
    names = group_names(full)
    ax.set_yticks(y, [f"{n} (n={g.stats.n})" for n, g in zip(names, groups)])
    if names != full:
        entries += [(Line2D([], [], ls="none"), f"{n}: {label}") for n, label in zip(names, full)]
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel(f"delta = max phase-3 LL − {_chance_symbol(groups)}")
    ax.set_ylabel("group")
    title = f"Per group: held-out negatives vs random control around chance\n({_spread(groups)})"
    return _finish(fig, ax, title, entries, path, plot_height=max(1.6, 0.6 + 0.32 * len(groups)))


def curve_stacks(group: Group) -> tuple[np.ndarray, dict[str, np.ndarray], list[Run]]:
    """Steps, per set the (seeds x steps) LL of the group's runs with curves (NaN where a run has no value), and
    those runs."""
    runs = [r for r in group.runs if r.curves is not None]
    steps, stacks = stack_curves([r.curves for r in runs])
    return steps, stacks, runs


def mean_curves(group: Group) -> tuple[np.ndarray, dict[str, np.ndarray], list[Run]]:
    """Steps, the per-set mean LL over the group's seeds at each step (NaN-aware), and the runs with curves."""
    steps, stacks, runs = curve_stacks(group)
    return steps, {s: pooled(stack)[0] for s, stack in stacks.items()}, runs


def plot_curves(group: Group, path: Path | str | None = None) -> Figure:
    """fig_curves: the three eval LL curves over all phases vs global step: the mean over the group's seeds and a
    ± std band (a single seed: its own curve, labelled by the seed)."""
    steps, stacks, runs = curve_stacks(group)
    fig, ax = _figure()
    entries: list[Entry] = []
    for s in EVAL_SETS:
        mean, std = pooled(stacks[s])
        _band(ax, steps, mean, std, s)
        (line,) = ax.plot(steps, mean, color=COLORS[s], lw=1.8, label=f"{SET_LABELS[s]}, {_seeds_label(runs)}")
        line.set_gid(s)
        entries.append((line, line.get_label()))
    entries += _spread_entry(len(runs))
    bounds = runs[0].boundaries() if runs else []
    for i, b in enumerate(bounds):
        line = ax.axvline(b, color="black", lw=0.8, ls="--", label="phase boundary" if i == 0 else None)
        if i == 0:
            entries.append((line, "phase boundary"))
    edges = [int(steps.min()), *bounds, int(steps.max())] if steps.size else []
    for p, (a, b) in enumerate(zip(edges[:-1], edges[1:]), start=1):
        ax.text(
            (a + b) / 2, 1.01, f"phase {p}", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=FONT
        )
    entries += _chance_line(ax, [group])
    ax.set_xlabel("global step")
    ax.set_ylabel("log-likelihood per token")
    conditioned = "prefix regular (phases 1-2) then reverse (3)" if group.prefix else "no prefix"
    title = f"Eval log-likelihood, {conditioned}: {group.label}\n({_seeds_label(runs)})"
    return _finish(fig, ax, title, entries, path, title_pad=16)  # room for the phase names above the plot


def has_curves(group: Group) -> bool:
    """Whether any run of the group has evaluation curves (a readable metrics.csv)."""
    return any(r.curves is not None for r in group.runs)


#: Line style of each phase's model in fig_lens, and the width (in layers) its nine series share around a layer.
PHASE_STYLES = {1: ":", 2: "--", 3: "-"}
LENS_SPAN = 0.54
#: The letter-guessing attacks in fig_positions: where each sits in results.json's `extraction`, its line style and
#: its name (greedy on the final model, phase 3; the logit difference of the phase-2 model against its reference).
POSITION_ATTACKS = {
    "greedy": ("-", 3, "greedy, final model (phase 3, {})"),
    "logit_diff": ("--", 2, "logit difference, phase 2 vs reference ({})"),
}
#: The width (in positions) fig_positions' series share around a position.
POSITIONS_SPAN = 0.5


def runs_with(runs: Sequence[Run], where: Sequence[str]) -> list[Run]:
    """The runs whose results.json has a non-empty list at `where`."""
    return [r for r in runs if isinstance(v := r.value(*where), list) and v]


def drawn_seeds_label(runs: Sequence[Run], wheres: Sequence[Sequence[str]]) -> str:
    """`_seeds_label` of the runs a figure's series were drawn from (the lists at `wheres`; a group's runs without
    attacks have none): 'seed 0', 'mean of 3 seeds', or 'mean of 2-3 seeds' when the series rest on different
    numbers of runs."""
    having = [h for h in (runs_with(runs, w) for w in wheres) if h]
    counts = sorted({len(h) for h in having})
    if len(counts) > 1:
        return f"mean of {counts[0]}-{counts[-1]} seeds"
    return _seeds_label(having[0] if having else runs)


def seed_stack(runs: Sequence[Run], where: Sequence[str]) -> np.ndarray:
    """The lists at `where` in results.json of the runs that have one, as a (runs x length) array (null entries and
    the ends of shorter lists NaN)."""
    lists = [r.value(*where) for r in runs_with(runs, where)]
    stack = np.full((len(lists), max(map(len, lists), default=0)), np.nan)
    for i, values in enumerate(lists):
        stack[i, : len(values)] = [as_float(v) for v in values]
    return stack


def lens_where(phase: int, name: str) -> tuple[str, ...]:
    """Where the logit lens of set `name` on phase `phase`'s final model sits in results.json."""
    return ("phases", str(phase), "extraction", "lens", name)


def has_lens(group: Group) -> bool:
    """Whether any run of the group recorded a logit lens."""
    return any(len(seed_stack(group.runs, lens_where(p, s))) for p in PHASES for s in EVAL_SETS)


def plot_lens(group: Group, path: Path | str | None = None) -> Figure:
    """fig_lens: the logit lens, each layer's mean letter-renormalised log-likelihood (0 = the embeddings) of each
    set (colour) on each phase's final model (line style), mean ± std over the group's seeds (error bars, the nine
    series side by side around each layer); chance log(1/K)."""
    fig, ax = _figure()
    drawn, seeds = [], 0
    for p, phase in enumerate(PHASES):
        for i, name in enumerate(EVAL_SETS):
            stack = seed_stack(group.runs, lens_where(phase, name))
            if len(stack):
                mean, std = pooled(stack)
                layers = np.arange(mean.size) + _dodge(p * len(EVAL_SETS) + i, len(PHASES) * len(EVAL_SETS), LENS_SPAN)
                label = f"{SET_LABELS[name]}, phase {phase} ({condition(phase, group.prefix)})"
                (line,) = ax.plot(layers, mean, color=COLORS[name], ls=PHASE_STYLES[phase], marker=".", label=label)
                line.set_gid(name)
                _bars(ax, layers, mean, std, name)
                drawn.append((phase, name))
                seeds = max(seeds, len(stack))
    entries = [_set_entry(s) for s in EVAL_SETS if any(n == s for _, n in drawn)]
    entries += [
        _style_entry(PHASE_STYLES[p], f"phase {p}'s final model ({condition(p, group.prefix)})")
        for p in PHASES
        if any(q == p for q, _ in drawn)
    ]
    entries += _spread_entry(seeds, bars=True) + _chance_line(ax, [group])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer read out (0 = embeddings, last = the model's output)")
    ax.set_ylabel("mean letter LL (renormalised over K)")
    seeds_label = drawn_seeds_label(group.runs, [lens_where(p, n) for p, n in drawn])
    title = f"Logit lens of each phase's final model: {group.label}\n({seeds_label})"
    return _finish(fig, ax, title, entries, path)


def positions_where(attack: str, name: str) -> tuple[str, ...]:
    """Where the per-position recovery rate of `attack` on set `name` sits in results.json."""
    return ("extraction", attack, name, "position_accuracy")


def has_positions(group: Group) -> bool:
    """Whether any run of the group recorded greedy recovery per letter position."""
    return any(len(seed_stack(group.runs, positions_where("greedy", s))) for s in ("heldout", "random"))


def plot_positions(group: Group, path: Path | str | None = None) -> Figure:
    """fig_positions: the recovery rate at each letter position (1..L; a position where the letter is given is
    skipped) of the greedy attack on the final model and, if recorded, of phase 2's logit difference, held-out vs
    random, mean ± std over the group's seeds (error bars within [0, 1], the four series side by side around each
    position); chance 1/K."""
    fig, ax = _figure()
    length, seeds = 0, 0
    entries: list[Entry] = [_set_entry("heldout"), _set_entry("random")]
    for a, (attack, (style, phase, named)) in enumerate(POSITION_ATTACKS.items()):
        attack_label = named.format(condition(phase, group.prefix))
        drawn = False
        for i, name in enumerate(("heldout", "random")):
            stack = seed_stack(group.runs, positions_where(attack, name))
            if len(stack):
                mean, std = pooled(stack)
                x = np.arange(1, mean.size + 1) + _dodge(2 * a + i, 2 * len(POSITION_ATTACKS), POSITIONS_SPAN)
                length, seeds, drawn = max(length, mean.size), max(seeds, len(stack)), True
                _bars(ax, x, mean, std, name, bounds=(0.0, 1.0))
                label = f"{attack_label}: {SET_LABELS[name]}"
                (line,) = ax.plot(x, mean, color=COLORS[name], ls=style, marker="o", ms=3, label=label)
                line.set_gid(name)
        if drawn:
            entries.append(_style_entry(style, attack_label))
    k = group.n_letters
    chance_label = f"chance 1/{k} = {stats.chance_p(k):.3f}"
    chance = ax.axhline(stats.chance_p(k), color="black", lw=0.8, ls=":", label=chance_label)
    entries += _spread_entry(seeds, bars=True, note=" (within 0 and 1)") + [(chance, chance.get_label())]
    ax.set_xticks(range(1, length + 1))
    ax.set_xlim(0.5, length + 0.5)
    ax.set_xlabel("letter position in the password")
    ax.set_ylabel("recovery rate (true letter strictly most likely)")
    drawn = [positions_where(a, n) for a in POSITION_ATTACKS for n in ("heldout", "random")]
    title = f"Letter-by-letter recovery: {group.label}\n({drawn_seeds_label(group.runs, drawn)})"
    return _finish(fig, ax, title, entries, path)


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
