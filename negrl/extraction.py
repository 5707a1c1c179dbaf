"""Extraction attacks: how much of each password an attacker recovers (beyond the paper's metric).

Run on the evaluation sets at the end of a phase, under that phase's evaluation prefix:

- **greedy**: at each position, the model's most likely letter given the true letters before
  it (teacher-forced greedy decoding after the prefix). Per-token accuracy (chance 1/26 for
  any model that cannot tell passwords apart) and exact recoveries: the passwords whose
  every letter is the argmax, which are exactly the passwords greedy decoding from the
  prefix outputs.
- **logit_diff**: the attack the paper warns about, with the phase-2 model and its frozen
  reference: at each position guess the letter whose log-prob dropped most from reference
  to model, decoding greedily in the same teacher-forced way.
- **exposure** (Carlini et al. 2019, "The Secret Sharer"): log2(C + 1) - log2(rank) of each
  password's log-likelihood among C random candidate passwords, rank 1 being above all of
  them (ties count half). From 0 to log2(C + 1) bits; a model that gives every password the
  same likelihood gets log2((C + 1) / (C / 2 + 1)), about 1 bit; the random set is the control.

Letters are scored by their full-vocabulary log-probs, in fp32, in batched no-grad passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from negrl.backbone import PythiaBackbone, fp32_inference
from negrl.stats import max_exposure, tied_exposure  # noqa: F401 (part of the attacks' interface)

#: Sequences per forward pass of the extraction (evaluation sets and candidates together).
CHUNK = 512


@dataclass(frozen=True)
class Recovery:
    """Per-token accuracy of a letter guess, and how many passwords it recovers exactly."""

    accuracy: float
    exact: int
    n: int


def recovery(scores: torch.Tensor, labels: torch.Tensor) -> Recovery:
    """Guess the highest-scoring letter at each position: scores [B, P, K], true letters [B, P]."""
    correct = scores.argmax(dim=-1) == labels
    return Recovery(float(correct.double().mean()), int(correct.all(dim=-1).sum()), len(labels))


def exposure(ll: torch.Tensor, candidate_ll: torch.Tensor) -> torch.Tensor:
    """Exposure in bits of each password: log2(C + 1) - log2(rank) among C candidate log-likelihoods.

    rank = 1 + (candidates above) + (candidates tied) / 2, so it runs from 1 to C + 1.
    """
    ranked = torch.sort(candidate_ll.double()).values
    ll = ll.double()
    below_or_tied = torch.searchsorted(ranked, ll, right=True)
    below = torch.searchsorted(ranked, ll, right=False)
    rank = 1 + (len(ranked) - below_or_tied) + (below_or_tied - below).double() / 2
    return math.log2(len(ranked) + 1) - torch.log2(rank)


class Extraction:
    """The three attacks on a phase's evaluation sets.

    `letter_ids`: the token id of each letter (a guess is an index into them); `candidates`
    are random passwords (token ids, with the same prefix as the sets) for exposure.
    """

    def __init__(self, letter_ids: Sequence[int], chunk: int = CHUNK):
        self.letter_ids = torch.tensor(list(letter_ids), dtype=torch.long)
        self.chunk = chunk
        self._letter_index = torch.full((max(letter_ids) + 1,), -1, dtype=torch.long)
        self._letter_index[self.letter_ids] = torch.arange(len(self.letter_ids))

    def letter_logprobs(self, backbone: PythiaBackbone, tokens: torch.Tensor) -> torch.Tensor:
        """[N, T-1, 26] log-probs of every letter at every label position, chunked, in fp32 on the CPU."""
        device = next(backbone.parameters()).device
        with fp32_inference(backbone):
            parts = [
                backbone.candidate_logprobs(part.to(device), self.letter_ids).cpu() for part in tokens.split(self.chunk)
            ]
        return torch.cat(parts)

    def labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """The letter index of every label token [N, T-1] (labels are always letters)."""
        index = self._letter_index[tokens[:, 1:]]
        if (index < 0).any():
            raise ValueError("extraction: a label token is not a letter")
        return index

    def __call__(
        self,
        backbone: PythiaBackbone,
        sets: dict[str, torch.Tensor],
        candidates: torch.Tensor,
        reference: PythiaBackbone | None = None,
    ) -> dict[str, Any]:
        """{"greedy": {set: Recovery}, "exposure": {set: mean bits}, "logit_diff": {set: Recovery} (with
        `reference`), "candidates": C}, as plain dicts and numbers."""
        names = list(sets)
        tokens = torch.cat([sets[n] for n in names] + [candidates])
        sizes = [len(sets[n]) for n in names] + [len(candidates)]
        model_lp = self.letter_logprobs(backbone, tokens)
        labels = self.labels(tokens)
        label_lp = model_lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        sequence_ll = label_lp.double().sum(dim=-1)
        *set_ll, candidate_ll = sequence_ll.split(sizes)
        lp_by_set = dict(zip(names, model_lp.split(sizes)))
        labels_by_set = dict(zip(names, labels.split(sizes)))
        out: dict[str, Any] = {
            "candidates": len(candidates),
            "greedy": {n: asdict(recovery(lp_by_set[n], labels_by_set[n])) for n in names},
            "exposure": {n: float(exposure(ll, candidate_ll).mean()) for n, ll in zip(names, set_ll)},
        }
        if reference is not None:
            n_set = sum(sizes[:-1])  # the evaluation sets lead `tokens`; the candidates follow
            drop = self.letter_logprobs(reference, tokens[:n_set]) - model_lp[:n_set]
            drops = dict(zip(names, drop.split(sizes[:-1])))
            out["logit_diff"] = {n: asdict(recovery(drops[n], labels_by_set[n])) for n in names}
        return out


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """An extraction result as one metrics row: extract/<set>_greedy_acc, _greedy_exact, _exposure,
    _logit_diff_acc, _logit_diff_exact."""
    row: dict[str, float] = {}
    for attack in ("greedy", "logit_diff"):
        for name, rec in result.get(attack, {}).items():
            row[f"extract/{name}_{attack}_acc"] = rec["accuracy"]
            row[f"extract/{name}_{attack}_exact"] = float(rec["exact"])
    for name, bits in result["exposure"].items():
        row[f"extract/{name}_exposure"] = bits
    return row
