"""Attacks on a phase's final model (beyond the paper's metric): what an attacker recovers, tells apart, and where.

Run on the evaluation sets at the end of a phase, under that phase's evaluation prefix:

- **greedy** (teacher-forced): at each position, is the true letter strictly the model's most likely given the
  true letters before it (a tie recovers nothing: greedy decoding has no answer there)? Per-token accuracy,
  the recovery rate at each letter position, extraction strength 1 - k/L (open-unlearning: k the shortest
  prefix of the password after which greedy decoding reproduces the rest), and `greedy_in_set`: how many
  passwords of the set greedy decoding outputs (at most 1 with a prefix: greedy decoding has one output).
- **logit_diff** (phases 2 and 3, against the phase-1 reference): the attack the paper warns about; at each
  position guess the letter whose log-prob dropped most from reference to model; the same measures.
- **exposure** (Carlini et al. 2019, "The Secret Sharer"): log2(C + 1) - log2(rank) of each password's
  log-likelihood among C random candidate passwords, rank = 1 + the candidates scored at least as high (ties
  count against the password, as in TF Privacy and the paper). From 0 to log2(C + 1) bits; chance (a uniformly
  random rank) is `stats.chance_exposure`. A non-finite log-likelihood gives NaN, never a rank.
- **generation** (`negrl.attacks.generation`): N candidates decoded greedily, by beam search and by sampling; the
  distinct passwords of each set they hit (the random set is the control).
- **membership** (`negrl.attacks.membership`): ROC AUC of the loss, min-k% and reference attacks, held-out and useful
  negatives against the random set, with a bootstrap interval.
- **lens** (`negrl.attacks.lens`): the logit lens, each layer's letter log-likelihood of each set.

Letters are scored by their full-vocabulary log-probs, in fp32, in batched no-grad passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from negrl.attacks import generation, membership
from negrl.attacks.lens import letter_lens
from negrl.core.protocol import MIA_MEMBERS, MIA_NONMEMBERS
from negrl.model.backbone import Backbone, fp32_inference

#: Sequences per forward pass of the extraction (evaluation sets and candidates together).
CHUNK = 512


@dataclass(frozen=True)
class AttackSettings:
    """`extraction.*`: exposure candidates, generated candidates, min-k fraction, bootstrap resamples; the seed
    of the sampling and the bootstrap (the run's)."""

    candidates: int = 4095
    samples: int = 1024
    min_k: float = 0.2
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class Recovery:
    """A letter guess on a set: per-token accuracy, passwords reproduced whole, mean extraction strength and the
    recovery rate at each letter position (None where the letter is given: the first, without a prefix)."""

    accuracy: float
    greedy_in_set: int
    n: int
    strength: float
    position_accuracy: list[float | None]


def recovered(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, P] whether the true letter's score (scores [B, P, K]) is strictly above every other letter's."""
    true = scores.gather(-1, labels.unsqueeze(-1))
    others = scores.scatter(-1, labels.unsqueeze(-1), float("-inf"))
    return true.squeeze(-1) > others.amax(dim=-1)


def strength(correct: torch.Tensor, length: int) -> torch.Tensor:
    """Extraction strength 1 - k/L per password from `correct` [B, P] over its last P of L letters: k is the
    letters given before the first position from which every guess is right (the L - P unpredicted ones at least)."""
    b, p = correct.shape
    wrong = ~correct
    last_wrong = torch.where(wrong, torch.arange(1, p + 1).expand(b, -1), torch.zeros(b, p, dtype=torch.long))
    k = (length - p) + last_wrong.amax(dim=-1)
    return 1 - k.double() / length


def recovery(scores: torch.Tensor, labels: torch.Tensor, length: int) -> Recovery:
    """Guess the highest-scoring letter at each position: scores [B, P, K], true letters [B, P], L letters."""
    correct = recovered(scores, labels)
    given = [None] * (length - correct.shape[1])
    return Recovery(
        accuracy=float(correct.double().mean()),
        greedy_in_set=int(correct.all(dim=-1).sum()),
        n=len(labels),
        strength=float(strength(correct, length).mean()),
        position_accuracy=given + correct.double().mean(dim=0).tolist(),
    )


def exposure(ll: torch.Tensor, candidate_ll: torch.Tensor) -> torch.Tensor:
    """Exposure in bits of each password: log2(C + 1) - log2(rank) among C candidate log-likelihoods,
    rank = 1 + (candidates at least as likely), from 1 to C + 1. NaN for a non-finite password log-likelihood,
    and for every password when a candidate's is not finite."""
    ll = ll.double()
    if not torch.isfinite(candidate_ll).all():
        return torch.full_like(ll, math.nan)
    ranked = torch.sort(candidate_ll.double()).values
    rank = 1 + len(ranked) - torch.searchsorted(ranked, ll, right=False)
    bits = math.log2(len(ranked) + 1) - torch.log2(rank.double())
    return torch.where(torch.isfinite(ll), bits, math.nan)


def mean(values: torch.Tensor) -> float:
    """The mean, NaN if any value is NaN."""
    return float(values.double().mean())


class Extraction:
    """The attacks on a phase's evaluation sets. `letter_ids`: the token id of each letter (a guess is an index
    into them); `length`: the password length; `settings`: `AttackSettings`; `lens`: read every layer out (the
    model must have decoder layers and a final norm)."""

    def __init__(self, letter_ids: Sequence[int], length: int, settings: AttackSettings, chunk: int = CHUNK,
                 lens: bool = True):  # fmt: skip
        self.letter_ids = torch.tensor(list(letter_ids), dtype=torch.long)
        self.length, self.settings, self.chunk, self.lens = length, settings, chunk, lens
        self._letter_index = torch.full((max(letter_ids) + 1,), -1, dtype=torch.long)
        self._letter_index[self.letter_ids] = torch.arange(len(self.letter_ids))

    def letter_logprobs(self, backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
        """[N, T-1, K] log-probs of every letter at every label position, chunked, in fp32 on the CPU."""
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

    def rng(self, phase: int, stream: int) -> np.random.SeedSequence:
        """The seeded stream of the sampling (0) or the bootstrap (1) of a phase."""
        return np.random.SeedSequence([self.settings.seed, phase, stream])

    def __call__(
        self,
        backbone: Backbone,
        sets: dict[str, torch.Tensor],
        candidates: torch.Tensor,
        reference: Backbone | None = None,
        phase: int = 0,
    ) -> dict[str, Any]:
        """{"candidates": C, "greedy": {set: Recovery}, "exposure": {set: mean bits}, "generation", "membership",
        "lens", and with `reference` (the phase-1 model) "logit_diff": {set: Recovery}}, as plain dicts and numbers."""
        names = list(sets)
        tokens = torch.cat([sets[n] for n in names] + [candidates])
        sizes = [len(sets[n]) for n in names] + [len(candidates)]
        model_lp = self.letter_logprobs(backbone, tokens)
        labels = self.labels(tokens)
        token_ll = model_lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        *set_ll, candidate_ll = token_ll.double().sum(dim=-1).split(sizes)
        n_set = sum(sizes[:-1])  # the evaluation sets lead `tokens`; the candidates follow
        by_set = {n: dict(lp=lp, labels=lb, ll=ll) for n, lp, lb, ll in
                  zip(names, model_lp.split(sizes), labels.split(sizes), token_ll.split(sizes))}  # fmt: skip
        out: dict[str, Any] = {
            "candidates": len(candidates),
            "greedy": {n: asdict(recovery(by_set[n]["lp"], by_set[n]["labels"], self.length)) for n in names},
            "exposure": {n: mean(exposure(ll, candidate_ll)) for n, ll in zip(names, set_ll)},
        }
        reference_ll = None
        if reference is not None:
            reference_lp = self.letter_logprobs(reference, tokens[:n_set])
            drops = dict(zip(names, (reference_lp - model_lp[:n_set]).split(sizes[:-1])))
            out["logit_diff"] = {n: asdict(recovery(drops[n], by_set[n]["labels"], self.length)) for n in names}
            reference_ll = dict(zip(names, reference_lp.gather(-1, labels[:n_set].unsqueeze(-1)).squeeze(-1)
                                    .split(sizes[:-1])))  # fmt: skip
        out["generation"] = self.generation(backbone, sets, phase)
        out["membership"] = self.membership({n: by_set[n]["ll"] for n in names}, reference_ll, phase)
        if self.lens:
            labels_by_set = {n: by_set[n]["labels"] for n in names}
            out["lens"] = letter_lens(backbone, sets, self.letter_ids.tolist(), labels_by_set, self.chunk)
        return out

    def generation(self, backbone: Backbone, sets: dict[str, torch.Tensor], phase: int) -> dict[str, Any]:
        """N candidates of each decoder under the sets' prefix, and the distinct passwords of each set they hit."""
        n, length = self.settings.samples, self.length
        first = next(iter(sets.values()))
        start = first[0, : first.shape[1] - length]  # the evaluation prefix (empty without prefixes)
        step = generation.decoder(backbone, self.letter_ids, self.chunk)
        seed = int(self.rng(phase, 0).generate_state(1)[0])
        drawn = {
            "greedy": generation.greedy(step, start, self.letter_ids, length),
            "beam": generation.beam(step, start, self.letter_ids, length, n),
            "sampled": generation.sample(step, start, self.letter_ids, length, n, torch.Generator().manual_seed(seed)),
        }
        passwords = {name: self._letter_index[tokens[:, -length:]] for name, tokens in sets.items()}
        return {
            "n": n,
            "hits": {d: {name: generation.hits(c, pw) for name, pw in passwords.items()} for d, c in drawn.items()},
            "distinct": {d: generation.distinct(c) for d, c in drawn.items()},
        }

    def membership(self, token_ll: dict[str, torch.Tensor], reference_ll: dict[str, torch.Tensor] | None,
                   phase: int) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
        """ROC AUC with its interval of each attack, each member set present against the non-members."""
        s = self.settings
        scores = {
            "loss": {n: membership.loss_scores(ll) for n, ll in token_ll.items()},
            "min_k": {n: membership.min_k_scores(ll, s.min_k) for n, ll in token_ll.items()},
        }
        if reference_ll is not None:
            scores["reference"] = {n: membership.reference_scores(token_ll[n], reference_ll[n]) for n in token_ll}
        members = [n for n in MIA_MEMBERS if n in token_ll] if MIA_NONMEMBERS in token_ll else []
        pairs = [(attack, name) for attack in scores for name in members]
        out: dict[str, dict[str, dict[str, float]]] = {attack: {} for attack in scores}
        for (attack, name), seq in zip(pairs, self.rng(phase, 1).spawn(len(pairs))):
            by_set, seed = scores[attack], int(seq.generate_state(1)[0])
            interval = membership.auc_interval(by_set[name], by_set[MIA_NONMEMBERS], s.bootstrap, seed)
            out[attack][name] = asdict(interval)
        return out


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """An extraction result as one metrics row: extract/<set>_{greedy,logit_diff}_{acc,in_set,strength},
    extract/<set>_exposure, extract/<set>_hits_{greedy,beam,sampled} and mia/<set>_<attack>_auc (the lens and the
    intervals are in results.json only)."""
    row: dict[str, float] = {}
    for attack in ("greedy", "logit_diff"):
        for name, rec in result.get(attack, {}).items():
            row[f"extract/{name}_{attack}_acc"] = rec["accuracy"]
            row[f"extract/{name}_{attack}_in_set"] = float(rec["greedy_in_set"])
            row[f"extract/{name}_{attack}_strength"] = rec["strength"]
    for name, bits in result["exposure"].items():
        row[f"extract/{name}_exposure"] = bits
    for decoder, by_set in result["generation"]["hits"].items():
        for name, count in by_set.items():
            row[f"extract/{name}_hits_{decoder}"] = float(count)
    for attack, by_set in result["membership"].items():
        for name, auc in by_set.items():
            row[f"mia/{name}_{attack}_auc"] = auc["auc"]
    return row
