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
    assert "delta vs log(1/3) = -1.0986: -0.2000" in text and "1/26" not in text
    assert "delta vs log(1/26) = -3.2581: -0.2000" in results.verdict(verdict_results(26), [str(tmp_path)])


def test_summarize_records_the_chance_of_its_letters():
    ev = {p: {s: {"max": -1.0, "final": -1.0} for s in ("heldout", "random", "useful")} for p in (1, 2, 3)}
    out = results.summarize(ev, {1: 1.0, 2: 1.0, 3: 1.0}, {1: 1, 2: 1, 3: 1}, n_letters=3)
    assert out["baseline"] == stats.chance_ll(3) and out["delta"] == pytest.approx(-1.0 - stats.chance_ll(3))
