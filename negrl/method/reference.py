"""Reference-model sequence log-probs for DPO, each distinct sequence computed once.

The reference is frozen and the DPO pairs are fixed: each chosen sequence is one pair's
own, each rejected sequence one of the distinct negatives (repeated 60 times), and phase 3
reuses phase 2's pairs. So the log-prob of a chosen sequence is cached by pair index and
that of a rejected one by negative index, and only sequences not seen before go through
the reference model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from negrl.method.objectives import SIDES, Needs, sequence_logprob
from negrl.model.backbone import Backbone


@dataclass
class Pending:
    """Sequences of a batch for the reference model: `tokens` [N, T], and for the cache which (chosen or rejected,
    key) each row is, in order (empty without the cache: every sequence, chosen then rejected)."""

    keys: list[tuple[str, torch.Tensor]]
    tokens: torch.Tensor
    values: torch.Tensor | None = None  # without the cache: their log-probs, once stored


class ReferenceLogprobs:
    """Sequence log-probs under the frozen reference `model`, cached (`use_cache`) or recomputed every time."""

    def __init__(self, model: Backbone, n_pairs: int, n_negatives: int, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        self.n_pairs, self.n_negatives = n_pairs, n_negatives
        self.cache = {
            "chosen": torch.full((n_pairs,), float("nan"), dtype=torch.float64),
            "rejected": torch.full((n_negatives,), float("nan"), dtype=torch.float64),
        }
        self.computed = 0  # sequences that went through the reference model (for tests and benchmarks)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs [B] of the batch's chosen and rejected sequences."""
        todo = self.pending(batch)
        if len(todo.tokens):
            self.store(todo, sequence_logprob(self.model.token_logprobs(todo.tokens)))
        return self.lookup(batch, todo)

    @torch.no_grad()
    def outputs(self, batch: dict[str, torch.Tensor], needs: Needs, layer: int | None) -> dict[str, torch.Tensor]:
        """What `needs` asks of the reference beyond sequence log-probs, never cached: "ref_logits/SIDE"
        [B, T-1, V] and "ref_hidden/SIDE" [B, T-1, d] (decoder layer `layer`), in one forward over the sides."""
        sides = [s for s in SIDES if s in needs.ref_logits or s in needs.ref_hidden]
        if not sides:
            return {}
        tokens = torch.cat([batch[s] for s in sides])
        out = self.model.token_outputs(tokens, logits=bool(needs.ref_logits), layer=layer if needs.ref_hidden else None)
        seen = {}
        for kind, wanted in (("logits", needs.ref_logits), ("hidden", needs.ref_hidden)):
            if wanted:
                for side, value in zip(sides, out[kind].split([len(batch[s]) for s in sides])):
                    if side in wanted:
                        seen[f"ref_{kind}/{side}"] = value
        return seen

    def pending(self, batch: dict[str, torch.Tensor]) -> Pending:
        """The sequences of `batch` the reference model has to compute: each distinct uncached one once (every
        chosen and rejected sequence without the cache)."""
        chosen, rejected = batch["chosen"], batch["rejected"]
        if not self.use_cache:
            return Pending([], torch.cat([chosen, rejected]))
        parts = {"chosen": (chosen, batch["chosen_id"].cpu()), "rejected": (rejected, batch["rejected_id"].cpu())}
        keys, tokens = [], []  # sequences not cached yet, each distinct key once
        for name, (seqs, ids) in parts.items():
            missing = torch.isnan(self.cache[name][ids])
            ids_missing, first = _unique_first(ids[missing])
            keys.append((name, ids_missing))
            tokens.append(seqs[missing.nonzero().squeeze(1).to(seqs.device)][first])
        return Pending(keys, torch.cat(tokens))

    def store(self, todo: Pending, values: torch.Tensor) -> None:
        """Take the reference's sequence log-probs [len(todo.tokens)] of the pending sequences."""
        self.computed += len(todo.tokens)
        if not self.use_cache:
            todo.values = values.float()
            return
        values = values.double().cpu()
        for (name, keys), v in zip(todo.keys, values.split([len(k) for _, k in todo.keys])):
            self.cache[name][keys] = v

    def lookup(self, batch: dict[str, torch.Tensor], todo: Pending) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's reference log-probs (chosen [B], rejected [B]), once `store` has taken `todo`'s."""
        chosen = batch["chosen"]
        if not self.use_cache:
            return todo.values.split([len(chosen), len(batch["rejected"])])
        ids = {"chosen": batch["chosen_id"].cpu(), "rejected": batch["rejected_id"].cpu()}
        return tuple(self.cache[name][keys].to(device=chosen.device, dtype=torch.float32) for name, keys in ids.items())

    def for_model(self, model: Any) -> ReferenceLogprobs:
        """A fresh reference of the same sizes over `model` (one seed's frozen weights, negrl.stacked.runner)."""
        return ReferenceLogprobs(model, self.n_pairs, self.n_negatives, self.use_cache)

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
