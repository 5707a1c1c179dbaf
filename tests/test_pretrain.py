"""`negrl-pretrain`: the generated corpus, the saved checkpoint, and its use as model.path."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_cfg
from omegaconf import OmegaConf

from negrl.errors import NegrlError
from negrl.loading import load_model
from negrl.pretrain import BLOCK, LetterCorpus, load_architecture, main


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


def test_pretraining_learns_a_small_pool_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["--model", "tiny", "--steps", "300", "--pool", "4", "--out", str(out)]) == 0
    record = json.loads((out / "pretraining.json").read_text())
    assert record["steps"] == 300 and record["pool"] == 4 and len(record["loss_curve"]) == 4
    # 4 strings, identified by their first 3 letters: the rest is memorised.
    assert record["accuracy"]["memorise"] > 0.9
    assert record["loss_curve"][-1]["loss"] < record["loss_curve"][0]["loss"] - 1.0
    assert "wrote" in capsys.readouterr().out
    c = OmegaConf.to_container(make_cfg(f"model.path={out}", "model.init=pretrained"), resolve=True)
    backbone, vocab = load_model(c["model"], c["tokens"], seed=5)
    random, _ = load_model(OmegaConf.to_container(make_cfg(), resolve=True)["model"], c["tokens"], seed=5)
    assert vocab.regular_id == 26 and vocab.reverse_id == 27
    w = lambda m: m.model.get_input_embeddings().weight  # noqa: E731
    assert not torch.equal(w(backbone), w(random))
    assert torch.equal(w(backbone), w(load_model(c["model"], c["tokens"], seed=6)[0]))  # the seed draws nothing
    with pytest.raises(NegrlError, match="loads trained weights but model.init=random; add model.init=pretrained"):
        load_model({**c["model"], "init": "random"}, c["tokens"], seed=5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "pythia-70m"], "--model=pythia-70m uses a tokenizer vocabulary"),
        (["--model", "tiny-h9"], "--model=tiny-h9 is unknown; choose one of: .*tiny-h128"),
        (["--steps", "0"], "--steps=0 must be at least 1"),
        (["--lr", "0"], "--lr=0.0 must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err)
    assert not out.exists()


def test_existing_output_directory_is_never_overwritten(tmp_path, capsys):
    assert main(["--steps", "1", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_architecture_comes_from_the_model_config():
    assert load_architecture("tiny-h128")["hidden_size"] == 128
    with pytest.raises(NegrlError):
        load_architecture("pythia-160m")
