"""The task check: a run whose model did not learn the task, or diverged, is named so (results.json `task`)."""

from __future__ import annotations

import math

import pytest

from negrl.core.metric import DIVERGED_NATS, LEARNED_NATS, metric_summary, task_check
from negrl.core.stats import chance_ll

CHANCE = chance_ll(26)


def phases(final: dict[str, float], best: float | None = None) -> dict[int, dict[str, dict[str, float]]]:
    """Three phases whose sets reach `best` (default: their phase-3 final) and end phase 3 at `final`."""
    out = {}
    for p in (1, 2, 3):
        out[p] = {
            n: {"max": v if best is None else best, "final": v if p == 3 else (best or v)} for n, v in final.items()
        }
    return out


def test_a_control_at_chance_learned_the_task():
    task = task_check(phases({"heldout": CHANCE - 0.05, "useful": CHANCE + 0.3, "random": CHANCE - 0.006}), CHANCE)
    assert task == {"learned": True, "diverged": False, "control_final_delta": pytest.approx(-0.006), "note": ""}


def test_a_control_uniform_over_28_tokens_did_not_learn_the_26_letters():
    # data=small on tiny: every set near log(1/28), delta log(26/28) = -0.0741 for held-out and random alike.
    uniform = chance_ll(28)
    task = task_check(phases({"heldout": uniform, "useful": uniform, "random": uniform}), CHANCE)
    assert not task["learned"] and not task["diverged"]
    assert task["control_final_delta"] == pytest.approx(math.log(26 / 28))
    assert task["note"].startswith("the model did not learn the task: its random-password control ends 0.0741 nats")
    assert "held-out - random still does" in task["note"]
    inside = task_check(phases({"heldout": CHANCE, "useful": CHANCE, "random": CHANCE - LEARNED_NATS / 2}), CHANCE)
    outside = task_check(phases({"heldout": CHANCE, "useful": CHANCE, "random": CHANCE - 2 * LEARNED_NATS}), CHANCE)
    assert inside["learned"] and not outside["learned"]
    untrained = task_check(phases({"heldout": -10.8, "useful": -10.8, "random": -10.8}), CHANCE)
    assert not untrained["learned"] and not untrained["diverged"]  # never near chance: it never learned, not diverged


def test_a_run_whose_control_fell_far_below_chance_and_its_own_best_diverged():
    task = task_check(phases({"heldout": -912.0, "useful": -800.0, "random": -700.0}, best=CHANCE - 0.05), CHANCE)
    assert task["diverged"] and not task["learned"]
    assert task["note"] == (
        "diverged: the random-password control ends phase 3 at LL -700 per token against chance -3.2581; no "
        "conclusion about negatives (lower optim.lr, keep optim.grad_clip)"
    )
    near = phases({"heldout": CHANCE, "useful": CHANCE, "random": CHANCE - DIVERGED_NATS + 0.01}, best=CHANCE)
    assert not task_check(near, CHANCE)["diverged"]
    below = phases({"heldout": CHANCE, "useful": CHANCE, "random": CHANCE - DIVERGED_NATS - 0.01}, best=CHANCE)
    assert task_check(below, CHANCE)["diverged"]


def test_negatives_suppressed_far_below_chance_are_not_divergence():
    """DPO pushes the negatives down without bound: held-out and useful negatives ending phase 3 far below chance
    (as without prefixes, where phase 3 evaluates them in the context DPO suppressed them in), with the random
    control at chance, is a run that learned the task."""
    suppressed = phases({"heldout": CHANCE - 6.0, "useful": CHANCE - 4.0, "random": CHANCE - 0.01}, best=CHANCE)
    task = task_check(suppressed, CHANCE)
    assert task == {"learned": True, "diverged": False, "control_final_delta": pytest.approx(-0.01), "note": ""}


def test_a_non_finite_evaluation_is_divergence():
    ev = phases({"heldout": CHANCE, "useful": CHANCE, "random": CHANCE})
    ev[2]["useful"]["max"] = math.nan
    task = task_check(ev, CHANCE)
    assert task["diverged"] and not task["learned"]
    assert task["note"].startswith("diverged: the useful set's evaluation in phase 2 is not finite; no conclusion")


def test_results_carry_the_task_check():
    out = metric_summary(phases({"heldout": CHANCE, "useful": CHANCE, "random": CHANCE}), 26)
    assert out["task"]["learned"] and out["status"] == "complete"
