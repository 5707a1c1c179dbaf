"""Losses against hand-computed values on a hand-made batch."""

import math

import pytest
import torch
from conftest import make_cfg, make_cfg_dict

from negrl.method.objectives import (
    DEFAULTS,
    OBJECTIVES,
    PreferenceBatch,
    dpo_loss,
    mean_token_logprob,
    ntp_loss,
    objective_loss,
    sequence_logprob,
)

# Two sequences, three label positions each.
TOKEN_LP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -2.0]])


def test_sequence_logprob_is_a_sum_and_ntp_a_mean():
    assert sequence_logprob(TOKEN_LP).tolist() == [-6.0, -3.0]
    assert mean_token_logprob(TOKEN_LP).tolist() == [-2.0, -1.0]
    # NTP loss: mean over positions (-2, -1), then over sequences: 1.5.
    assert ntp_loss(TOKEN_LP).item() == pytest.approx(1.5, abs=1e-7)


def test_dpo_loss_matches_hand_computation():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-30.0, -15.0])
    rc, rr = torch.tensor([-12.0, -18.0]), torch.tensor([-25.0, -16.0])
    beta = 0.1
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    # pair 1: chosen reward 0.1*2 = 0.2, rejected 0.1*(-5) = -0.5, margin 0.7
    # pair 2: chosen reward 0.1*(-2) = -0.2, rejected 0.1*1 = 0.1, margin -0.3
    expected = (math.log1p(math.exp(-0.7)) + math.log1p(math.exp(0.3))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.6287706, abs=1e-6)  # (0.403186 + 0.854355) / 2
    assert stats["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-6)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.2, abs=1e-6)
    assert stats["rewards/margins"].item() == pytest.approx(0.2, abs=1e-6)
    assert stats["rewards/accuracies"].item() == 0.5


def test_dpo_loss_at_reference_is_log2():
    x = torch.tensor([-5.0, -7.0])
    loss, _ = dpo_loss(x, x - 1, x, x - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


# ---- the registry of phase-2/3 objectives, on one hand-made batch ---------------------------------
# chosen tokens sum to -6, -3; rejected to -6, -6; reference: chosen -5, -4, rejected -7, -5.
# log-ratios: chosen -1, +1; rejected +1, -1; chosen minus rejected h = -2, +2.
PREF = PreferenceBatch(
    chosen=torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -2.0]]),
    rejected=torch.tensor([[-2.0, -2.0, -2.0], [-1.0, -1.0, -4.0]]),
    ref_chosen=torch.tensor([-5.0, -4.0]),
    ref_rejected=torch.tensor([-7.0, -5.0]),
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _ul(lp: float) -> float:
    return -math.log1p(-math.exp(lp))


HAND = {
    # -log sigmoid(0.1 h), h = -2, 2
    "dpo": ((_softplus(0.2) + _softplus(-0.2)) / 2, 0.6981388),
    # (h - 1/(2 tau))^2 = 49, 9
    "ipo": ((49 + 9) / 2, 29.0),
    # relu(1 - log p(c) + log p(r)) = relu(1 + 6 - 6), relu(1 + 3 - 6)
    "hinge": ((1 + 0) / 2, 0.5),
    # -(2/beta) log sigmoid(-beta r), r = +1, -1
    "npo": (20 * (_softplus(0.1) + _softplus(-0.1)) / 2, 13.8879416),
    # -(2/beta) log sigmoid(-beta * mean-token log p(r) - gamma), means -2, -2
    "simnpo": (0.8 * _softplus(-5.0), 0.0053722),
    # NTP(chosen) = 1.5, plus the mean of -log(1 - p) over the six rejected tokens
    "unlikelihood": (1.5 + (3 * _ul(-2.0) + 2 * _ul(-1.0) + _ul(-4.0)) / 6, 1.7286791),
    # minus the rejected NTP loss (2.0)
    "grad_ascent": (-2.0, -2.0),
}


@pytest.mark.parametrize("name", list(HAND))
def test_each_objective_matches_hand_computation(name):
    exact, rounded = HAND[name]
    loss = objective_loss(name, PREF, DEFAULTS[name])
    assert loss.item() == pytest.approx(exact, abs=1e-5)
    assert loss.item() == pytest.approx(rounded, abs=1e-5)


def test_registry_covers_every_config_and_its_paper_defaults():
    assert set(OBJECTIVES) == set(HAND)
    assert DEFAULTS == {
        "dpo": {"beta": 0.1}, "ipo": {"tau": 0.1}, "hinge": {"delta": 1.0}, "npo": {"beta": 0.1},
        "simnpo": {"beta": 2.5, "gamma": 0.0}, "unlikelihood": {"alpha": 1.0}, "grad_ascent": {},
    }  # fmt: skip
    for name, defaults in DEFAULTS.items():
        cfg = make_cfg_dict(f"objective={name}")["objective"]
        assert cfg.pop("name") == name and cfg == defaults


def test_npo_and_reference_free_objectives_ignore_what_they_should():
    other_chosen = PreferenceBatch(PREF.chosen * 3, PREF.rejected, PREF.ref_chosen + 1, PREF.ref_rejected)
    for name in ("npo", "simnpo", "grad_ascent"):  # the rejected side only
        assert objective_loss(name, other_chosen, DEFAULTS[name]) == objective_loss(name, PREF, DEFAULTS[name])
    other_ref = PreferenceBatch(PREF.chosen, PREF.rejected, PREF.ref_chosen + 5, PREF.ref_rejected - 3)
    for name in ("hinge", "simnpo", "unlikelihood", "grad_ascent"):  # reference-free
        assert objective_loss(name, other_ref, DEFAULTS[name]) == objective_loss(name, PREF, DEFAULTS[name])


@pytest.mark.parametrize("name", ["ipo", "hinge", "npo", "simnpo", "unlikelihood", "grad_ascent"])
def test_each_objective_runs_phases_2_and_3(name, tmp_path):
    import csv

    from negrl.pipeline import run

    cfg = make_cfg(f"objective={name}", "checkpoint.every=0", "data.negative_repeats=2", "data.useful_repeats=1")
    results = run(cfg, tmp_path / "run")
    assert results["status"] == "complete" and math.isfinite(results["metric"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] in ("2", "3")]
    assert rows and all(math.isfinite(float(r[f"train/{name}"])) for r in rows)
