"""Grouping complete runs by config: seeds pooled, one run per distinct seed, each group labelled and its
across-seed statistics computed (docs/experiment.md).

Complete runs whose configs differ only in `seed` (and run-specific keys, `IGNORED_KEYS`) and in nothing
of K form a group. A seed run more than once counts once, by its newest complete run (`start_time`);
the others are kept in `Group.duplicates`. A group is labelled by the knobs that differ across groups.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from negrl.core import stats
from negrl.core.protocol import MIA_ATTACKS, MIA_MEMBERS
from negrl.report.curves import as_float
from negrl.report.labels import fmt_value, sort_value
from negrl.report.runs import CHOICE_GROUPS, Run, start_time

#: Config keys (dotted; a key covers its sub-keys) that do not define an experiment.
IGNORED_KEYS = ("seed", "resume", "checkpoint", "trainer.enable_progress_bar", "wandb", "hydra")
#: Knobs shown first in group labels, in this order; other varying keys follow alphabetically.
KNOB_ORDER = ("model", "adapter", "data", "objective", "holdout_frac", "prefix", "freeze")
#: Extraction figures of a run, by column name: where each sits in results.json's `extraction` (the final model's
#: attacks; logit_diff is phase 2's). Runs made before a figure existed (e.g. with greedy's old `exact`) lack it.
EXTRACTION_VALUES = {
    "greedy_acc_heldout": ("greedy", "heldout", "accuracy"),
    "greedy_acc_random": ("greedy", "random", "accuracy"),
    "strength_heldout": ("greedy", "heldout", "strength"),
    "strength_random": ("greedy", "random", "strength"),
    "beam_hits_heldout": ("generation", "hits", "beam", "heldout"),
    "beam_hits_random": ("generation", "hits", "beam", "random"),
    "sampled_hits_heldout": ("generation", "hits", "sampled", "heldout"),
    "sampled_hits_random": ("generation", "hits", "sampled", "random"),
    "generation_n": ("generation", "n"),
    "exposure_heldout": ("exposure", "heldout"),
    "exposure_random": ("exposure", "random"),
    "logit_diff_acc_heldout": ("logit_diff", "heldout", "accuracy"),
    "logit_diff_acc_random": ("logit_diff", "random", "accuracy"),
}
#: The phases whose membership AUCs are reported, the final model first: where each sits in results.json.
MIA_PHASES = {3: ("extraction", "membership"), 2: ("phases", "2", "extraction", "membership")}
#: AUC of an attack that cannot tell members from non-members.
CHANCE_AUC = 0.5
_MISSING = "(unset)"


@dataclass
class FinalStats:
    """The same statistics for the last phase-3 evaluation (results.json `final`), over the runs that have it."""

    delta: stats.Summary
    test: stats.TTest
    diff: stats.PairedDifference
    control_delta: stats.Summary = field(default_factory=lambda: stats.summary([]))  # the random control's


@dataclass
class AucStats:
    """A membership attack's ROC AUC over the runs that have it, and the t-test of AUC = 0.5 across them."""

    auc: stats.Summary
    test: stats.TTest


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
    #: The original code's second test: the per-seed deltas of log-likelihood against 0.
    ll_test: stats.TTest
    geo_increase: float
    diff: stats.PairedDifference
    final: FinalStats


def extraction_value(run: Run, where: Sequence[str]) -> float:
    """One extraction figure of a run, NaN if the run has none."""
    return as_float(run.value("extraction", *where))


def finite(values: Sequence[float]) -> list[float]:
    """The finite values (a run without a figure gives NaN)."""
    return [v for v in values if math.isfinite(v)]


def final_stats(runs: Sequence[Run], n_letters: int) -> FinalStats:
    """`FinalStats` of `runs`: each test over the runs whose final held-out (and, paired, random) LL is known."""
    held, control = [r.final_ll("heldout") for r in runs], [r.final_ll("random") for r in runs]
    pairs = [(h, c) for h, c in zip(held, control) if math.isfinite(h) and math.isfinite(c)]
    return FinalStats(
        delta=stats.summary(finite([r.final_delta for r in runs])),
        test=stats.ttest_probabilities(finite(held), n_letters),
        diff=stats.paired_difference([h for h, _ in pairs], [c for _, c in pairs]),
        control_delta=stats.summary(finite([r.final_ll("random") - r.chance_ll for r in runs])),
    )


def auc_stats(values: Sequence[float]) -> AucStats:
    """`AucStats` of the finite AUCs among `values`."""
    known = finite(values)
    return AucStats(stats.summary(known), stats.ttest_1samp(known, CHANCE_AUC))


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
    def prefix(self) -> bool:
        """Whether the group's runs used the prefixes (`prefix`, part of the grouping key; runs before it: True)."""
        return bool((self.runs[0].config or {}).get("prefix", True))

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
            ll_test=stats.ttest_1samp([r.delta for r in self.runs], 0.0, scale=stats.chance_ll(self.n_letters)),
            geo_increase=stats.geometric_increase([r.delta for r in self.runs]),
            diff=stats.paired_difference(metric, control),
            final=final_stats(self.runs, self.n_letters),
        )

    @property
    def choices(self) -> dict[str, str]:
        return self.runs[0].choices

    @cached_property
    def extraction(self) -> dict[str, stats.Summary]:
        """Each extraction figure over the group's runs that have it (n = 0: none has)."""
        out = {}
        for name, where in EXTRACTION_VALUES.items():
            out[name] = stats.summary(finite([extraction_value(r, where) for r in self.runs]))
        return out

    @cached_property
    def membership(self) -> dict[tuple[int, str, str], AucStats]:
        """Each (phase, attack, member set)'s AUC over the group's runs that have it (n = 0: none has)."""
        return {
            (phase, attack, member): auc_stats([as_float(r.value(*where, attack, member, "auc")) for r in self.runs])
            for phase, where in MIA_PHASES.items()
            for attack in MIA_ATTACKS
            for member in MIA_MEMBERS
        }


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
