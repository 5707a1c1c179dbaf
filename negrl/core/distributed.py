"""Data-parallel runs (`trainer.devices=N`): which process writes, and each process's share of a batch.

Lightning's DDP launches N - 1 extra processes that re-run `train.py` with the same
overrides. Every process draws the same passwords from the same seed and trains on its
1/N of each global batch of 128, so the averaged gradient is the single-device one.
Only the first process (rank 0) writes files, logs, checkpoints and prints the verdict.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset


def is_rank_zero() -> bool:
    """True in the launching process; False in the processes Lightning's DDP starts for devices 1..N-1."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, or (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RankShard(Dataset):
    """Item i is this process's contiguous 1/world of batch i (the whole batch on one device)."""

    def __init__(self, batches: Dataset):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.batches[i]
        rank, world = rank_and_world()
        if world == 1:
            return batch
        return {k: v.chunk(world)[rank] for k, v in batch.items()}  # validation: world divides the batch


def sum_over_ranks(value: int) -> int:
    """The sum of an integer over all processes (itself on one device)."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    torch.distributed.all_reduce(t)
    return int(t.item())
