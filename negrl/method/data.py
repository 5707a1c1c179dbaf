"""The seeded password draw, the per-phase training streams and the evaluation sets.

Passwords are kept as letter indices (uint8, [n, length]) and turned into token ids,
with the phase's prefix, only when a batch is served.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from negrl.core.distributed import RankShard
from negrl.core.errors import NegrlError
from negrl.core.protocol import EVAL_PREFIX, EVAL_SETS, PHASES
from negrl.model.vocab import PasswordVocab

#: Index of the extraction candidates' stream among the seed's spawned streams (0-4: `PasswordSplits.draw`).
CANDIDATE_STREAM = 5


@dataclass(frozen=True)
class DataSizes:
    """Every data size of docs/experiment.md (defaults are the paper's)."""

    password_length: int = 16
    n_negatives: int = 2560
    negative_repeats: int = 60
    n_phase1: int = 8192
    useful_repeats: int = 30
    batch_size: int = 128
    eval_size: int = 128

    def __post_init__(self) -> None:
        """Phases must be whole batches (each size's type and sign are checked by `negrl.run.config`)."""
        if self.n_phase1 % self.batch_size:
            raise NegrlError(
                f"data.n_phase1={self.n_phase1} is not a multiple of data.batch_size={self.batch_size}; "
                "make it one so phase 1 is whole batches"
            )
        if (self.n_negatives * self.negative_repeats) % self.batch_size:
            raise NegrlError(
                f"data.n_negatives * data.negative_repeats = {self.n_negatives * self.negative_repeats} is not a "
                f"multiple of data.batch_size={self.batch_size}; change one of them"
            )

    @property
    def dpo_size(self) -> int:
        """Number of DPO pairs, which is also the length of every phase-3 stream."""
        return self.n_negatives * self.negative_repeats

    def steps(self, phase: int) -> int:
        """Optimizer steps of a phase (one epoch)."""
        return (self.n_phase1 if phase == 1 else self.dpo_size) // self.batch_size


def heldout_count(holdout_frac: float, n_negatives: int) -> int:
    """Number of held-out negatives; the fraction (in (0, 1), checked by `negrl.run.config`) must give a positive
    whole number."""
    exact = holdout_frac * n_negatives
    count = round(exact)
    if abs(exact - count) > 1e-6 or count == 0:
        raise NegrlError(
            f"holdout_frac={holdout_frac} gives {exact:g} held-out of data.n_negatives={n_negatives}, not a positive "
            f"whole number; use a multiple of {1 / n_negatives:g} (e.g. 0.05 for {round(0.05 * n_negatives)})"
        )
    return count


def _keys(rows: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in rows]


def _draw_excluding(
    rng: np.random.Generator, n: int, length: int, n_letters: int, exclude: set[bytes], distinct: bool = False
) -> np.ndarray:
    """Draw `n` uniform passwords, redrawing any that is in `exclude` (or repeated, if `distinct`)."""
    rows = rng.integers(0, n_letters, size=(n, length), dtype=np.uint8)
    while True:
        seen: set[bytes] = set()
        bad = []
        for i, key in enumerate(_keys(rows)):
            if key in exclude or (distinct and key in seen):
                bad.append(i)
            seen.add(key)
        if not bad:
            return rows
        rows[bad] = rng.integers(0, n_letters, size=(len(bad), length), dtype=np.uint8)


@dataclass
class PasswordSplits:
    """All passwords of one run, drawn from one seed (letter indices, uint8)."""

    heldout: np.ndarray
    useful: np.ndarray
    phase1: np.ndarray
    dpo_chosen: np.ndarray
    dpo_rejected: np.ndarray
    dpo_rejected_id: np.ndarray  # index of each rejected sequence among the distinct negatives
    phase3_random: np.ndarray
    phase3_useful: np.ndarray
    eval_random: np.ndarray

    def every_password(self) -> set[bytes]:
        """Every password the run trains on or evaluates (the negatives, each positive stream, the random
        evaluation set), as `_keys`."""
        streams = (self.heldout, self.useful, self.phase1, self.dpo_chosen, self.phase3_random, self.eval_random)
        return set(_keys(np.concatenate(streams)))

    @staticmethod
    def check_counts(sizes: DataSizes, n_held: int) -> None:
        """Both negative splits must fill an evaluation set."""
        n_useful = sizes.n_negatives - n_held
        if min(n_held, n_useful) < sizes.eval_size:
            raise NegrlError(
                f"{n_held} held-out and {n_useful} useful negatives (holdout_frac of data.n_negatives="
                f"{sizes.n_negatives}) are fewer than data.eval_size={sizes.eval_size}; "
                "lower data.eval_size or change holdout_frac"
            )

    @classmethod
    def draw(cls, sizes: DataSizes, holdout_frac: float, seed: int, n_letters: int) -> PasswordSplits:
        """Draw every password of docs/experiment.md. Positive streams never contain a negative."""
        n_held = heldout_count(holdout_frac, sizes.n_negatives)
        cls.check_counts(sizes, n_held)
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
        length = sizes.password_length
        negatives = _draw_excluding(rngs[0], sizes.n_negatives, length, n_letters, set(), distinct=True)
        heldout, useful = negatives[:n_held], negatives[n_held:]
        # The DPO rejected list: every negative `negative_repeats` times (tiled), useful ones first.
        ids = np.arange(sizes.n_negatives)
        rejected_id = np.concatenate(
            [np.tile(ids[n_held:], sizes.negative_repeats), np.tile(ids[:n_held], sizes.negative_repeats)]
        )
        rejected = negatives[rejected_id]
        never_positive = set(_keys(negatives))
        phase1 = _draw_excluding(rngs[1], sizes.n_phase1, length, n_letters, never_positive)
        chosen = _draw_excluding(rngs[2], sizes.dpo_size, length, n_letters, never_positive)
        phase3_random = _draw_excluding(rngs[3], sizes.dpo_size, length, n_letters, never_positive)
        # Useful negatives `useful_repeats` times (tiled), that list tiled until it covers the DPO set, then cut.
        useful_list = np.tile(useful, (sizes.useful_repeats, 1))
        phase3_useful = np.tile(useful_list, (math.ceil(sizes.dpo_size / len(useful_list)), 1))[: sizes.dpo_size]
        trained = never_positive | set(_keys(phase1)) | set(_keys(chosen)) | set(_keys(phase3_random))
        eval_random = _draw_excluding(rngs[4], sizes.eval_size, length, n_letters, trained, distinct=True)
        return cls(heldout, useful, phase1, chosen, rejected, rejected_id, phase3_random, phase3_useful, eval_random)


@dataclass(frozen=True)
class Stream:
    """Aligned arrays served together (e.g. chosen/rejected pairs) under one prefix.

    `arrays` hold passwords (served as token ids); `ids` hold integer labels served as is
    (e.g. which pair, which negative: the keys of the reference log-prob cache).
    """

    arrays: dict[str, np.ndarray]
    prefix: str | None
    ids: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))


class ShuffledBatches(Dataset):
    """Whole batches of one phase: item i is batch i of every stream, each stream in its own seeded order."""

    def __init__(self, streams: dict[str, Stream], vocab: PasswordVocab, batch_size: int, seed: int, phase: int):
        lengths = {name: len(s) for name, s in streams.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"streams of phase {phase} must have equal lengths, got {lengths}")
        self.streams, self.vocab, self.batch_size = streams, vocab, batch_size
        rngs = np.random.SeedSequence([seed, phase]).spawn(len(streams))
        n = next(iter(lengths.values()))
        self.orders = {name: np.random.default_rng(s).permutation(n) for name, s in zip(streams, rngs)}

    def __len__(self) -> int:
        return len(self.orders[next(iter(self.orders))]) // self.batch_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        batch = {}
        for name, stream in self.streams.items():
            idx = self.orders[name][i * self.batch_size : (i + 1) * self.batch_size]
            prefix = None if stream.prefix is None else self.vocab.prefix_id(stream.prefix)
            for key, array in stream.arrays.items():
                batch[key] = self.vocab.encode(array[idx], prefix)
            for key, array in stream.ids.items():
                batch[key] = torch.from_numpy(array[idx])
        return batch


class PasswordData:
    """Every stream of docs/experiment.md from one seeded draw, served phase by phase: each phase's training data
    (`for_phase`: a `PhaseData`, the LightningDataModule its Trainer fits on), evaluation sets and exposure
    candidates."""

    def __init__(self, vocab: PasswordVocab, sizes: DataSizes, holdout_frac: float, prefix: bool, seed: int):
        self.vocab, self.sizes, self.holdout_frac = vocab, sizes, holdout_frac
        self.use_prefix, self.seed = prefix, seed
        self.splits = PasswordSplits.draw(sizes, holdout_frac, seed, vocab.n_letters)

    def _prefix(self, name: str) -> str | None:
        return name if self.use_prefix else None

    def _eval_prefix_id(self, phase: int) -> int | None:
        """Token id of the phase's evaluation prefix (None without prefixes)."""
        return self.vocab.prefix_id(EVAL_PREFIX[phase]) if self.use_prefix else None

    def streams(self, phase: int) -> dict[str, Stream]:
        """The training streams of a phase, keyed by name."""
        s = self.splits
        pair_ids = {"chosen_id": np.arange(len(s.dpo_chosen)), "rejected_id": s.dpo_rejected_id}
        pairs = Stream({"chosen": s.dpo_chosen, "rejected": s.dpo_rejected}, self._prefix("regular"), pair_ids)
        if phase == 1:
            return {"random": Stream({"random": s.phase1}, self._prefix("regular"))}
        if phase == 2:
            return {"pairs": pairs}
        if phase == 3:
            return {
                "pairs": pairs,
                "random": Stream({"random": s.phase3_random}, self._prefix("regular")),
                "useful": Stream({"useful": s.phase3_useful}, self._prefix("reverse")),
            }
        raise ValueError(f"phase must be one of {PHASES}, got {phase}")

    def dataset(self, phase: int) -> ShuffledBatches:
        return ShuffledBatches(self.streams(phase), self.vocab, self.sizes.batch_size, self.seed, phase)

    def for_phase(self, phase: int, start: int = 0) -> PhaseData:
        """The training data of a phase from step `start` on (a resumed run's next step), for `Trainer.fit`."""
        return PhaseData(self, phase, start)

    def eval_sets(self, phase: int) -> dict[str, torch.Tensor]:
        """The three evaluation sets (token ids) with the phase's evaluation prefix."""
        s, n = self.splits, self.sizes.eval_size
        sets = {"heldout": s.heldout[:n], "useful": s.useful[:n], "random": s.eval_random}
        return {name: self.vocab.encode(sets[name], self._eval_prefix_id(phase)) for name in EVAL_SETS}

    def candidates(self, phase: int, n: int) -> torch.Tensor:
        """`n` distinct random passwords the run never trains on or evaluates (none a negative, a trained positive
        or in an evaluation set: as unseen as the random control), with the phase's evaluation prefix: exposure's
        candidates. Their own seeded stream, so drawing them changes no other password."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(CANDIDATE_STREAM + 1)[CANDIDATE_STREAM])
        exclude = self.splits.every_password()
        drawn = _draw_excluding(rng, n, self.sizes.password_length, self.vocab.n_letters, exclude, distinct=True)
        return self.vocab.encode(drawn, self._eval_prefix_id(phase))

    def positive_targets(self, phase: int) -> Iterable[str]:
        """Batch keys of a phase that are trained towards (everything but DPO's rejected)."""
        return [k for st in self.streams(phase).values() for k in st.arrays if k != "rejected"]


class PhaseData(L.LightningDataModule):
    """One phase's training data from step `start` on, as the LightningDataModule its Trainer fits on: one item
    per optimizer step, whole batches pre-assembled in the phase's seeded order (under DDP, this process's share
    of each). Fixed at construction (a phase and a resumed run's step each get their own), so nothing in it
    changes while it serves."""

    def __init__(self, data: PasswordData, phase: int, start: int = 0):
        super().__init__()
        if not 0 <= start <= data.sizes.steps(phase):
            raise ValueError(f"phase {phase} has {data.sizes.steps(phase)} steps; cannot start at step {start}")
        self.data, self.phase, self.start = data, phase, start

    def setup(self, stage: str) -> None:
        """Each process's batches, once its process group is up (the rank decides its share)."""
        self.batches = self.dataset()

    def dataset(self) -> Dataset:
        """Item i: the batch of step `start + i` (this process's share of it under DDP)."""
        dataset: Dataset = RankShard(self.data.dataset(self.phase))
        return Subset(dataset, range(self.start, len(dataset))) if self.start else dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, shuffle=False)

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: the phase and the step of its next batch (a resumed run's data starts there)."""
        return self.position(self.trainer)

    def position(self, trainer: L.Trainer | None) -> dict[str, int]:
        """The phase and the step of the next batch once `trainer` (None: not yet fitting) has taken its steps."""
        return {"phase": self.phase, "next_step": self.start + (0 if trainer is None else trainer.global_step)}
