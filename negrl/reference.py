"""Reference-model sequence log-probs for DPO, each distinct sequence computed once.

The reference is frozen and the DPO pairs are fixed: each chosen sequence is one pair's
own, each rejected sequence one of the distinct negatives (repeated 60 times), and phase 3
reuses phase 2's pairs. So the log-prob of a chosen sequence is cached by pair index and
that of a rejected one by negative index, and only sequences not seen before go through
the reference model.
"""

from __future__ import annotations

from typing import Any

import torch

from negrl.backbone import Backbone
from negrl.objectives import sequence_logprob


class ReferenceLogprobs:
    """Sequence log-probs under the frozen reference `model`, cached (`use_cache`) or recomputed every time."""

    def __init__(self, model: Backbone, n_pairs: int, n_negatives: int, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        self.cache = {
            "chosen": torch.full((n_pairs,), float("nan"), dtype=torch.float64),
            "rejected": torch.full((n_negatives,), float("nan"), dtype=torch.float64),
        }
        self.computed = 0  # sequences that went through the reference model (for tests and benchmarks)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs [B] of the batch's chosen and rejected sequences."""
        chosen, rejected = batch["chosen"], batch["rejected"]
        if not self.use_cache:
            self.computed += len(chosen) + len(rejected)
            ref = sequence_logprob(self.model.token_logprobs(torch.cat([chosen, rejected])))
            return ref.split([len(chosen), len(rejected)])
        parts = {"chosen": (chosen, batch["chosen_id"].cpu()), "rejected": (rejected, batch["rejected_id"].cpu())}
        todo = []  # sequences not cached yet, each distinct key once
        for name, (tokens, keys) in parts.items():
            missing = torch.isnan(self.cache[name][keys])
            keys_missing, first = _unique_first(keys[missing])
            todo.append((name, keys_missing, tokens[missing.nonzero().squeeze(1).to(tokens.device)][first]))
        new_tokens = torch.cat([t for _, _, t in todo])
        if len(new_tokens):
            self.computed += len(new_tokens)
            values = sequence_logprob(self.model.token_logprobs(new_tokens)).double().cpu()
            for (name, keys, _), v in zip(todo, values.split([len(t) for _, _, t in todo])):
                self.cache[name][keys] = v
        device = chosen.device
        return tuple(self.cache[name][keys].to(device=device, dtype=torch.float32) for name, (_, keys) in parts.items())

    def state_dict(self) -> dict[str, Any]:
        """The cached values and the count of sequences computed so far (a resumed run goes on counting)."""
        return {**{k: v.clone() for k, v in self.cache.items()}, "computed": self.computed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.computed = int(state.pop("computed", 0))
        self.cache = {k: v.clone() for k, v in state.items()}


def _unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct keys and the position of each one's first occurrence."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(unique),), len(keys), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(keys)), reduce="amin"
    )
    return unique, first
