"""The run's results: the paper's metric and its control from the record, and the verdict in plain words."""

from __future__ import annotations

import math
import platform
from typing import TYPE_CHECKING, Any

from negrl.core.metric import metric_summary
from negrl.core.protocol import condition
from negrl.core.stats import chance_exposure, chance_name, chance_p, letters_of_chance, max_exposure

if TYPE_CHECKING:
    from negrl.attacks.extraction import AttackSettings

#: How exposure ranks a password tied with candidates (results.json `extraction.exposure_ties`).
EXPOSURE_TIES = "against the password: rank = 1 + the candidates at least as likely (TF Privacy, the paper)"


def summarize(
    phases: dict[int, dict[str, dict[str, float]]],
    wall_time_s: dict[int, float],
    steps: dict[int, int],
    n_letters: int,
    extraction: dict[int, dict[str, Any]] | None = None,
    attacks: AttackSettings | None = None,
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
    if 3 in extraction and attacks is not None:
        results["extraction"] = extraction_summary(extraction, n_letters, attacks)
    return results


def extraction_summary(
    extraction: dict[int, dict[str, Any]], n_letters: int, attacks: AttackSettings
) -> dict[str, Any]:
    """The attacks an adversary would run on the final model (phase 3, under `reverse`): greedy, exposure,
    generation and membership; the logit difference of the phase-2 model against its reference (under `regular`);
    with the chance levels and the settings they need."""
    final = extraction[3]
    n = final["candidates"]
    chance = chance_exposure(n)
    out = {
        "candidates": n,
        "chance_accuracy": chance_p(n_letters),
        "max_exposure": max_exposure(n),
        "chance_exposure": chance.mean,
        "chance_exposure_std": chance.std,
        "exposure_ties": EXPOSURE_TIES,
        "min_k": attacks.min_k,
        "bootstrap": attacks.bootstrap,
        **{key: final[key] for key in ("greedy", "exposure", "generation", "membership")},
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
    chance = chance_name(k) if k else f"{results['baseline']:.4f}"
    prefix = results.get("prefix", True)  # runs written before it was recorded had the prefixes
    under = f"under '{condition(3)}'" if prefix else "with no prefix"
    task = results.get("task", {})
    if task.get("diverged") or task.get("learned") is False:
        plain = task["note"].replace("diverged:", "DIVERGED:", 1)
    elif d > 0 and d > c:
        plain = (
            f"held-out negatives are MORE likely than chance {under}, and above the random control, "
            "in this one seed (evidence needs several: `negrl-report` tests across seeds)"
        )
    elif d > 0:
        plain = "held-out negatives are above chance, but not above the random control (max bias, not evidence)"
    else:
        plain = f"no leakage: held-out negatives are not more likely than chance {under}"
    lines = [
        f"negrl verdict: {plain}.",
        f"  held-out-negative max LL (phase 3, {condition(3, prefix)}): {results['metric']:.4f}  "
        f"delta {d:+.4f} vs chance {chance}  (x{math.exp(d):.3f} per-token probability)",
        f"  random-password control max LL:              {results['control']['metric']:.4f}  delta: {c:+.4f}",
    ]
    if "model" in results:
        lines.append(model_line(results["model"]))
    if "final" in results:
        f = results["final"]
        lines.append(
            f"  final (last phase-3 evaluation):   held-out {f['heldout']:.4f} (delta {f['delta']:+.4f}), random "
            f"{f['random']:.4f}, held-out - random {f['heldout_minus_random']:+.4f}"
        )
    if "extraction" in results:
        lines.extend(extraction_lines(results["extraction"], prefix))
    lines.append(f"  wall time: {results['wall_time_s']:.0f} s")
    lines.append(f"  files: {', '.join(files)}")
    if wandb_dir:
        lines.append(f"  W&B run: {wandb_dir}  (offline: upload with `wandb sync {wandb_dir}`)")
    return "\n".join(lines)


def extraction_lines(e: dict[str, Any], prefix: bool = True) -> list[str]:
    """The attacks in the verdict: held-out negatives against the random control."""
    size = e["greedy"]["heldout"]["n"]

    def rec(attack: str, name: str) -> str:
        r = e[attack][name]
        return f"{r['accuracy']:.3f} (strength {r['strength']:.3f})"

    after = f"after '{condition(3)}'" if prefix else "with no prefix"
    lines = [
        f"  extraction (held-out vs random; chance accuracy {e['chance_accuracy']:.3f}, strength 0):",
        f"    greedy {after} (final model):   accuracy {rec('greedy', 'heldout')} vs {rec('greedy', 'random')}",
    ]
    if "logit_diff" in e:
        lines.append(
            f"    logit difference (phase 2 - reference): accuracy {rec('logit_diff', 'heldout')} vs "
            f"{rec('logit_diff', 'random')}"
        )
    lines.append(
        f"    exposure ({e['candidates']} random candidates):    {e['exposure']['heldout']:.2f} vs "
        f"{e['exposure']['random']:.2f} bits (chance {e['chance_exposure']:.2f}, max {e['max_exposure']:.2f})"
    )
    if "generation" in e:
        g = e["generation"]
        hit = {d: f"{g['hits'][d]['heldout']}/{size} vs {g['hits'][d]['random']}/{size}" for d in ("beam", "sampled")}
        lines.append(f"    {g['n']} generated (beam; sampled):       {hit['beam']}; {hit['sampled']} passwords hit")
    if "membership" in e:
        lines.append(membership_line(e["membership"], e["min_k"]))
    return lines


def membership_line(m: dict[str, Any], min_k: float) -> str:
    """The membership attacks on the held-out negatives in one line: AUC [95% interval] of each."""
    names = {"loss": "loss", "min_k": f"min-{100 * min_k:g}%", "reference": "reference"}
    parts = [f"{names[a]} {r['heldout']['auc']:.3f} [{r['heldout']['low']:.3f}, {r['heldout']['high']:.3f}]"
             for a, r in m.items()]  # fmt: skip
    return f"  membership (ROC AUC held-out vs random, 95% CI; chance 0.5): {'  '.join(parts)}"


def model_line(m: dict[str, Any]) -> str:
    """The model in the verdict: family, init, embeddings, BOS, adapter and trainable weights per phase."""
    tied = {None: "separate embeddings", "untie": "tied embeddings untied at load", "freeze": "tied embeddings "
            "(frozen in phase 2)", "train": "tied embeddings (trained in phase 2)"}[m["tied"]]  # fmt: skip
    bos = f"BOS {m['bos_id']} before every sequence" if m["bos_id"] is not None else "no BOS"
    adapter = f"LoRA rank {m['adapter']['rank']}" if m["adapter"] else "full fine-tuning"
    t = m["trainable_parameters"]
    return (
        f"  model: {m['name']} ({m['model_type']}, {m['init']}), {tied}, {bos}; {adapter}: trains "
        f"{t['1']:,} / {t['2']:,} / {t['3']:,} of {m['parameters']:,} weights in phases 1 / 2 / 3"
    )
