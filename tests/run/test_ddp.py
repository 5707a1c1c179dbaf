"""`trainer.devices=2` on CPU (DDP over gloo, two processes) keeps the global batch and the result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import FAST, FEW_STEPS, ROOT, make_cfg

from negrl.core.distributed import RankShard
from negrl.pipeline import run


@pytest.mark.slow  # two processes, each starting torch and Lightning: make test-slow (and CI)
def test_two_processes_give_the_single_device_result(tmp_path):
    args = ("checkpoint.every=0", *FEW_STEPS, "extraction.enabled=false")  # phases of 4 + 10 + 10 steps, no attacks
    single = run(make_cfg(*args), tmp_path / "one")
    two_dir = f"hydra.run.dir={tmp_path}/two"
    cmd = [sys.executable, "train.py", *FAST, *args, "trainer.devices=2", two_dir]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr + proc.stdout  # really two processes
    assert proc.stdout.count("negrl verdict") == 1  # only rank 0 prints and writes
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["status"] == "complete"
    assert abs(two["metric"] - single["metric"]) < 1e-6
    assert abs(two["control"]["metric"] - single["control"]["metric"]) < 1e-6
    for p in ("1", "2", "3"):
        for name, ev in single["phases"][p]["eval"].items():
            assert abs(two["phases"][p]["eval"][name]["max"] - ev["max"]) < 1e-6
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert [single["phases"][p]["steps"] for p in ("1", "2", "3")] == [4, 10, 10]
    assert len(rows) == 1 + 4 + 10 + 10  # one row per step, written once


def test_rank_shard_is_the_whole_batch_on_one_device():
    batches = [{"chosen": torch.arange(8).reshape(4, 2), "chosen_id": torch.arange(4)}]
    item = RankShard(batches)[0]
    assert torch.equal(item["chosen"], batches[0]["chosen"]) and torch.equal(item["chosen_id"], torch.arange(4))


def test_rank_shard_gives_each_process_its_contiguous_share(monkeypatch):
    import negrl.core.distributed as dist

    batches = [{"rejected": torch.arange(12).reshape(6, 2), "rejected_id": torch.arange(6)}]
    monkeypatch.setattr(dist, "rank_and_world", lambda: (1, 3))
    item = RankShard(batches)[0]
    assert item["rejected"].tolist() == [[4, 5], [6, 7]] and item["rejected_id"].tolist() == [2, 3]
