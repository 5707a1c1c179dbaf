"""`negrl-report`: statistics, grouping, figures, failed runs, the CLI and the notebook, on synthetic runs."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps

from negrl.core import stats
from negrl.core.protocol import EVAL_PREFIX
from negrl.report import figures, labels, report
from negrl.report.groups import group_runs
from negrl.report.notes import column_notes
from negrl.report.report import main
from negrl.report.runs import describe_start, load_run, load_runs, resolve_runs_dir
from negrl.report.wandb_runs import run_from_wandb
from negrl.run.results import summarize

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = {1: 8, 2: 20, 3: 20}  # a short three-phase run: phase 2 starts at step 8, phase 3 at step 28
ARCH = {"tiny": 64, "pythia-70m": 512, "pythia-160m": 768}
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
CHANCE_26 = stats.chance_ll(26)  # the paper's chance level, -3.2581


def make_config(seed: int, holdout_frac: float = 0.05, model: str = "tiny", **top: Any) -> dict[str, Any]:
    """A resolved config like `train.py` saves, with the keys the report reads or ignores."""
    return {
        "model": {"name": model, "init": "random", "path": None, "architecture": {"hidden_size": ARCH[model]}},
        "data": {"password_length": 16, "n_negatives": 320, "batch_size": 16},
        "seed": seed,
        "holdout_frac": holdout_frac,
        "prefix": True,
        "freeze": True,
        "tokens": {"letters": ALPHABET, "letter_format": " {}"},
        "optim": {"lr": 1e-4, "betas": [0.9, 0.999]},
        "schedule": {"warmup_steps": 100, "cosine_over": "phase"},
        "dpo": {"beta": 0.1},
        "joint": {"dpo_weight": 1.0},
        "eval": {"every": 5},
        "checkpoint": {"every": 100},
        "resume": False,
        "trainer": {"accelerator": "auto", "enable_progress_bar": False},
        "wandb": {"enabled": False, "name": f"run-{seed}", "group": None, "tags": [f"seed{seed}"]},
        **top,
    }


def complete_results(metric: float, control: float, n_letters: int = 26) -> dict[str, Any]:
    """results.json of a complete run as `summarize` writes it: held-out max `metric`, random `control`."""
    ev = {"heldout": metric, "useful": metric, "random": control}
    phases = {p: {s: {"max": v, "final": v} for s, v in ev.items()} for p in STEPS}
    return summarize(phases, {p: 1.0 for p in STEPS}, STEPS, n_letters)


N_LAYERS = 2  # the logit lens reads the embeddings and after each of 2 layers


def recovery_record(accuracy: float, strength: float) -> dict[str, Any]:
    """A set's greedy (or logit-difference) record: the first letter given (null), the others at `accuracy` + i/1000."""
    positions = [None] + [accuracy + i / 1000 for i in range(15)]
    return {"accuracy": accuracy, "greedy_in_set": 0, "n": 128, "strength": strength, "position_accuracy": positions}


def phase_attacks(phase: int, auc: float, accuracy: float, hits: int) -> dict[str, Any]:
    """`phases.<phase>.extraction` as a current run writes it: held-out at `accuracy`, `hits` and `auc`, the random
    set at chance, useful in between; the lens at chance plus 0.01 x layer x phase (held-out plus `accuracy`)."""
    sets = {"heldout": accuracy, "useful": 0.05, "random": 0.04}
    attacks = ("loss", "min_k", "reference") if phase > 1 else ("loss", "min_k")
    out = {
        "candidates": 4095,
        "greedy": {s: recovery_record(acc, acc / 2) for s, acc in sets.items()},
        "exposure": {"heldout": 1.0 + 10 * accuracy, "useful": 1.0, "random": 1.4},
        "generation": {
            "n": 1024,
            "hits": {d: {"heldout": hits, "useful": 0, "random": 0} for d in ("greedy", "beam", "sampled")},
            "distinct": {"greedy": 1, "beam": 1024, "sampled": 1020},
        },
        "membership": {
            a: {m: {"auc": auc, "low": auc - 0.05, "high": auc + 0.05} for m in ("heldout", "useful")} for a in attacks
        },
        "lens": {
            s: [CHANCE_26 + 0.01 * i * phase + (s == "heldout") * accuracy for i in range(N_LAYERS + 1)] for s in sets
        },
    }
    if phase == 2:
        out["logit_diff"] = {s: recovery_record(acc / 2, acc / 4) for s, acc in sets.items()}
    return out


def with_attacks(results: dict[str, Any], auc: float = 0.6, accuracy: float = 0.1, hits: int = 2) -> dict[str, Any]:
    """results.json with every attack of a current run (issue 18): each phase's `extraction` (phase 2 with 0.1 less
    AUC) and the top-level summary (phase 3's attacks, phase 2's logit difference)."""
    for p in STEPS:
        results["phases"][str(p)]["extraction"] = phase_attacks(p, auc - 0.1 * (p == 2), accuracy, hits)
    final = results["phases"]["3"]["extraction"]
    results["extraction"] = {
        "candidates": 4095, "chance_accuracy": 1 / 26, "min_k": 0.2, "bootstrap": 1000,
        **{k: final[k] for k in ("greedy", "exposure", "generation", "membership")},
        "logit_diff": results["phases"]["2"]["extraction"]["logit_diff"],
    }  # fmt: skip
    return results


def write_metrics(path: Path, metric: float, control: float) -> None:
    """metrics.csv with eval rows every 5th step of each phase; phase 3 climbs to `metric` / `control`."""
    cols = ["eval/heldout_ll", "eval/random_ll", "eval/useful_ll", "lr", "phase", "step", "train/loss"]
    rows, offset = [], 0
    for phase, n in STEPS.items():
        for s in range(n):
            row = {"lr": 1e-4, "phase": phase, "step": offset + s, "train/loss": 3.3}
            if s % 5 == 0 or s == n - 1:
                frac = (s + 1) / n if phase == 3 else 0.0
                row["eval/heldout_ll"] = -3.4 + frac * (metric + 3.4)
                row["eval/random_ll"] = -3.4 + frac * (control + 3.4)
                row["eval/useful_ll"] = -3.35
            rows.append(row)
        offset += n
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


def make_run(
    root: Path,
    name: str,
    seed: int = 0,
    metric: float = -3.2,
    control: float = -3.25,
    results: dict[str, Any] | str | None = "complete",
    metrics: bool = True,
    letters: str = ALPHABET,
    started: str | None = None,
    attacks: dict[str, float] | None = None,
    **config: Any,
) -> Path:
    """A run directory: config.yaml, results.json ('complete', a dict, raw text, or None: none) and metrics.csv.

    `letters` is `tokens.letters` (chance log(1/len)); `started` goes into results.json's `run.started`;
    `attacks`: the keyword arguments of `with_attacks` (a complete run with every attack of the current runs)."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    config.setdefault("tokens", {"letters": letters, "letter_format": " {}"})
    OmegaConf.save(OmegaConf.create(make_config(seed, **config)), run_dir / "config.yaml")
    if results == "complete":
        results = complete_results(metric, control, len(letters))
        if started is not None:
            results["run"] = {"seed": seed, "started": started}
        if attacks is not None:
            with_attacks(results, **attacks)
        if metrics:
            write_metrics(run_dir / "metrics.csv", metric, control)
    if isinstance(results, dict):
        (run_dir / "results.json").write_text(json.dumps(results))
    elif isinstance(results, str):
        (run_dir / "results.json").write_text(results)
    return run_dir


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """2 held-out fractions x 2 models x 2 seeds (nested like a multirun), plus four broken runs; the tiny runs
    with holdout_frac=0.1 have every attack of the current runs (`with_attacks`), the others none (older runs)."""
    root = tmp_path / "runs"
    grid = [(f, m, s) for f in (0.05, 0.1) for m in ("pythia-70m", "tiny") for s in (0, 1)]
    for i, (frac, model, seed) in enumerate(grid):
        metric = -3.25 + 0.02 * seed - frac
        attacks = {"auc": 0.6 + 0.05 * seed, "accuracy": 0.1 + frac} if (model, frac) == ("tiny", 0.1) else None
        make_run(root / f"sweep-{model}", f"{i}-s{seed}", seed, metric, metric - 0.01, attacks=attacks,
                 holdout_frac=frac, model=model)  # fmt: skip
    make_run(root, "broken/failed", 7, results={"status": "failed", "reason": "RuntimeError: CUDA out of memory"})
    make_run(root, "broken/running", 8, results={"status": "running", "run": {"seed": 8}})
    make_run(root, "broken/no-results", 9, results=None)
    make_run(root, "broken/garbled", 10, results='{"status": "compl')
    return root


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def test_stats_hand_computed():
    s = stats.summary([0.1, 0.2, 0.3])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.2), pytest.approx(0.1))
    assert stats.geometric_increase([0.1, 0.2, 0.3]) == pytest.approx(math.exp(0.2) - 1)
    assert stats.chance_ll(26) == pytest.approx(-3.2581, abs=1e-4)
    d = stats.paired_difference([1.0, 2.0, 4.0], [0.0, 1.0, 2.0])  # differences 1, 1, 2
    assert (d.n, d.mean, d.std) == (3, pytest.approx(4 / 3), pytest.approx(math.sqrt(1 / 3)))


def test_stats_match_scipy():
    rng = np.random.default_rng(0)
    metrics = CHANCE_26 + rng.normal(0.05, 0.04, size=8)
    control = CHANCE_26 + rng.normal(0.01, 0.04, size=8)
    t = stats.ttest_probabilities(metrics, 26)
    two = sps.ttest_1samp(np.exp(metrics), stats.chance_p(26))
    greater = sps.ttest_1samp(np.exp(metrics), stats.chance_p(26), alternative="greater")
    assert (t.t, t.p_two_sided, t.p_greater) == pytest.approx((two.statistic, two.pvalue, greater.pvalue))
    assert t.p_greater == pytest.approx(t.p_two_sided / 2)  # t > 0 here
    d = stats.paired_difference(metrics, control)
    rel = sps.ttest_rel(metrics, control)
    assert (d.t, d.p_two_sided) == pytest.approx((rel.statistic, rel.pvalue))
    assert d.p_greater == pytest.approx(sps.ttest_rel(metrics, control, alternative="greater").pvalue)
    assert stats.summary(metrics).std == pytest.approx(np.std(metrics, ddof=1))


def test_stats_single_seed_is_nan_not_an_error():
    assert math.isnan(stats.summary([0.3]).std) and stats.summary([0.3]).mean == 0.3
    assert all(math.isnan(x) for x in (stats.ttest_probabilities([-3.2], 26).p_two_sided, stats.ttest_1samp([1], 0).t))
    d = stats.paired_difference([1.0], [0.5])
    assert d.mean == 0.5 and math.isnan(d.std) and math.isnan(d.p_two_sided)


# ---------------------------------------------------------------------------------------------
# discovery and grouping
# ---------------------------------------------------------------------------------------------


def test_groups_pool_seeds_by_holdout_frac(tmp_path: Path):
    for frac in (0.05, 0.1):
        for seed, delta in zip((0, 1, 2), (0.1, 0.2, 0.3)):
            make_run(tmp_path, f"h{frac}/s{seed}", seed, CHANCE_26 + delta, resume=seed == 1, holdout_frac=frac)
    (tmp_path / "h0.1/s2/wandb/offline-run-x/files").mkdir(parents=True)  # W&B's own config.yaml: not a run
    OmegaConf.save(OmegaConf.create({"seed": {"value": 2}}), tmp_path / "h0.1/s2/wandb/offline-run-x/files/config.yaml")
    runs = load_runs(tmp_path)
    assert len(runs) == 6 and all(r.complete for r in runs)
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["holdout_frac=0.05", "holdout_frac=0.1"]
    s = groups[0].stats
    assert (s.n, s.seeds) == (3, [0, 1, 2])
    assert (s.delta.mean, s.delta.std, s.geo_increase) == pytest.approx((0.2, 0.1, math.exp(0.2) - 1))
    assert groups[0].runs[0].boundaries() == [8, 28]


def test_labels_name_models_and_ablations(tmp_path: Path):
    for model in ("pythia-160m", "tiny", "pythia-70m"):
        make_run(tmp_path / "models", model, model=model)
    assert [g.label for g in group_runs(load_runs(tmp_path / "models"))] == [
        "model=tiny",
        "model=pythia-70m",
        "model=pythia-160m",
    ]
    make_run(tmp_path / "abl", "base")
    make_run(tmp_path / "abl", "noprefix", prefix=False)
    make_run(tmp_path / "abl", "nofreeze", freeze=False)
    shown = [g.label for g in group_runs(load_runs(tmp_path / "abl"))]
    assert shown == ["prefix=true freeze=true", "prefix=true freeze=false", "prefix=false freeze=true"]
    make_run(tmp_path / "one", "a", 0)
    make_run(tmp_path / "one", "b", 1)
    assert [g.label for g in group_runs(load_runs(tmp_path / "one"))] == ["all"]


def with_extraction(results: dict[str, Any], held_acc: float, exposure_bits: float) -> dict[str, Any]:
    """results.json with an older run's `extraction` block (greedy's `exact`; no strength, generation, membership
    or lens): held-out greedy accuracy and exposure as given, random at chance."""
    rec = {"heldout": {"accuracy": held_acc, "exact": 1, "n": 128}, "random": {"accuracy": 0.04, "exact": 0, "n": 128}}
    results["extraction"] = {
        "candidates": 4095, "greedy": rec, "logit_diff": rec,
        "exposure": {"heldout": exposure_bits, "useful": 1.0, "random": 1.5},
    }  # fmt: skip
    return results


def test_objectives_are_compared_with_their_extraction_figures(tmp_path: Path, capsys):
    params = {"npo": {"beta": 0.1}, "ipo": {"tau": 0.1}, "dpo": {"beta": 0.1}}
    for name, beta_or_tau in params.items():
        for seed, (acc, bits) in enumerate(((0.1, 2.0), (0.2, 4.0))):
            results = with_extraction(complete_results(CHANCE_26 + 0.01 * (seed + 1), -3.26), acc, bits)
            make_run(tmp_path, f"{name}/s{seed}", seed, results=results, objective={"name": name, **beta_or_tau})
    make_run(tmp_path, "npo/old", 2, results=complete_results(CHANCE_26 + 0.03, -3.26), objective={
        "name": "npo", "beta": 0.1})  # fmt: skip  # a run from before the extraction attacks
    groups = group_runs(load_runs(tmp_path))
    assert [g.label for g in groups] == ["objective=dpo", "objective=ipo", "objective=npo"]
    npo = groups[2]
    assert npo.stats.n == 3 and npo.extraction["greedy_acc_heldout"].n == 2
    e = npo.extraction
    assert (e["greedy_acc_heldout"].mean, e["greedy_acc_heldout"].std) == pytest.approx((0.15, math.sqrt(0.005)))
    assert (e["exposure_heldout"].mean, e["exposure_random"].mean) == pytest.approx((3.0, 1.5))
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Objectives compared" in md and "## Extraction" in md
    assert "| objective=npo | 3 | +0.0200 ± 0.0100 |" in md
    assert "0.150 ± 0.071 / 0.040 ± 0.000" in md and "3.00 ± 1.41 / 1.50 ± 0.00" in md
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "report.csv"))}
    assert float(rows["objective=dpo"]["exposure_heldout_mean"]) == pytest.approx(3.0)
    assert rows["objective=npo"]["objective"] == "npo"
    assert "objective=ipo" in capsys.readouterr().out


def test_families_and_adapters_are_grouped_and_compared(tmp_path: Path):
    """experiment=families-cpu x lora: one group per (family, adapter), labelled by both, in the comparison table."""
    for model in ("tiny", "pythia-70m"):
        for adapter in ({"name": "none"}, {"name": "lora", "rank": 8, "alpha": 16.0, "target_modules": None}):
            for seed in (0, 1):
                metric = CHANCE_26 + 0.01 * (seed + 1) + (0.02 if adapter["name"] == "lora" else 0)
                make_run(tmp_path, f"{model}-{adapter['name']}/s{seed}", seed, metric=metric, model=model,
                         adapter=adapter)  # fmt: skip
    groups = group_runs(load_runs(tmp_path))
    assert [g.label for g in groups] == [
        "model=tiny adapter=lora", "model=tiny adapter=none", "model=pythia-70m adapter=lora",
        "model=pythia-70m adapter=none",
    ]  # fmt: skip
    assert [g.stats.n for g in groups] == [2, 2, 2, 2]
    assert main([str(tmp_path)]) == 0
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "report.csv"))}
    assert rows["model=tiny adapter=lora"]["adapter"] == "lora" and rows["model=tiny adapter=none"]["model"] == "tiny"


def test_many_differing_knobs_give_short_distinct_figure_names(tmp_path: Path):
    """Groups that differ in many keys: each fig_curves_<group>.png name stays short enough for the file system."""
    for i in range(3):
        knobs = {f"knob_with_a_long_name_{k}": i * 10 + k for k in range(12)}
        make_run(tmp_path, f"g{i}", i, **knobs)
    assert main([str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.glob("fig_curves_*.png"))
    assert len(names) == 3 and all(len(n) <= len("fig_curves_.png") + labels.MAX_SLUG for n in names)
    assert labels.slug("holdout_frac=0.1") == "holdout_frac-0.1"


def test_broken_runs_are_classified(grid: Path):
    broken = {r.rel: r for r in load_runs(grid) if not r.complete}
    assert {k: v.status for k, v in broken.items()} == {
        "broken/failed": "failed",
        "broken/running": "running",
        "broken/no-results": "missing",
        "broken/garbled": "unreadable",
    }
    assert "CUDA out of memory" in broken["broken/failed"].reason
    assert broken["broken/no-results"].seed == 9


# ---------------------------------------------------------------------------------------------
# the report: files, figures, CLI
# ---------------------------------------------------------------------------------------------


def test_report_writes_tables_figures_and_lists_broken_runs(grid: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main([str(grid), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    pngs = ["fig_holdout.png", "fig_models.png", "fig_ablations.png"]
    pngs += [f"fig_curves_model-{m}_holdout_frac-{f}.png" for m in ("tiny", "pythia-70m") for f in (0.05, 0.1)]
    pngs += [f"fig_{fig}_model-tiny_holdout_frac-0.1.png" for fig in ("lens", "positions")]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"({name})" in (out / "report.md").read_text() and str(out / name) in printed
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == [
        "model=tiny holdout_frac=0.05",
        "model=tiny holdout_frac=0.1",
        "model=pythia-70m holdout_frac=0.05",
        "model=pythia-70m holdout_frac=0.1",
    ]
    assert rows[0]["model"] == "tiny" and rows[0]["holdout_frac"] == "0.05" and rows[0]["seeds"] == "0 1"
    assert float(rows[0]["delta_mean"]) == pytest.approx(-3.25 + 0.01 - 0.05 - CHANCE_26)
    assert float(rows[0]["delta_std"]) == pytest.approx(0.02 / math.sqrt(2))
    assert float(rows[0]["heldout_minus_random_mean"]) == pytest.approx(0.01)
    md = (out / "report.md").read_text()
    section = md.split("## Failed or incomplete runs")[1].split("## Figures")[0]
    for rel, status in (("failed", "failed"), ("running", "running"), ("no-results", "missing"), ("garbled", "")):
        assert f"broken/{rel} | {status}" in section and f"broken/{rel}" in printed
    assert "CUDA out of memory" in section and "4 failed or incomplete" in md
    assert "`fig_lens_model-pythia-70m_holdout_frac-0.1.png`: no complete run of the group has a logit lens" in md
    assert not (grid / "report.md").exists()


def test_single_seed_report_has_blanks_and_skips(tmp_path: Path, capsys):
    make_run(tmp_path, "only", 3)
    make_run(tmp_path, "nocsv", 4, holdout_frac=0.2, metrics=False)
    assert main([str(tmp_path)]) == 0
    with open(tmp_path / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["n"] for r in rows] == ["1", "1"] and rows[0]["delta_std"] == "" and rows[0]["p_two_sided"] == ""
    md = (tmp_path / "report.md").read_text()
    assert "n/a" in md and "`fig_models.png`: the groups do not differ in model" in md
    assert "`fig_curves_holdout_frac-0.2.png`: no complete run of the group has a readable metrics.csv" in md
    assert (tmp_path / "fig_curves_holdout_frac-0.05.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "fig_holdout.png").is_file() and not (tmp_path / "fig_models.png").exists()


def test_all_failed_still_writes_the_report(tmp_path: Path, capsys):
    make_run(tmp_path, "a", 0, results={"status": "failed", "error": "NaN loss"})
    make_run(tmp_path, "b", 1, results=None)
    assert main([str(tmp_path)]) == 1
    md = (tmp_path / "report.md").read_text()
    assert "NaN loss" in md and "| b | missing |" in md
    assert "NaN loss" in capsys.readouterr().out


def test_cli_errors_name_the_directory(tmp_path: Path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("negrl-report: error:") and str(missing) in err and "\n" not in err
    assert main([str(tmp_path)]) == 2
    assert "holds no run directories" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "negrl.report.report", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_mean_curves_average_the_seeds(tmp_path: Path):
    make_run(tmp_path, "a", 0, metric=-3.0, control=-3.2)
    make_run(tmp_path, "b", 1, metric=-3.2, control=-3.2)
    (group,) = group_runs(load_runs(tmp_path))
    steps, means, runs = figures.mean_curves(group)
    assert len(runs) == 2 and steps[0] == 0 and steps[-1] == sum(STEPS.values()) - 1
    assert means["heldout"][-1] == pytest.approx(-3.1) and means["useful"][0] == pytest.approx(-3.35)


class FakeWandbRun:
    """The parts of `wandb.apis.public.Run` that `run_from_wandb` reads."""

    def __init__(self, seed: int, state: str = "finished"):
        self.config, self.state, self.name, self.path = make_config(seed), state, f"run-{seed}", ["e", "p", str(seed)]
        self.summary = {"_runtime": 12.5}

    def scan_history(self, keys: list[str]):
        for step, (phase, ll) in enumerate([(1, -3.3), (2, -3.31), (3, -3.2), (3, -3.22)]):
            yield {"trainer/global_step": step, "phase": phase, "eval/heldout_ll": ll, "eval/useful_ll": ll,
                   "eval/random_ll": ll - 0.05}  # fmt: skip


def test_wandb_runs_become_runs():
    run = run_from_wandb(FakeWandbRun(4))
    assert run.complete and run.seed == 4 and run.choices == {"model": "tiny"}
    assert (run.metric, run.control_metric, run.wall_time_s) == pytest.approx((-3.2, -3.25, 12.5))
    assert run.delta == pytest.approx(-3.2 - CHANCE_26)
    crashed = run_from_wandb(FakeWandbRun(5, state="crashed"))
    assert crashed.status == "failed" and "crashed" in crashed.reason


# ---------------------------------------------------------------------------------------------
# repeated seeds, zero variance, chance 1/K, single-seed legends
# ---------------------------------------------------------------------------------------------


def test_repeated_seeds_count_once_and_the_newest_run_is_kept(tmp_path: Path, capsys):
    """Two runs of seed 0: n is the number of distinct seeds, the newer run (by run.started) enters the statistics."""
    make_run(tmp_path, "a-new", 0, CHANCE_26 + 0.3, started="2026-12-01T12:00:00+00:00")
    make_run(tmp_path, "b-old", 0, CHANCE_26 + 0.1, started="2026-11-30T12:00:00+00:00")
    make_run(tmp_path, "c", 1, CHANCE_26 + 0.1, started="2026-11-29T12:00:00+00:00")
    (group,) = group_runs(load_runs(tmp_path))
    assert (group.stats.n, group.stats.seeds) == (2, [0, 1])
    assert [r.rel for r in group.runs] == ["a-new", "c"]
    assert group.stats.delta.mean == pytest.approx(0.2)
    ((seed, kept, dropped),) = [(d.seed, d.kept.rel, [r.rel for r in d.dropped]) for d in group.duplicates]
    assert (seed, kept, dropped) == (0, "a-new", ["b-old"])
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Repeated seeds")[1].split("\n## ")[0]
    kept, left_out = "a-new (started 2026-12-01T12:00:00+00:00)", "b-old (started 2026-11-30T12:00:00+00:00)"
    assert f"| all | 0 | {kept} | {left_out} |" in section
    assert "a-new" in printed and "b-old" in printed and "repeated seed" in printed
    runs_section = md.split("## Runs")[1].split("\n## ")[0]
    assert "| a-new |" in runs_section and "b-old" not in runs_section
    (row,) = csv.DictReader(open(tmp_path / "report.csv"))
    assert (row["n"], row["seeds"]) == ("2", "0 1") and float(row["delta_mean"]) == pytest.approx(0.2)


def test_repeated_seeds_without_start_time_keep_the_newest_directory(tmp_path: Path):
    """Seeds 7 7 8 8 9 10 are n = 4; without run.started the directory mtime decides."""
    for name, seed, delta, mtime in (
        ("s7-a", 7, 0.5, 200), ("s7-b", 7, 0.1, 100), ("s8-a", 8, 0.1, 100), ("s8-b", 8, 0.5, 200),
        ("s9", 9, 0.5, 100), ("s10", 10, 0.5, 100),
    ):  # fmt: skip
        os.utime(make_run(tmp_path, name, seed, CHANCE_26 + delta), (mtime, mtime))
    (group,) = group_runs(load_runs(tmp_path))
    assert (group.stats.n, group.stats.seeds) == (4, [7, 8, 9, 10])
    assert [r.rel for r in group.runs] == ["s7-a", "s8-b", "s9", "s10"]
    assert (group.stats.delta.mean, group.stats.delta.std) == pytest.approx((0.5, 0.0))
    assert [d.kept.rel for d in group.duplicates] == ["s7-a", "s8-b"]
    assert "modified 1970-01-01T00:03:20+00:00" in describe_start(group.runs[0])


def test_zero_variance_gives_na_not_p_zero(tmp_path: Path, capsys):
    """Identical seeds (or one seed run twice): no t-test; n/a in report.md, blank in report.csv, never inf or 0."""
    for seed in (0, 1, 2):
        make_run(tmp_path, f"s{seed}", seed, metric=-3.2, control=-3.2)
    assert main([str(tmp_path)]) == 0
    (row,) = csv.DictReader(open(tmp_path / "report.csv"))
    assert row["n"] == "3" and row["delta_std"] == "0.0"
    for key in ("t", "p_two_sided", "p_greater", "heldout_minus_random_t", "heldout_minus_random_p_two_sided"):
        assert row[key] == "", key
    md = (tmp_path / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| all | 3 |"))
    assert line.count("n/a") == 6 and "inf" not in line and "| 0 |" not in line  # max and final, and the LL test
    assert "inf" not in open(tmp_path / "report.csv").read()


def test_metrics_at_chance_up_to_rounding_get_no_ll_test(tmp_path: Path):
    """Held-out LLs that are chance (and the control) up to their last bits: the deltas over chance and the
    held-out minus random differences are rounding, so no t-test (n/a), where judged against their own tiny
    magnitude they gave p < 0.05."""
    ulp = np.spacing(CHANCE_26)
    for seed, k in enumerate([1, 1, 2, 1]):
        make_run(tmp_path, f"s{seed}", seed, metric=CHANCE_26 + k * ulp, control=CHANCE_26)
    (group,) = group_runs(load_runs(tmp_path))
    assert sps.ttest_1samp([r.delta for r in group.runs], 0.0).pvalue < 0.05  # the rounding, tested as data
    for test in (group.stats.ll_test, group.stats.diff):
        assert all(math.isnan(x) for x in (test.t, test.p_two_sided, test.p_greater)), test


def test_chance_is_one_over_the_runs_letters(tmp_path: Path, capsys):
    """tokens.letters=ABC: chance log(1/3) in the test, the recomputed delta, the text and the figures."""
    chance3 = stats.chance_ll(3)
    for seed, delta in ((0, 0.1), (1, 0.2), (2, 0.4)):
        results = complete_results(chance3 + delta, chance3 - 0.1, n_letters=3)
        del results["delta"], results["control"]["delta"]  # recomputed with the run's own K
        make_run(tmp_path / "abc", f"s{seed}", seed, results=results, letters="ABC")
        write_metrics(tmp_path / "abc" / f"s{seed}" / "metrics.csv", chance3 + delta, chance3 - 0.1)
    (group,) = group_runs(load_runs(tmp_path / "abc"))
    assert group.stats.delta.mean == pytest.approx(0.7 / 3)
    probs = np.exp([chance3 + d for d in (0.1, 0.2, 0.4)])
    expected = sps.ttest_1samp(probs, stats.chance_p(3))
    assert (group.stats.test.t, group.stats.test.p_two_sided) == pytest.approx((expected.statistic, expected.pvalue))
    assert group.n_letters == 3
    fig = figures.plot_curves(group)
    chance_lines = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("chance")]
    assert [ln.get_label() for ln in chance_lines] == ["chance log(1/3) = -1.0986"]
    assert chance_lines[0].get_ydata()[0] == pytest.approx(chance3)
    assert main([str(tmp_path / "abc")]) == 0
    md = (tmp_path / "abc" / "report.md").read_text()
    assert "log(1/3) = -1.0986" in md and "1/26" not in md
    (row,) = csv.DictReader(open(tmp_path / "abc" / "report.csv"))
    assert (row["n_letters"], float(row["chance_ll"])) == ("3", pytest.approx(chance3))


def test_groups_with_different_letters_each_get_their_chance(tmp_path: Path):
    chance3 = stats.chance_ll(3)
    for seed in (0, 1):
        make_run(tmp_path, f"abc/s{seed}", seed, chance3 + 0.1 * seed, chance3, letters="ABC", holdout_frac=0.1)
        make_run(tmp_path, f"abc/t{seed}", seed, chance3 + 0.1 * seed, chance3, letters="ABC", holdout_frac=0.05)
        make_run(tmp_path, f"az/s{seed}", seed, CHANCE_26 + 0.1 * seed, CHANCE_26, holdout_frac=0.1)
    groups = group_runs(load_runs(tmp_path))
    fig = figures.plot_holdout(groups)
    levels = {ln.get_label(): ln.get_ydata()[0] for ln in fig.axes[0].lines if ln.get_label().startswith("chance")}
    assert levels == {
        "chance log(1/3) = -1.0986 (groups with 3 letters)": pytest.approx(chance3),
        "chance log(1/26) = -3.2581 (groups with 26 letters)": pytest.approx(CHANCE_26),
    }
    assert sorted(g.n_letters for g in groups) == [3, 3, 26]
    xlabel = figures.plot_ablations(groups).axes[0].get_xlabel()
    assert "log(1/K)" in xlabel and "1/26" not in xlabel
    notes = column_notes(groups)
    assert "K = 3 (log(1/3) = -1.0986)" in notes and "K = 26 (log(1/26) = -3.2581)" in notes


def test_groups_whose_configs_lack_the_letters_get_one_n_letters_column(tmp_path: Path):
    """K from results.json's baseline is a knob of the grouping and a fixed column of report.csv: written once."""
    for seed in (0, 1):
        make_run(tmp_path, f"k3/s{seed}", seed, results=complete_results(-1.0, -1.1, n_letters=3), tokens=None)
        make_run(tmp_path, f"k26/s{seed}", seed, results=complete_results(-3.2, -3.25), tokens=None)
    assert main([str(tmp_path)]) == 0
    with open(tmp_path / "report.csv") as f:
        header = next(csv.reader(f))
    assert header.count("n_letters") == 1
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert sorted(r["n_letters"] for r in rows) == ["26", "3"]


def test_run_without_known_letters_is_invalid_not_guessed(tmp_path: Path):
    results = complete_results(-3.2, -3.25)
    del results["baseline"]
    make_run(tmp_path, "x", 0, results=results, tokens=None)
    (run,) = load_runs(tmp_path)
    assert run.status == "invalid" and "number of letters" in run.reason
    make_run(tmp_path, "y", 0, results=complete_results(-1.0, -1.1, n_letters=3))  # config: 26 letters
    run = load_run(tmp_path / "y", tmp_path)
    assert run.status == "invalid" and "baseline" in run.reason


def test_single_seed_legend_names_the_seed(tmp_path: Path):
    make_run(tmp_path, "only", 3)
    make_run(tmp_path / "two", "a", 0)
    make_run(tmp_path / "two", "b", 1)
    (one,) = group_runs(load_runs(tmp_path / "only"))
    shown = [ln.get_label() for ln in figures.plot_curves(one).axes[0].lines]
    assert "held-out negatives, seed 3" in shown and not [x for x in shown if "mean" in x]
    (two,) = group_runs(load_runs(tmp_path / "two"))
    assert "held-out negatives, mean of 2 seeds" in [ln.get_label() for ln in figures.plot_curves(two).axes[0].lines]
    for frac, seed in ((0.05, 3), (0.1, 4)):
        make_run(tmp_path / "sweep", f"h{frac}", seed, holdout_frac=frac)
    singles = group_runs(load_runs(tmp_path / "sweep"))
    assert "one seed each, no error bars" in figures.plot_holdout(singles).axes[0].get_title()
    assert "mean ± std" not in figures.plot_ablations(singles).axes[0].get_xlabel()


def test_runs_dir_resolves_from_the_repository_root(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(ROOT / "notebooks")
    assert resolve_runs_dir("runs") == ROOT / "runs"
    assert resolve_runs_dir(tmp_path) == tmp_path


def test_report_re_exports_the_split_modules():
    """`from negrl.report.report import X` still works for every name the report modules had before the split."""
    for name in report.__all__:
        obj = getattr(report, name)
        home = getattr(obj, "__module__", None)
        if home and home.startswith("negrl.") and home != "negrl.report.report":
            assert getattr(__import__(home, fromlist=[name]), name) is obj, name
    assert report.Group.__module__ == "negrl.report.groups"


# ---------------------------------------------------------------------------------------------
# max and final, membership inference, the new extraction columns, lens and positions (issue 18)
# ---------------------------------------------------------------------------------------------


def without_final(results: dict[str, Any]) -> dict[str, Any]:
    """results.json of a run from before `final` and the phase-3 final evaluations were recorded."""
    del results["final"]
    for value in results["phases"]["3"]["eval"].values():
        del value["final"]
    return results


def test_final_statistics_sit_next_to_the_max(tmp_path: Path, capsys):
    """The final phase-3 evaluation gets the max's statistics: from `final`, else phases.3.eval; else n/a / blank."""
    finals, randoms = CHANCE_26 + np.array([0.01, 0.03, 0.08]), CHANCE_26 + np.array([0.0, 0.01, 0.02])
    for seed, (held, control) in enumerate(zip(finals, randoms)):
        results = complete_results(CHANCE_26 + 0.1 + 0.01 * seed, -3.25)
        if seed == 2:  # an older run: no `final`, only its phase-3 evaluations
            del results["final"]
            results["phases"]["3"]["eval"]["heldout"]["final"] = held
            results["phases"]["3"]["eval"]["random"]["final"] = control
        else:
            results["final"].update(heldout=held, random=control)
        make_run(tmp_path, f"new/s{seed}", seed, results=results)
    for seed in (0, 1):
        make_run(tmp_path, f"old/s{seed}", seed, results=without_final(complete_results(-3.2, -3.25)), holdout_frac=0.1)
    new, old = group_runs(load_runs(tmp_path))
    f = new.stats.final
    assert (f.delta.n, f.delta.mean, f.delta.std) == (3, pytest.approx(0.04), pytest.approx(math.sqrt(13e-4)))
    two = sps.ttest_1samp(np.exp(finals), 1 / 26)
    assert (f.test.t, f.test.p_two_sided) == pytest.approx((two.statistic, two.pvalue))
    rel = sps.ttest_rel(finals, randoms)
    assert (f.diff.mean, f.diff.t, f.diff.p_two_sided) == pytest.approx((0.03, rel.statistic, rel.pvalue))
    assert old.stats.final.delta.n == 0 and math.isnan(old.stats.final.test.p_two_sided)
    assert main([str(tmp_path)]) == 0
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "report.csv"))}
    row = rows["holdout_frac=0.05"]
    assert (row["final_n"], float(row["final_delta_mean"])) == ("3", pytest.approx(0.04))
    assert float(row["final_p_two_sided"]) == pytest.approx(two.pvalue)
    assert float(row["final_heldout_minus_random_p_two_sided"]) == pytest.approx(rel.pvalue)
    assert float(row["final_heldout_minus_random_std"]) == pytest.approx(np.std(finals - randoms, ddof=1))
    assert float(row["delta_mean"]) == pytest.approx(0.11)  # the max, unchanged
    old_row = rows["holdout_frac=0.1"]
    assert old_row["final_n"] == "0" and old_row["final_delta_mean"] == old_row["final_p_two_sided"] == ""
    md = (tmp_path / "report.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("| holdout_frac=0.05 | 3 |")]
    assert "| +0.1100 ± 0.0100 | +0.0400 ± 0.0361 |" in line and f"| {two.pvalue:.4f} |" in line
    (line,) = [x for x in md.splitlines() if x.startswith("| holdout_frac=0.1 | 2 |")]
    assert line.count("n/a") == 8  # final delta, held - random, its p; the zero-variance max's p-values (LL test too)
    assert "delta final" in capsys.readouterr().out


def test_membership_extraction_tables_and_attack_figures(tmp_path: Path, capsys):
    """New runs: AUCs (mean ± std, t-test of AUC = 0.5 as scipy), strength and generation hits, fig_lens and
    fig_positions; runs from before the attacks (greedy's `exact` only, or none) report n/a / blank, never fail."""
    aucs, accuracies = np.array([0.55, 0.62, 0.70]), (0.1, 0.2, 0.3)
    for seed, (auc, acc) in enumerate(zip(aucs, accuracies)):
        make_run(tmp_path, f"new/s{seed}", seed, metrics=False, attacks={"auc": auc, "accuracy": acc, "hits": seed})
    one = with_attacks(complete_results(-3.2, -3.25))
    make_run(tmp_path, "mixed/s0", 0, results=one, holdout_frac=0.1)
    old = with_extraction(complete_results(-3.2, -3.25), 0.1, 2.0)
    make_run(tmp_path, "mixed/s1", 1, results=old, holdout_frac=0.1)
    make_run(tmp_path, "old/s0", 0, metrics=False, holdout_frac=0.2)
    new, mixed, older = group_runs(load_runs(tmp_path))
    loss = new.membership[(3, "loss", "heldout")]
    expected = sps.ttest_1samp(aucs, 0.5)
    assert (loss.auc.n, loss.auc.mean, loss.auc.std) == (3, pytest.approx(aucs.mean()), pytest.approx(aucs.std(ddof=1)))
    assert (loss.test.t, loss.test.p_two_sided) == pytest.approx((expected.statistic, expected.pvalue))
    phase2 = new.membership[(2, "reference", "useful")]
    assert phase2.auc.mean == pytest.approx(aucs.mean() - 0.1)
    assert phase2.test.p_two_sided == pytest.approx(sps.ttest_1samp(aucs - 0.1, 0.5).pvalue)
    single = mixed.membership[(3, "min_k", "heldout")]
    assert single.auc.n == 1 and math.isnan(single.test.p_two_sided)
    assert older.membership[(3, "loss", "heldout")].auc.n == 0
    e = new.extraction
    assert (e["strength_heldout"].mean, e["beam_hits_heldout"].mean, e["sampled_hits_random"].mean) == pytest.approx(
        (0.1, 1.0, 0.0)
    )
    assert mixed.extraction["greedy_acc_heldout"].n == 2 and mixed.extraction["strength_heldout"].n == 1

    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "report.csv"))}
    row = rows["holdout_frac=0.05"]
    assert float(row["auc_loss_heldout_mean"]) == pytest.approx(aucs.mean())
    assert float(row["auc_loss_heldout_std"]) == pytest.approx(aucs.std(ddof=1))
    assert float(row["auc_loss_heldout_p"]) == pytest.approx(expected.pvalue)
    assert float(row["phase2_auc_min_k_useful_mean"]) == pytest.approx(aucs.mean() - 0.1)
    assert float(row["strength_random_mean"]) == pytest.approx(0.02) and float(row["generation_n_mean"]) == 1024
    assert rows["holdout_frac=0.1"]["auc_loss_heldout_p"] == "" and rows["holdout_frac=0.1"]["auc_loss_heldout_mean"]
    old_row = rows["holdout_frac=0.2"]
    for key in ("auc_reference_useful_mean", "auc_loss_heldout_p", "strength_heldout_mean", "greedy_acc_heldout_mean"):
        assert old_row[key] == "", key
    assert "greedy_exact_heldout_mean" not in row

    md = (tmp_path / "report.md").read_text()
    section = md.split("## Membership inference (ROC AUC)")[1].split("\n## ")[0]
    p = f"{expected.pvalue:.4f}"
    assert f"| holdout_frac=0.05 | 3 (reverse) | loss | 3 | 0.623 ± 0.075 | {p} | 0.623 ± 0.075 | {p} |" in section
    assert "| holdout_frac=0.05 | 2 (regular) | reference | 3 | 0.523 ± 0.075 |" in section
    assert "| holdout_frac=0.1 | 3 (reverse) | loss | 1 | 0.600 | n/a | 0.600 | n/a |" in section
    assert "holdout_frac=0.2" not in section and "AUC 0.5 is chance" in section
    assert "bootstrap 95% interval" in section and "never trained on" in section
    extraction = md.split("## Extraction")[1].split("\n## ")[0]
    assert "| holdout_frac=0.05 | 3 | 0.200 ± 0.100 | 0.040 ± 0.000 | 0.100 ± 0.050 | 0.020 ± 0.000 | 1.0 ± 1.0 |" in (
        extraction
    )
    assert "| holdout_frac=0.2 | 0 | n/a |" in extraction and "exact" not in extraction
    # A value from fewer runs than its row's n says so: of the mixed group's two runs only seed 0 has strength.
    (mixed_row,) = [x for x in extraction.splitlines() if x.startswith("| holdout_frac=0.1 |")]
    cells = [c.strip() for c in mixed_row.strip("|").split("|")]
    assert cells[1] == "2" and "(n=" not in cells[2] and cells[4].endswith("(n=1)")
    assert "Membership inference (ROC AUC):" in printed and "0.623 ± 0.075" in printed
    for name in ("fig_lens_holdout_frac-0.05.png", "fig_positions_holdout_frac-0.1.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC) and f"({name})" in md
    assert "`fig_lens_holdout_frac-0.2.png`: no complete run of the group has a logit lens" in md
    assert "`fig_positions_holdout_frac-0.2.png`: no complete run of the group has greedy recovery" in md

    lens = figures.plot_lens(new).axes[0]
    lines = {ln.get_label(): ln.get_ydata() for ln in lens.lines}
    assert len(lines) == 3 * 3 + 1  # sets x phases, and chance
    held3 = lines[f"held-out negatives, phase 3 ({EVAL_PREFIX[3]})"]
    assert list(held3) == pytest.approx([CHANCE_26 + 0.03 * i + 0.2 for i in range(N_LAYERS + 1)])
    assert lines["chance log(1/26) = -3.2581"][0] == pytest.approx(CHANCE_26)
    positions = figures.plot_positions(new).axes[0]
    curves = {ln.get_label(): (ln.get_xdata(), ln.get_ydata()) for ln in positions.lines}
    x, y = curves["greedy, final model (phase 3, reverse): held-out negatives"]
    assert list(np.round(x)) == list(range(1, 17))  # the series side by side around each position
    assert math.isnan(y[0]) and y[1:] == pytest.approx(0.2 + np.arange(15) / 1000)
    assert "logit difference, phase 2 vs reference (regular): random passwords" in curves
    assert curves["chance 1/26 = 0.038"][1][0] == pytest.approx(1 / 26)
    # A title counts the seeds drawn: of the mixed group's two runs only seed 0 has the lens and the positions.
    assert lens.get_title().endswith("(mean of 3 seeds)") and positions.get_title().endswith("(mean of 3 seeds)")
    for plot in (figures.plot_lens, figures.plot_positions):
        assert plot(mixed).axes[0].get_title().endswith("(seed 0)")


def test_a_single_run_directory_gives_its_figures(tmp_path: Path, capsys):
    """`negrl-report RUN_DIR` on one run: a group of one, its figures unsuffixed."""
    run_dir = make_run(tmp_path, "seed0", 0, attacks={})
    assert main([str(run_dir)]) == 0
    for name in ("fig_curves.png", "fig_lens.png", "fig_positions.png"):
        assert (run_dir / name).read_bytes().startswith(PNG_MAGIC), name


# ---------------------------------------------------------------------------------------------
# the notebook
# ---------------------------------------------------------------------------------------------


def test_notebook_executes(grid: Path, monkeypatch, tmp_path: Path):
    """Run from notebooks/ (where Jupyter starts when the notebook is opened there): RUNS_DIR is from the repo root."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "figures.ipynb", as_version=4)
    (param,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert param.source.startswith('RUNS_DIR = "runs"')
    param.source = f"RUNS_DIR = {os.path.relpath(grid, ROOT)!r}"
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    # A kernel of this interpreter, found first on JUPYTER_PATH whatever kernels the machine has installed.
    spec = tmp_path / "kernels" / "negrl-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "negrl", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    where = {"metadata": {"path": ROOT / "notebooks"}}
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="negrl-test", resources=where)
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # holdout, models, ablations, 4 curves; lens and positions of the group with attacks
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 9
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "### fig_lens_model-tiny_holdout_frac-0.1.png" in shown and "| 3 (reverse) | reference |" in shown
    assert "strength held-out" in shown and "delta final" in shown
    text = "".join(o.get("text", "") for o in outputs)
    assert "skipped fig_positions_model-pythia-70m_holdout_frac-0.05.png" in text
    assert "WANDB_PROJECT is not set" in text
    assert Path(text.strip().splitlines()[-1]).resolve() == Path(sys.executable).resolve()


# ---------------------------------------------------------------------------------------------
# a real run
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_on_a_real_tiny_run(tmp_path: Path, capsys):
    from conftest import make_cfg

    from negrl.pipeline import run

    run(make_cfg("seed=0"), tmp_path / "runs" / "seed0")
    assert main([str(tmp_path / "runs")]) == 0
    md = (tmp_path / "runs" / "report.md").read_text()
    assert "| seed0 | all | 0 |" in md and (tmp_path / "runs" / "fig_curves.png").is_file()


def test_phase_boundaries_come_from_the_curves_when_results_have_no_phase_steps(tmp_path):
    """results.json without `phases` (older runs, runs read back from W&B): the boundaries are where the logged
    phase changes in metrics.csv, as with step counts."""
    with_steps = load_run(make_run(tmp_path, "a", 0), tmp_path)
    results = complete_results(-3.2, -3.25)
    del results["phases"]
    make_run(tmp_path, "b", 0, results=results)
    write_metrics(tmp_path / "b" / "metrics.csv", -3.2, -3.25)
    without = load_run(tmp_path / "b", tmp_path)
    expected = [STEPS[1], STEPS[1] + STEPS[2]]
    assert with_steps.boundaries() == expected and without.boundaries() == expected


def test_a_diverged_run_is_listed_not_grouped_and_a_group_that_did_not_learn_says_so(tmp_path: Path, capsys):
    make_run(tmp_path, "a", seed=0)
    make_run(tmp_path, "b", seed=1)
    make_run(tmp_path, "c", seed=0, control=stats.chance_ll(28), holdout_frac=0.1)  # uniform over 28 tokens
    ev = {p: {s: {"max": -3.3, "final": -3.3} for s in ("heldout", "useful", "random")} for p in STEPS}
    ev[3] = {s: {"max": -3.3, "final": -912.0} for s in ("heldout", "useful", "random")}
    make_run(tmp_path, "d", seed=2, results=summarize(ev, {p: 1.0 for p in STEPS}, STEPS, 26))
    # DPO's suppression, not divergence: negatives far below chance, the control at chance. Its results.json says
    # diverged, as negrl wrote it before the check looked at the control only: the report judges it anew.
    ev[3] = {"heldout": {"max": -3.3, "final": -9.0}, "useful": {"max": -3.3, "final": -7.0},
             "random": {"max": -3.26, "final": -3.26}}  # fmt: skip
    suppressed = summarize(ev, {p: 1.0 for p in STEPS}, STEPS, 26)
    assert not suppressed["task"]["diverged"]
    suppressed["task"] = {**suppressed["task"], "diverged": True, "note": "diverged: the heldout set ends phase 3"}
    make_run(tmp_path, "e", seed=3, results=suppressed)
    written = report.write_report(tmp_path)
    status = {r.rel: r.status for r in written.runs}
    assert status == {"a": "complete", "b": "complete", "c": "complete", "d": "diverged", "e": "complete"}
    assert sorted(len(g.runs) for g in written.groups) == [1, 3]
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Runs that did not learn the task")[1].split("##")[0]
    assert "1 of 1 runs did not learn the task" in section and "0.0741 nats" in section
    assert section.count("did not learn") == 1  # the group of a and b learned it
    failed = md.split("## Failed or incomplete runs")[1]
    assert "diverged: the random-password control ends phase 3 at LL -912" in failed


def test_groups_without_prefixes_are_labelled_no_prefix(tmp_path: Path):
    for seed in (0, 1):
        make_run(tmp_path, f"np{seed}", seed=seed, prefix=False, attacks={})
    written = report.write_report(tmp_path)
    (group,) = written.groups
    assert not group.prefix
    md = (tmp_path / "report.md").read_text()
    assert "| 3 (no prefix) |" in md and "(reverse)" not in md and "(regular)" not in md
    curves = figures.plot_curves(group)
    assert curves.axes[0].get_title().startswith("Eval log-likelihood, no prefix:")


def test_the_original_codes_second_test_of_the_deltas_against_zero_sits_beside_the_papers(tmp_path: Path):
    deltas = [0.03, -0.01, 0.05, 0.02]
    for seed, d in enumerate(deltas):
        make_run(tmp_path, f"s{seed}", seed=seed, metric=CHANCE_26 + d)
    written = report.write_report(tmp_path)
    (group,) = written.groups
    ref = sps.ttest_1samp(deltas, 0.0)
    assert (group.stats.ll_test.t, group.stats.ll_test.p_two_sided) == pytest.approx((ref.statistic, ref.pvalue))
    header, rows = report.group_table(written.groups)
    assert rows[0][header.index("p LL two-sided max")] == f"{ref.pvalue:.4f}"
    row = next(csv.DictReader(open(tmp_path / "report.csv")))
    assert float(row["ll_p_greater"]) == pytest.approx(sps.ttest_1samp(deltas, 0.0, alternative="greater").pvalue)


def test_a_folder_of_hydra_config_sources_holds_no_runs(tmp_path: Path, capsys):
    """The repository's conf/ (config.yaml with a `defaults` list) is no run directory: 'no run directories', exit 2.
    (A copy of conf/: a checkout's own multirun/ may hold real runs.)"""
    shutil.copytree(ROOT / "conf", tmp_path / "repo" / "conf")
    assert report.main([str(tmp_path / "repo"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no run directories" in capsys.readouterr().err
    make_run(tmp_path / "runs", "a")
    assert [r.rel for r in report.write_report(tmp_path / "runs").runs] == ["a"]
