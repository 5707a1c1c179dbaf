"""What an attacker who samples the model gets: N candidate passwords decoded under the evaluation prefix, and how
many distinct passwords of each set they hit.

Decoding is over the K letters only (the attacker knows the format: their log-probs renormalised over the letters),
for exactly the password length, from the evaluation prefix (without prefixes the first letter has no context and
is uniform: greedy then gives one candidate per first letter, beam search starts from all of them, sampling draws
it uniformly). Three decoders: **greedy** (argmax, ties to the first letter), **beam** search of width N (the N
most likely passwords the search finds), and N **sampled** at temperature 1 from a seeded CPU generator (the run's
global random state is untouched). Forward passes are chunked no-grad fp32 passes over the whole prefix so far.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from negrl.model.backbone import Backbone, fp32_inference

NextLetter = Callable[[torch.Tensor], torch.Tensor]  # token ids [B, t] -> letter log-probs [B, K]


def next_letter(backbone: Backbone, letter_ids: torch.Tensor, chunk: int) -> NextLetter:
    """The model's next-letter log-probs after each sequence, renormalised over the letters (the log-softmax of
    the letters' logits at the last position only), fp32, on the CPU."""
    device = next(backbone.parameters()).device
    ids = letter_ids.to(device)

    def step(tokens: torch.Tensor) -> torch.Tensor:
        with fp32_inference(backbone):
            parts = [backbone.lm(p.to(device), logits_to_keep=1).logits[:, -1, ids].float().cpu()
                     for p in tokens.split(chunk)]  # fmt: skip
        return torch.log_softmax(torch.cat(parts).double(), dim=-1)

    return step


def _start(start: torch.Tensor, letter_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoders' first sequences (token ids), their letters so far and log-probs: the prefix alone; without a
    prefix, each of the K first letters, equally likely."""
    if len(start):
        return start[None, :], torch.empty(1, 0, dtype=torch.long), torch.zeros(1, dtype=torch.float64)
    k = len(letter_ids)
    return letter_ids[:, None], torch.arange(k)[:, None], torch.full((k,), -torch.log(torch.tensor(float(k))).item())


def _extend(tokens: torch.Tensor, letters: torch.Tensor, rows: torch.Tensor, letter: torch.Tensor,
            letter_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return torch.cat([tokens[rows], letter_ids[letter][:, None]], dim=1), torch.cat([letters[rows], letter[:, None]], 1)


def beam(step: NextLetter, start: torch.Tensor, letter_ids: torch.Tensor, length: int, width: int) -> torch.Tensor:
    """Beam search of `width` over `length` letters after `start` [t]: the final beams as letter indices [<= width, L],
    most likely first (width 1: greedy decoding)."""
    tokens, letters, scores = _start(start, letter_ids)
    k = len(letter_ids)
    for _ in range(length - letters.shape[1]):
        total = (scores[:, None] + step(tokens)).flatten()
        keep = torch.sort(total, descending=True, stable=True).indices[:width]  # ties: earlier beam, earlier letter
        tokens, letters = _extend(tokens, letters, keep // k, keep % k, letter_ids)
        scores = total[keep]
    return letters


def greedy(step: NextLetter, start: torch.Tensor, letter_ids: torch.Tensor, length: int) -> torch.Tensor:
    """Greedy decoding (argmax, ties to the first letter) [1, L]; without a prefix one greedy continuation per
    first letter [K, L]."""
    tokens, letters, _ = _start(start, letter_ids)
    rows = torch.arange(len(tokens))
    for _ in range(length - letters.shape[1]):
        tokens, letters = _extend(tokens, letters, rows, step(tokens).argmax(dim=-1), letter_ids)
    return letters


def sample(step: NextLetter, start: torch.Tensor, letter_ids: torch.Tensor, length: int, n: int,
           generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """`n` passwords [n, L] sampled letter by letter at temperature 1 from `generator` (without a prefix the first
    letter uniformly)."""
    tokens, letters = start[None, :].expand(n, -1), torch.empty(n, 0, dtype=torch.long)
    rows = torch.arange(n)
    if not len(start):
        first = torch.randint(0, len(letter_ids), (n,), generator=generator)
        tokens, letters = letter_ids[first][:, None], first[:, None]
    for _ in range(length - letters.shape[1]):
        letter = torch.multinomial(step(tokens).exp(), 1, generator=generator).squeeze(-1)
        tokens, letters = _extend(tokens, letters, rows, letter, letter_ids)
    return letters


def hits(candidates: torch.Tensor, passwords: torch.Tensor) -> int:
    """How many distinct passwords [M, L] (letter indices) are among the candidates [N, L]."""
    drawn = {tuple(row) for row in candidates.tolist()}
    return len({tuple(row) for row in passwords.tolist()} & drawn)


def distinct(candidates: torch.Tensor) -> int:
    return len({tuple(row) for row in candidates.tolist()})
