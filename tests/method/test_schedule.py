"""The per-phase learning-rate schedule of docs/experiment.md."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from negrl.method.schedule import warmup_cosine


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 0.0),
        (50, 0.5e-4),
        (100, 1e-4),  # cos(0): the peak
        (700, 1e-4 * (1 + math.cos(math.pi * 600 / 1200)) / 2),  # = 0.5e-4
        (1199, 1e-4 * (1 + math.cos(math.pi * 1099 / 1200)) / 2),  # never reaches zero
    ],
)
def test_schedule_values_in_a_1200_step_phase(step, expected):
    f = warmup_cosine(100, 1200)
    assert 1e-4 * f(step) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_last_step_lr_is_the_papers_quirk_not_zero():
    lr = 1e-4 * warmup_cosine(100, 1200)(1199)
    assert lr == pytest.approx(1.7378e-6, rel=1e-4)


def test_phase1_stays_in_warmup():
    f = warmup_cosine(100, 64)
    assert f(63) == pytest.approx(0.63)


def test_lambdalr_applies_it_per_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = LambdaLR(opt, warmup_cosine(100, 1200))
    seen = []
    for _ in range(101):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == 0.0 and seen[50] == pytest.approx(0.5e-4) and seen[100] == pytest.approx(1e-4)


def test_decay_variant_divides_by_n_minus_w():
    assert warmup_cosine(100, 1200, "decay")(1200) == pytest.approx(0.0, abs=1e-12)
