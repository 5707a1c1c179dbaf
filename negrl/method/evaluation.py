"""Evaluation of the three password sets, shared by all phases."""

from __future__ import annotations

import torch

from negrl.method.metrics import MeanTokenLogLikelihood, RunningMax
from negrl.model.backbone import Backbone, fp32_inference


class Evaluator:
    """Mean per-token log-likelihood of each evaluation set, after steps 0, every, 2*every, ... of a phase.

    All sets go through one no-grad forward pass; log-likelihoods are computed in fp32
    from the logits, whatever the training precision.
    """

    def __init__(self, every: int):
        self.every = every
        self.sets: dict[str, torch.Tensor] = {}
        self.ll = {}
        self.best = {}
        self.last: dict[str, float] = {}

    def start_phase(self, sets: dict[str, torch.Tensor]) -> None:
        """Take the phase's evaluation sets (with its prefix); reset the running maxima."""
        self.sets = sets
        self.ll = {name: MeanTokenLogLikelihood() for name in sets}
        self.best = {name: RunningMax() for name in sets}
        self.last = {}

    def due(self, step: int) -> bool:
        """Whether to evaluate right after the update of 0-based step `step`."""
        return step % self.every == 0

    @property
    def tokens(self) -> torch.Tensor:
        """Every set's sequences, in one tensor [N, T] (the sets in order)."""
        return torch.cat(list(self.sets.values()))

    @torch.inference_mode()
    def evaluate(self, backbone: Backbone) -> dict[str, float]:
        """Evaluate every set; returns `eval/<set>_ll` and its running max `eval/<set>_ll_max`."""
        device = next(backbone.parameters()).device
        with fp32_inference(backbone):
            logprobs = backbone.token_logprobs(self.tokens.to(device))
        return self.record(logprobs)

    def record(self, logprobs: torch.Tensor) -> dict[str, float]:
        """Take the per-token log-probs [N, T-1] of `tokens` (computed elsewhere, e.g. for stacked seeds at once):
        returns `eval/<set>_ll` and `eval/<set>_ll_max`."""
        out = {}
        for name, lp in zip(self.sets, logprobs.split([len(t) for t in self.sets.values()])):
            metric = self.ll[name]
            metric.update(lp.cpu())
            value = metric.compute()
            metric.reset()
            self.best[name].update(value)
            self.last[name] = float(value)
            out[f"eval/{name}_ll"] = float(value)
            out[f"eval/{name}_ll_max"] = float(self.best[name].compute())
        return out

    def state_dict(self) -> dict[str, dict[str, float]]:
        """The running maxima and last values of the phase so far (for checkpoints)."""
        return {"best": {n: float(m.compute()) for n, m in self.best.items() if m.update_called}, "last": self.last}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        for name, value in state["best"].items():
            self.best[name].update(torch.tensor(value, dtype=torch.float64))
        self.last = dict(state["last"])

    def summary(self) -> dict[str, dict[str, float]]:
        """Per set: the max and the final value over this phase's evaluations."""
        return {name: {"max": float(self.best[name].compute()), "final": self.last[name]} for name in self.sets}
