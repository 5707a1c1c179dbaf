"""Every figure of the report, drawn from synthetic sweeps, is one a paper would print: no legend over the data,
every axis labelled, every label inside the figure and the plot wide enough to read, one colour per evaluation set,
and an interval wherever seeds are pooled; with short labels, very long ones and many groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from test_report import make_run

from negrl.report import figures
from negrl.report.groups import Group, group_runs
from negrl.report.runs import load_runs

SEEDS = (0, 1)
#: Knobs whose names and values make group labels of about 130 characters (the ablations figure squeezed its plot
#: to a third of its width with such labels).
LONG_KNOBS = {
    "an_experimental_setting_with_a_long_name": ("the-first-value-spelled-out-at-length", "the-second-value"),
    "another_setting_that_is_also_rather_long": ("enabled-for-this-group", "disabled-for-that-group"),
}


def sweep(root: Path, fracs: tuple[float, ...], models: tuple[str, ...], **knobs: object) -> list[Group]:
    """Complete runs (curves, every attack, the lens) of each held-out fraction x model x seed, grouped."""
    for frac in fracs:
        for model in models:
            for seed in SEEDS:
                name = f"{model}-{frac}-{'-'.join(map(str, knobs.values()))}-s{seed}"
                metric = -3.25 + 0.03 * seed - frac
                attacks = {"auc": 0.6 + 0.05 * seed, "accuracy": 0.05 + 0.05 * seed + frac}
                make_run(root, name, seed, metric, metric - 0.02 - 0.01 * seed, attacks=attacks, holdout_frac=frac,
                         model=model, **knobs)  # fmt: skip
    return group_runs(load_runs(root))


def long_label_sweep(root: Path) -> list[Group]:
    """Two held-out fractions x the two settings of each long knob: four groups labelled with about 130 characters."""
    (a, b), (c, d) = LONG_KNOBS.values()
    (first, second) = LONG_KNOBS
    for values in ((a, c), (b, d)):
        sweep(root / values[0], (0.05, 0.1), ("tiny",), **{first: values[0], second: values[1]})
    return group_runs(load_runs(root))


def drawn(groups: list[Group]) -> Iterator[tuple[str, Figure]]:
    """Each figure the report draws of `groups`, drawn (of the per-group ones the first group's: the rest are alike)."""
    todo, _ = figures.plan(groups)
    for name, draw in todo:
        if isinstance(draw.args[0], Group) and draw.args[0] is not groups[0]:
            continue
        fig = draw(None)
        FigureCanvasAgg(fig).draw()
        yield name, fig


def data_paths(ax) -> Iterator[tuple[str, object, bool]]:
    """Each data artist of `ax` (lines and their markers, error bars, bands, points) as a path in display
    coordinates: (its description, the path, whether it is filled)."""
    for line in ax.lines:
        if line.get_visible():
            yield f"line {line.get_label()!r}", line.get_transform().transform_path(line.get_path()), False
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        if isinstance(coll, PathCollection):  # scatter points: their centres
            for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
                yield f"point of {coll.get_label()!r}", Bbox.from_bounds(x, y, 0, 0), True
        else:
            filled = len(coll.get_facecolor()) > 0 and coll.get_facecolor()[0][3] > 0
            for path in coll.get_paths():
                yield f"{type(coll).__name__} {coll.get_label()!r}", coll.get_transform().transform_path(path), filled


def covered(legend: Legend, ax, renderer) -> list[str]:
    """The data artists of `ax` that `legend` covers (the part of the legend inside the axes, where data is drawn;
    widened by the largest marker)."""
    box = Bbox.intersection(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    if box is None:
        return []
    pad = max([line.get_markersize() for line in ax.lines] + [0]) * renderer.points_to_pixels(1) / 2
    box = box.expanded(1, 1).padded(pad)
    hits = []
    for what, path, filled in data_paths(ax):
        if isinstance(path, Bbox):
            inside = box.contains(path.x0, path.y0)
        else:
            inside = path.intersects_bbox(box, filled=filled) or box.count_contains(path.vertices) > 0
        if inside:
            hits.append(what)
    return hits


def axes_texts(ax) -> list[Text]:
    """The texts of a plot: title, axis labels, the tick labels drawn (those in the view), notes."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
    ticks += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
    found = [ax.title, ax.xaxis.label, ax.yaxis.label, *ticks, *ax.texts]
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def legend_texts(legend: Legend) -> list[Text]:
    return [t for t in [legend.get_title(), *legend.get_texts()] if t.get_visible() and t.get_text().strip()]


CASES = {
    "paper": lambda root: sweep(root, (0.05, 0.1), ("tiny", "pythia-70m")),
    "long-labels": long_label_sweep,
    "many-groups": lambda root: sweep(root, (0.05, 0.1, 0.15, 0.2, 0.25, 0.3), ("tiny", "pythia-70m")),
}


@pytest.fixture(scope="module", params=list(CASES))
def drawings(request, tmp_path_factory) -> list[tuple[str, Figure]]:
    """Every figure of a case, drawn once for the tests below: the paper's sweep (2 held-out fractions x 2 models x 2
    seeds), four groups labelled with about 130 characters, and 12 groups (6 held-out fractions x 2 models)."""
    return list(drawn(CASES[request.param](tmp_path_factory.mktemp(request.param))))


def legends(fig: Figure) -> list[Legend]:
    return fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]


def test_no_legend_covers_data_or_text(drawings: list[tuple[str, Figure]]):
    for name, fig in drawings:
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        assert legends(fig), f"{name}: no legend"
        for legend in legends(fig):
            assert not covered(legend, ax, renderer), f"{name}: the legend covers {covered(legend, ax, renderer)}"
            box = legend.get_window_extent(renderer)
            for text in axes_texts(ax):
                assert not box.overlaps(text.get_window_extent(renderer)), f"{name}: the legend covers {text!r}"


def test_every_axis_is_labelled(drawings: list[tuple[str, Figure]]):
    for name, fig in drawings:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: an axis without a label"


def test_labels_fit_in_the_figure_and_leave_the_plot_its_width(drawings: list[tuple[str, Figure]]):
    for name, fig in drawings:
        renderer = fig.canvas.get_renderer()
        frame = fig.bbox.padded(1)
        (ax,) = fig.axes
        for text in axes_texts(ax) + [t for legend in legends(fig) for t in legend_texts(legend)]:
            extent = text.get_window_extent(renderer)
            assert frame.contains(extent.x0, extent.y0) and frame.contains(extent.x1, extent.y1), (
                f"{name}: {text!r} runs off the figure ({extent} outside {fig.bbox})"
            )
        plot = ax.get_window_extent(renderer)
        assert fig.get_size_inches()[0] <= 10, f"{name}: {fig.get_size_inches()[0]} inches wide"
        assert plot.width >= 0.6 * fig.bbox.width, f"{name}: the plot is squeezed to {plot.width:.0f} px"
        assert plot.height >= 0.3 * fig.bbox.height, f"{name}: the plot is {plot.height:.0f} px of {fig.bbox.height}"


def set_of(artist) -> str | None:
    return artist.get_gid() if artist.get_gid() in figures.COLORS else None


def colour(artist) -> tuple[float, ...]:
    """The colour (RGB) of a line, of error bars (their edges) or of a band (its face)."""
    if isinstance(artist, Line2D):
        return to_rgb(artist.get_color())
    return to_rgb(artist.get_facecolor()[0] if isinstance(artist, PolyCollection) else artist.get_edgecolor()[0])


def test_each_set_has_one_colour_and_pooled_seeds_an_interval(drawings: list[tuple[str, Figure]]):
    """Held-out, useful and random each have the same colour in every figure (artists and legend), and every set
    drawn from pooled seeds has its error bars or band."""
    expected = {s: to_rgb(c) for s, c in figures.COLORS.items()}
    for name, fig in drawings:
        (ax,) = fig.axes
        tagged = [a for a in [*ax.lines, *ax.collections] if set_of(a)]
        assert {set_of(a) for a in tagged} >= {"heldout", "random"}, name
        for artist in tagged:
            assert colour(artist) == expected[set_of(artist)], f"{name}: {set_of(artist)} drawn in {colour(artist)}"
        for legend in legends(fig):
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                for s, label in figures.SET_LABELS.items():
                    if text.get_text().startswith(label):
                        assert to_rgb(handle.get_color()) == expected[s], f"{name}: legend of {label!r}"
        intervals = {set_of(c) for c in ax.collections if set_of(c)}
        missing = {set_of(a) for a in tagged} - intervals
        assert not missing, f"{name}: no interval for {missing}"


def test_long_group_labels_become_short_names_with_a_key(tmp_path: Path):
    groups = long_label_sweep(tmp_path)
    assert min(len(g.label) for g in groups) > 100
    fig = figures.plot_ablations(groups)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["G1 (n=2)", "G2 (n=2)", "G3 (n=2)", "G4 (n=2)"]
    key = [t.get_text().replace("\n", " ") for t in fig.legends[0].get_texts()]
    assert [f"G{i}: {g.label}" for i, g in enumerate(groups, 1)] == key[-4:]
    short = sweep(tmp_path / "short", (0.05, 0.1), ("tiny",))
    assert [t.get_text() for t in figures.plot_ablations(short).axes[0].get_yticklabels()] == [
        "holdout_frac=0.05 (n=2)", "holdout_frac=0.1 (n=2)",
    ]  # fmt: skip
