"""Evaluation of the three password sets, shared by all phases."""

from __future__ import annotations

from typing import Any

import torch

from negrl.backbone import PythiaBackbone, fp32_inference
from negrl.extraction import Extraction, flat_metrics
from negrl.metrics import MeanTokenLogLikelihood, RunningMax


class Evaluator:
    """Mean per-token log-likelihood of each evaluation set, after steps 0, every, 2*every, ... of a phase,
    and (with `extraction`) the extraction attacks once, after the phase's last step.

    All sets go through one no-grad forward pass; log-likelihoods are computed in fp32
    from the logits, whatever the training precision.
    """

    def __init__(self, every: int, extraction: Extraction | None = None):
        self.every = every
        self.extraction = extraction
        self.sets: dict[str, torch.Tensor] = {}
        self.candidates: torch.Tensor | None = None
        self.ll = {}
        self.best = {}
        self.last: dict[str, float] = {}
        self.extracted: dict[str, Any] | None = None

    def start_phase(self, sets: dict[str, torch.Tensor], candidates: torch.Tensor | None = None) -> None:
        """Take the phase's evaluation sets and exposure candidates (with its prefix); reset the running maxima."""
        self.sets, self.candidates = sets, candidates
        self.ll = {name: MeanTokenLogLikelihood() for name in sets}
        self.best = {name: RunningMax() for name in sets}
        self.last = {}
        self.extracted = None

    def due(self, step: int) -> bool:
        """Whether to evaluate right after the update of 0-based step `step`."""
        return step % self.every == 0

    @torch.inference_mode()
    def evaluate(self, backbone: PythiaBackbone) -> dict[str, float]:
        """Evaluate every set; returns `eval/<set>_ll` and its running max `eval/<set>_ll_max`."""
        device = next(backbone.parameters()).device
        tokens = torch.cat(list(self.sets.values())).to(device)
        with fp32_inference(backbone):
            logprobs = backbone.token_logprobs(tokens)
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

    def extract(self, backbone: PythiaBackbone, reference: PythiaBackbone | None = None) -> dict[str, float]:
        """Run the extraction attacks (the logit-difference one if `reference` is given); the result stays
        in `extracted`, the returned row has `extract/...` metrics. Empty without extraction."""
        if self.extraction is None or self.candidates is None:
            return {}
        self.extracted = self.extraction(backbone, self.sets, self.candidates, reference)
        return flat_metrics(self.extracted)

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
