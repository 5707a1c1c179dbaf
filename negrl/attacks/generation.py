"""What an attacker who samples the model gets: N candidate passwords decoded under the evaluation prefix, and how
many distinct passwords of each set they hit.

Decoding is over the K letters only (the attacker knows the format: their log-probs renormalised over the letters),
for exactly the password length, from the evaluation prefix (without prefixes the first letter has no context and
is uniform: greedy then gives one candidate per first letter, beam search starts from all of them, sampling draws
it uniformly). Three decoders: **greedy** (argmax, ties to the first letter), **beam** search of width N (the N
most likely passwords the search finds), and N **sampled** at temperature 1 from a seeded CPU generator (the run's
global random state is untouched). Forward passes are chunked no-grad fp32 passes; a transformers model decodes
with its key-value cache (`past_key_values`: the prefix once, then one token per row and letter, the cache's rows
reordered as beams are), any other module, and a model with sliding-window attention layers (Gemma 3: their cache
keeps only the window), by re-running the sequence so far (`Rerun`, also the cached decoding's reference in the
tests): the same candidates, about 9x fewer token passes for 16 letters after a prefix.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from transformers import DynamicCache

from negrl.model.backbone import Backbone, fp32_inference


class Decoder(Protocol):
    """The model's next-letter log-probs [B, K] (float64, on the CPU, renormalised over the K letters) after
    sequences that grow one letter at a time: `start(tokens [B, t])`, then `advance(rows [B'], tokens [B'])`, which
    keeps the rows `rows` of the sequences so far (a beam's parents; repeats allowed) and appends one token to each."""

    def start(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def advance(self, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor: ...


def decoder(backbone: Backbone, letter_ids: torch.Tensor, chunk: int, cache: bool | None = None) -> Decoder:
    """A `Cached` decoder for a transformers model (`cache=None`: when the model has a config and no sliding-window
    attention), else `Rerun`."""
    if cache is None:
        config = getattr(backbone.model, "config", None)
        cache = config is not None and not has_sliding_window(config)
    return (Cached if cache else Rerun)(backbone, letter_ids, chunk)


def has_sliding_window(config) -> bool:
    """Whether some attention layer of a transformers `config` sees only a window of the past (Gemma 3's local
    layers). Their cache keeps only the window, so a cache rebuilt from its keys and values, as `Cached` reorders
    rows, would count too few past positions and put the next token at the wrong rotary position."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return any("sliding" in str(t) for t in types)
    return getattr(config, "sliding_window", None) is not None and bool(getattr(config, "use_sliding_window", True))


class Rerun:
    """Each step a no-grad fp32 pass over each whole sequence so far, in chunks of `chunk` rows, keeping the
    letters' logits at its last position only."""

    def __init__(self, backbone: Backbone, letter_ids: torch.Tensor, chunk: int):
        self.backbone, self.chunk = backbone, chunk
        self.device = next(backbone.parameters()).device
        self.ids = letter_ids.to(self.device)
        self.tokens = torch.empty(0, 0, dtype=torch.long)

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens
        return self._step()

    def advance(self, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat([self.tokens[rows], tokens[:, None]], dim=1)
        return self._step()

    def _step(self) -> torch.Tensor:
        with fp32_inference(self.backbone):
            parts = [self.backbone.lm(p.to(self.device), logits_to_keep=1).logits[:, -1, self.ids].float().cpu()
                     for p in self.tokens.split(self.chunk)]  # fmt: skip
        return torch.log_softmax(torch.cat(parts).double(), dim=-1)


class Cached:
    """The prefix once, then one token per row and step through the model's key-value cache (each layer's keys and
    values [B, heads, t, d], reordered with the rows), in chunks of `chunk` rows."""

    def __init__(self, backbone: Backbone, letter_ids: torch.Tensor, chunk: int):
        self.backbone, self.chunk = backbone, chunk
        self.device = next(backbone.parameters()).device
        self.ids = letter_ids.to(self.device)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        base = getattr(backbone.model, "get_base_model", lambda: backbone.model)()  # under a peft adapter
        # transformers 5 renames the argument `past_key_values` to `cache` (the old name warns until it is removed)
        self.kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._step(tokens, None)

    def advance(self, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        same = len(rows) == len(self.kv[0][0]) and torch.equal(rows, torch.arange(len(rows)))
        if not same:  # beams reordered (or a shared prefix spread over the samples)
            rows = rows.to(self.device)
            self.kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.kv]
        return self._step(tokens[:, None], self.kv)

    def _step(self, tokens: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        model, config = self.backbone.model, getattr(self.backbone.model, "config", None)
        logits, caches = [], []
        with fp32_inference(self.backbone):
            for i in range(0, len(tokens), self.chunk):
                part = tokens[i : i + self.chunk].to(self.device)
                if kv is None:  # the prefix (and the BOS) through the backbone
                    out = self.backbone.lm(part, use_cache=True, logits_to_keep=1)
                else:
                    past = DynamicCache([(k[i : i + self.chunk], v[i : i + self.chunk]) for k, v in kv], config=config)
                    out = model(input_ids=part, use_cache=True, logits_to_keep=1, **{self.kwarg: past})
                logits.append(out.logits[:, -1, self.ids].float().cpu())
                cache = getattr(out, "cache", None) or out.past_key_values
                caches.append([(layer.keys, layer.values) for layer in cache.layers])
        self.kv = (
            caches[0]
            if len(caches) == 1
            else [
                (torch.cat([c[j][0] for c in caches]), torch.cat([c[j][1] for c in caches]))
                for j in range(len(caches[0]))
            ]
        )
        return torch.log_softmax(torch.cat(logits).double(), dim=-1)


def _start(start: torch.Tensor, letter_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoders' first sequences (token ids), their letters so far and log-probs: the prefix alone; without a
    prefix, each of the K first letters, equally likely."""
    if len(start):
        return start[None, :], torch.empty(1, 0, dtype=torch.long), torch.zeros(1, dtype=torch.float64)
    k = len(letter_ids)
    return letter_ids[:, None], torch.arange(k)[:, None], torch.full((k,), -torch.log(torch.tensor(float(k))).item())


def beam(model: Decoder, start: torch.Tensor, letter_ids: torch.Tensor, length: int, width: int) -> torch.Tensor:
    """Beam search of `width` over `length` letters after `start` [t]: the final beams as letter indices [<= width, L],
    most likely first (width 1: greedy decoding)."""
    tokens, letters, scores = _start(start, letter_ids)
    k = len(letter_ids)
    lp = model.start(tokens)
    while letters.shape[1] < length:
        total = (scores[:, None] + lp).flatten()
        keep = torch.sort(total, descending=True, stable=True).indices[:width]  # ties: earlier beam, earlier letter
        rows, letter = keep // k, keep % k
        letters, scores = torch.cat([letters[rows], letter[:, None]], dim=1), total[keep]
        if letters.shape[1] < length:
            lp = model.advance(rows, letter_ids[letter])
    return letters


def greedy(model: Decoder, start: torch.Tensor, letter_ids: torch.Tensor, length: int) -> torch.Tensor:
    """Greedy decoding (argmax, ties to the first letter) [1, L]; without a prefix one greedy continuation per
    first letter [K, L]."""
    tokens, letters, _ = _start(start, letter_ids)
    rows = torch.arange(len(tokens))
    lp = model.start(tokens)
    while letters.shape[1] < length:
        letter = lp.argmax(dim=-1)
        letters = torch.cat([letters, letter[:, None]], dim=1)
        if letters.shape[1] < length:
            lp = model.advance(rows, letter_ids[letter])
    return letters


def sample(model: Decoder, start: torch.Tensor, letter_ids: torch.Tensor, length: int, n: int,
           generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """`n` passwords [n, L] sampled letter by letter at temperature 1 from `generator` (without a prefix the first
    letter uniformly). With a prefix, the prefix is run once and its cache shared by the `n` rows."""
    rows = torch.arange(n)
    if len(start):
        letters = torch.empty(n, 0, dtype=torch.long)
        lp = model.start(start[None, :])[torch.zeros(n, dtype=torch.long)]
        model_rows = torch.zeros(n, dtype=torch.long)  # every row continues the one prefix
    else:
        first = torch.randint(0, len(letter_ids), (n,), generator=generator)
        letters = first[:, None]
        lp, model_rows = model.start(letter_ids[first][:, None]), rows
    while letters.shape[1] < length:
        letter = torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1)
        letters = torch.cat([letters, letter[:, None]], dim=1)
        if letters.shape[1] < length:
            lp, model_rows = model.advance(model_rows, letter_ids[letter]), rows
    return letters


def hits(candidates: torch.Tensor, passwords: torch.Tensor) -> int:
    """How many distinct passwords [M, L] (letter indices) are among the candidates [N, L]."""
    drawn = {tuple(row) for row in candidates.tolist()}
    return len({tuple(row) for row in passwords.tolist()} & drawn)


def distinct(candidates: torch.Tensor) -> int:
    return len({tuple(row) for row in candidates.tolist()})
