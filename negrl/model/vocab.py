"""Letters and prefixes as token ids: from a tokenizer, or a built-in 28-token vocabulary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from negrl.core.errors import NegrlError

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class PasswordVocab:
    """Token ids of the password letters, of the two prefix tokens, and of the BOS put before every sequence as
    context (None: no BOS)."""

    letter_ids: tuple[int, ...]
    regular_id: int
    reverse_id: int
    bos_id: int | None = None

    def __post_init__(self) -> None:
        if len(set(self.letter_ids)) != len(self.letter_ids):
            raise NegrlError(f"letter token ids are not distinct: {list(self.letter_ids)}; check tokens.letters")
        if self.regular_id == self.reverse_id:
            raise NegrlError(
                f"regular and reverse prefixes map to the same token id {self.regular_id}; "
                "set tokens.regular_prefix and tokens.reverse_prefix to different words"
            )
        if {self.regular_id, self.reverse_id} & set(self.letter_ids):
            raise NegrlError("a prefix token is also a letter token; choose prefix words that are not letters")
        if self.bos_id is not None and self.bos_id in {self.regular_id, self.reverse_id, *self.letter_ids}:
            raise NegrlError(f"the BOS token id {self.bos_id} is also a letter or prefix token; set tokens.bos=false")

    @property
    def n_letters(self) -> int:
        return len(self.letter_ids)

    @classmethod
    def builtin(cls, n_letters: int = len(ALPHABET)) -> PasswordVocab:
        """The embedded vocabulary of `model=tiny`: letters 0..n-1, then regular, reverse."""
        return cls(tuple(range(n_letters)), n_letters, n_letters + 1)

    @classmethod
    def from_tokenizer(
        cls,
        encode: Callable[[str], Sequence[int]],
        letters: str,
        letter_format: str,
        regular_prefix: str,
        reverse_prefix: str,
    ) -> PasswordVocab:
        """Map each letter (as `letter_format.format(letter)`) and each prefix to its single token id.

        `encode(text)` returns the token ids of `text` without special tokens.
        """
        letter_ids = tuple(_single_token(encode, letter_format.format(ch), "tokens.letters") for ch in letters)
        regular = _single_token(encode, regular_prefix, "tokens.regular_prefix")
        reverse = _single_token(encode, reverse_prefix, "tokens.reverse_prefix")
        return cls(letter_ids, regular, reverse)

    def prefix_id(self, name: str) -> int:
        """Token id of the prefix called `name` ('regular' or 'reverse')."""
        return {"regular": self.regular_id, "reverse": self.reverse_id}[name]

    def encode(self, letters: np.ndarray, prefix_id: int | None) -> torch.Tensor:
        """Letter indices [n, L] (uint8) -> token ids [n, L(+1)], the prefix token prepended if given."""
        table = torch.tensor(self.letter_ids, dtype=torch.long)
        tokens = table[torch.from_numpy(np.ascontiguousarray(letters, dtype=np.int64))]
        if prefix_id is None:
            return tokens
        return torch.cat([torch.full((tokens.shape[0], 1), prefix_id, dtype=torch.long), tokens], dim=1)


def _single_token(encode: Callable[[str], Sequence[int]], text: str, key: str) -> int:
    ids = list(encode(text))
    if len(ids) != 1:
        raise NegrlError(f"{text!r} is {len(ids)} tokens {list(ids)} in this tokenizer, not one; change {key}")
    return int(ids[0])
