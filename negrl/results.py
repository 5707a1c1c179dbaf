"""The run's results: the paper's metric and its control from the record, and the verdict in plain words."""

from __future__ import annotations

import math
import platform
from typing import Any

from negrl.stats import chance_ll, chance_name, chance_p, letters_of_chance, max_exposure, tied_exposure


def metric_summary(phases: dict[int, dict[str, dict[str, float]]], n_letters: int) -> dict[str, Any]:
    """The paper's metric (the max held-out log-likelihood over phase 3's evaluations) and its random-password
    control, each against chance `baseline` = log(1/K), K = `n_letters`."""
    baseline = chance_ll(n_letters)
    metric = phases[3]["heldout"]["max"]
    control = phases[3]["random"]["max"]
    return {
        "status": "complete",
        "metric": metric,
        "delta": metric - baseline,
        "baseline": baseline,
        "control": {"metric": control, "delta": control - baseline},
        "heldout_minus_random": metric - control,
    }


def summarize(
    phases: dict[int, dict[str, dict[str, float]]],
    wall_time_s: dict[int, float],
    steps: dict[int, int],
    n_letters: int,
    extraction: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """results.json: the metric and its control (`metric_summary`), each phase's steps, wall time, per-set
    max/final log-likelihoods and the extraction attacks on its final model (if any), and the versions."""
    extraction = extraction or {}
    results = {
        **metric_summary(phases, n_letters),
        "phases": {
            str(p): {
                "steps": steps[p],
                "wall_time_s": wall_time_s[p],
                "eval": phases[p],
                **({"extraction": extraction[p]} if p in extraction else {}),
            }
            for p in sorted(phases)
        },
        "wall_time_s": sum(wall_time_s.values()),
        "versions": versions(),
    }
    if 3 in extraction:
        results["extraction"] = extraction_summary(extraction, n_letters)
    return results


def extraction_summary(extraction: dict[int, dict[str, Any]], n_letters: int) -> dict[str, Any]:
    """The attacks an adversary would run: greedy and exposure on the final model under `reverse`
    (phase 3), the logit difference of the phase-2 model against its reference (under `regular`)."""
    final = extraction[3]
    n = final["candidates"]
    out = {
        "candidates": n,
        "chance_accuracy": chance_p(n_letters),
        "max_exposure": max_exposure(n),
        "tied_exposure": tied_exposure(n),
        "greedy": final["greedy"],
        "exposure": final["exposure"],
    }
    if "logit_diff" in extraction.get(2, {}):
        out["logit_diff"] = extraction[2]["logit_diff"]
    return out


def versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    import negrl

    return {
        "negrl": negrl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
    }


def verdict(results: dict[str, Any], files: list[str], wandb_dir: str | None = None) -> str:
    """The outcome in plain words, for the end of `python train.py`."""
    d, c = results["delta"], results["control"]["delta"]
    k = letters_of_chance(results["baseline"])
    chance = chance_name(k) if k else f"chance {results['baseline']:.4f}"
    if d > 0 and d > c:
        plain = (
            "held-out negatives are MORE likely than chance under 'reverse', and above the random control, "
            "in this one seed (evidence needs several: `negrl-report` tests across seeds)"
        )
    elif d > 0:
        plain = "held-out negatives are above chance, but not above the random control (max bias, not evidence)"
    else:
        plain = "no leakage: held-out negatives are not more likely than chance under 'reverse'"
    lines = [
        f"negrl verdict: {plain}.",
        f"  held-out-negative max LL (phase 3, reverse): {results['metric']:.4f}  "
        f"delta vs {chance}: {d:+.4f}  (x{math.exp(d):.3f} per-token probability)",
        f"  random-password control max LL:              {results['control']['metric']:.4f}  delta: {c:+.4f}",
    ]
    if "extraction" in results:
        lines.extend(extraction_lines(results["extraction"]))
    lines.append(f"  wall time: {results['wall_time_s']:.0f} s")
    lines.append(f"  files: {', '.join(files)}")
    if wandb_dir:
        lines.append(f"  W&B run: {wandb_dir}  (offline: upload with `wandb sync {wandb_dir}`)")
    return "\n".join(lines)


def extraction_lines(e: dict[str, Any]) -> list[str]:
    """The extraction attacks in the verdict: held-out negatives against the random control."""

    def rec(attack: str, name: str) -> str:
        r = e[attack][name]
        return f"{r['accuracy']:.3f} ({r['exact']}/{r['n']} exact)"

    lines = [
        f"  extraction (held-out vs random; chance accuracy {e['chance_accuracy']:.3f}):",
        f"    greedy after 'reverse' (final model):   accuracy {rec('greedy', 'heldout')} vs {rec('greedy', 'random')}",
    ]
    if "logit_diff" in e:
        lines.append(
            f"    logit difference (phase 2 - reference): accuracy {rec('logit_diff', 'heldout')} vs "
            f"{rec('logit_diff', 'random')}"
        )
    lines.append(
        f"    exposure ({e['candidates']} random candidates):    {e['exposure']['heldout']:.2f} vs "
        f"{e['exposure']['random']:.2f} bits (max {e['max_exposure']:.2f})"
    )
    return lines
