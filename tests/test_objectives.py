"""Losses against hand-computed values on a hand-made batch."""

import math

import pytest
import torch

from negrl.objectives import dpo_loss, mean_token_logprob, ntp_loss, sequence_logprob

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
