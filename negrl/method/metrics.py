"""Evaluation metrics: mean per-token log-likelihood of a set, and its running max."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric


class MeanTokenLogLikelihood(Metric):
    """Mean over sequences of each sequence's mean label log-prob (the paper's LL), accumulated in fp64."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, token_logprobs: torch.Tensor) -> None:
        """token_logprobs: [B, T-1] label log-probs of B sequences."""
        self.total += token_logprobs.double().mean(dim=-1).sum()
        self.count += token_logprobs.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class RunningMax(MaxMetric):
    """The maximum of every value seen so far, in fp64 (the paper's final metric takes it over phase 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.set_dtype(torch.float64)
