"""results.json's summary and the verdict: each against the run's own chance level."""

from __future__ import annotations

import pytest

from negrl.core import stats
from negrl.run import results


def verdict_results(n_letters: int) -> dict:
    base = stats.chance_ll(n_letters)
    return {"metric": base - 0.2, "delta": -0.2, "baseline": base, "control": {"metric": base - 0.1, "delta": -0.1},
            "wall_time_s": 3.0}  # fmt: skip


def test_verdict_names_the_runs_own_chance(tmp_path):
    text = results.verdict(verdict_results(3), [str(tmp_path / "results.json")])
    assert "delta -0.2000 vs chance log(1/3) = -1.0986" in text and "1/26" not in text
    assert "delta -0.2000 vs chance log(1/26) = -3.2581" in results.verdict(verdict_results(26), [str(tmp_path)])


def test_summarize_records_the_chance_of_its_letters():
    ev = {p: {s: {"max": -1.0, "final": -1.0} for s in ("heldout", "random", "useful")} for p in (1, 2, 3)}
    out = results.summarize(ev, {1: 1.0, 2: 1.0, 3: 1.0}, {1: 1, 2: 1, 3: 1}, n_letters=3)
    assert out["baseline"] == stats.chance_ll(3) and out["delta"] == pytest.approx(-1.0 - stats.chance_ll(3))


def test_the_verdict_names_a_run_that_did_not_learn_and_one_that_diverged(tmp_path):
    files = [str(tmp_path / "results.json")]
    uniform = stats.chance_ll(28)  # data=small on tiny: every set uniform over the 28 tokens
    ev = {p: {s: {"max": uniform, "final": uniform} for s in ("heldout", "random", "useful")} for p in (1, 2, 3)}
    first = results.verdict(results.summarize(ev, {1: 1.0, 2: 1.0, 3: 1.0}, {1: 1, 2: 1, 3: 1}, 26), files)
    assert first.splitlines()[0] == (
        "negrl verdict: the model did not learn the task: its random-password control ends 0.0741 nats per token "
        "below chance (x0.929 the chance probability; learned: within 0.02), so held-out negatives against chance say "
        "nothing about negatives; held-out - random still does."
    )
    ev[3] = {s: {"max": -3.3, "final": -912.0} for s in ("heldout", "random", "useful")}
    diverged = results.summarize(ev, {1: 1.0, 2: 1.0, 3: 1.0}, {1: 1, 2: 1, 3: 1}, 26)
    assert diverged["task"]["diverged"] and diverged["status"] == "complete"
    assert results.verdict(diverged, files).splitlines()[0] == (
        "negrl verdict: DIVERGED: the random-password control ends phase 3 at LL -912 per token against chance "
        "-3.2581; no conclusion about negatives (lower optim.lr, keep optim.grad_clip)."
    )


def test_a_run_without_prefixes_is_never_labelled_with_one(tmp_path):
    ev = {p: {s: {"max": -3.27, "final": -3.27} for s in ("heldout", "random", "useful")} for p in (1, 2, 3)}
    out = {**results.summarize(ev, {1: 1.0, 2: 1.0, 3: 1.0}, {1: 1, 2: 1, 3: 1}, 26), "prefix": False}
    text = results.verdict(out, [str(tmp_path)])
    assert "chance with no prefix" in text and "(phase 3, no prefix)" in text
    assert "reverse" not in text and "regular" not in text
    assert "under 'reverse'" in results.verdict({**out, "prefix": True}, [str(tmp_path)])
