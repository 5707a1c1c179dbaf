"""`negrl-pretrain`: the generated corpus, the saved checkpoint, and its use as model.path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_cfg_dict

from negrl.core.errors import NegrlError, RunFailed
from negrl.model.backbone import Backbone
from negrl.model.loading import load_model
from negrl.tools.pretrain import BLOCK, SEED_MAX, LetterCorpus, load_architecture, main, save


def test_corpus_memorise_sequences_are_pool_strings_and_copy_sequences_repeat():
    corpus = LetterCorpus(26, pool=5, seed=0)
    pool = {tuple(s) for s in corpus.pool.tolist()}
    batch = corpus.batch(6).numpy()
    assert batch.shape == (6, 64) and batch.min() >= 0 and batch.max() < 26
    memorise, copy = batch[:3].reshape(3, 4, BLOCK), batch[3:].reshape(3, 4, BLOCK)
    assert all(tuple(s) in pool for s in memorise.reshape(-1, BLOCK).tolist())
    assert np.array_equal(copy[:, 0], copy[:, 1]) and np.array_equal(copy[:, 2], copy[:, 3])
    assert not np.array_equal(copy[:, 0], copy[:, 2])
    assert np.array_equal(LetterCorpus(26, 5, seed=0).batch(6).numpy(), batch)  # one seed, one corpus
    assert not np.array_equal(LetterCorpus(26, 5, seed=1).batch(6).numpy(), batch)


@pytest.mark.heavy
def test_pretraining_learns_a_small_pool_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "pre"
    # 60 steps of 16 at lr 0.01 memorise 2 strings (accuracy 0.99 measured; 6.6 s on one core of the EPYC without
    # AVX-512, where 100 steps of 32 at lr 0.003 for 4 strings took 19 s for 0.96)
    args = ["--model", "tiny", "--steps", "60", "--pool", "2", "--batch", "16", "--lr", "0.01", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "pretraining.json").read_text())
    assert record["steps"] == 60 and record["pool"] == 2 and len(record["loss_curve"]) == 2  # steps 0 and 59
    # 2 strings, identified by their first letter: the rest is memorised.
    assert record["accuracy"]["memorise"] > 0.9
    assert record["loss_curve"][-1]["loss"] < record["loss_curve"][0]["loss"] - 1.0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["pre"]  # no staging directory left beside it
    c = make_cfg_dict(f"model.path={out}", "model.init=pretrained")
    backbone, vocab = load_model(c["model"], c["tokens"], seed=5)
    random, _ = load_model(make_cfg_dict()["model"], c["tokens"], seed=5)
    assert vocab.regular_id == 26 and vocab.reverse_id == 27
    w = lambda m: m.model.get_input_embeddings().weight  # noqa: E731
    assert not torch.equal(w(backbone), w(random))
    assert torch.equal(w(backbone), w(load_model(c["model"], c["tokens"], seed=6)[0]))  # the seed draws nothing
    with pytest.raises(NegrlError, match="loads trained weights but model.init=random; add model.init=pretrained"):
        load_model({**c["model"], "init": "random"}, c["tokens"], seed=5)


def one_error_line(capsys) -> str:
    """The single stderr line of a failed main(), after checking that no training step was printed."""
    captured = capsys.readouterr()
    assert "step" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("negrl-pretrain: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "pythia-70m"], "--model=pythia-70m uses a tokenizer vocabulary"),
        (["--model", "tiny-h9"], "--model=tiny-h9 is unknown; choose one of: .*tiny-h128"),
        (["--steps", "0"], "--steps=0 must be at least 1; give an integer of at least 1"),
        (["--steps", "1e3"], "--steps=1e3 is not an integer"),
        (["--pool", "0"], "--pool=0 must be at least 1"),
        (["--pool", "10000000"], "--pool=10000000 must be at most 1000000"),
        (["--batch", "-3"], "--batch=-3 must be at least 1"),
        (["--batch", "100000"], "--batch=100000 must be at most 4096"),
        (["--lr", "0"], r"--lr=0 must be a finite positive number, e\.g\. --lr=0\.001"),
        (["--lr", "-0.5"], "--lr=-0.5 must be a finite positive number"),
        (["--lr", "inf"], "--lr=inf must be a finite positive number"),
        (["--lr", "nan"], "--lr=nan must be a finite positive number"),
        (["--lr", "fast"], "--lr=fast must be a finite positive number"),
        (["--seed", "-1"], f"--seed=-1 must be at least 0; give an integer from 0 to {SEED_MAX}"),
        (["--seed", str(2**32)], f"--seed={2**32} must be at most {SEED_MAX}"),
        (["--seed", "x"], "--seed=x is not an integer"),
        (["--epochs", "3"], "unrecognized arguments: --epochs 3; see negrl-pretrain --help"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["--steps", "1", *args, "--out", str(out)]) == 2  # the last --steps wins
    assert re.search(message, one_error_line(capsys))
    assert list(tmp_path.iterdir()) == []


def test_missing_out_is_one_line_exit_2(capsys):
    assert main(["--steps", "1"]) == 2
    assert "the following arguments are required: --out" in one_error_line(capsys)


def test_existing_output_directory_is_never_overwritten(tmp_path, capsys):
    assert main(["--steps", "1", "--out", str(tmp_path)]) == 2
    assert "already exists" in one_error_line(capsys)


def test_output_under_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["--steps", "1", "--out", str(tmp_path / "file" / "sub" / "pre")]) == 2
    assert f"cannot be created: {tmp_path / 'file'} is a file" in one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_output_under_an_unwritable_directory_is_refused_before_training(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    # root may write anywhere, so the read-only directory is simulated: os.access is what negrl-pretrain asks.
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and os.fspath(path) != str(locked))
    assert main(["--steps", "1", "--out", str(locked / "new" / "pre")]) == 2
    assert f"cannot be created: {locked} is not writable; give a directory you can write to" in one_error_line(capsys)
    assert list(locked.iterdir()) == []


def test_non_finite_loss_stops_with_exit_1_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["--lr", "1e30", "--steps", "5", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"negrl-pretrain: error: non-finite loss nan at step \d; lower --lr", err[0])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_what_was_there_and_no_partial_checkpoint(tmp_path):
    out = tmp_path / "pre"
    out.mkdir()  # appeared while training
    (out / "mine.txt").write_text("keep")
    backbone = Backbone.random_init(load_architecture("tiny")[1], 0)
    with pytest.raises(RunFailed, match="cannot write --out=.*: it appeared during training"):
        save(backbone, {"steps": 1}, out)
    assert [p.name for p in tmp_path.iterdir()] == ["pre"] and [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("where", ["in-process", pytest.param("process", marks=pytest.mark.slow)])
def test_console_script_lr_inf_is_one_line_exit_2_and_writes_nothing(tmp_path, where, monkeypatch, capfd):
    """`python -m negrl.tools.pretrain`: its `__main__` run in this process in the fast suite (runpy; no second
    start-up of torch), as its own process in the slow one."""
    out = tmp_path / "pre"
    argv = ["--lr", "inf", "--steps", "3", "--out", str(out)]
    if where == "in-process":
        import runpy

        monkeypatch.setattr(sys, "argv", ["negrl-pretrain", *argv])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module("negrl.tools.pretrain", run_name="__main__")
        run = subprocess.CompletedProcess(argv, exit_.value.code, *capfd.readouterr())
    else:
        run = subprocess.run(
            [sys.executable, "-m", "negrl.tools.pretrain", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "negrl-pretrain: error: --lr=inf must be a finite positive number, e.g. --lr=0.001"
    ]
    assert not out.exists()


def test_architecture_comes_from_the_model_config():
    assert load_architecture("tiny-h128")[1]["hidden_size"] == 128
    with pytest.raises(NegrlError):
        load_architecture("pythia-160m")


def test_the_pretrained_checkpoint_respects_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["--model", "tiny", "--steps", "2", "--pool", "2", "--out", str(tmp_path / "pre")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pre").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "pre").iterdir()} == {0o644}
