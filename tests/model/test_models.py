"""The Pythia token path, checkpoint loading, and the tiny built-in model."""

import shutil

import pytest
import torch
from conftest import make_cfg_dict

from negrl.core.errors import NegrlError
from negrl.model.backbone import Backbone
from negrl.model.loading import load_model, load_tokenizer
from negrl.model.vocab import ALPHABET, PasswordVocab

SPEC_LETTER_IDS = {
    "a": 247, "b": 270, "c": 260, "d": 277, "e": 299, "f": 269, "g": 305, "h": 288, "i": 891, "j": 480,
    "k": 465, "l": 298, "m": 278, "n": 295, "o": 258, "p": 268, "q": 2805, "r": 391, "s": 256, "t": 246,
    "u": 1484, "v": 362, "w": 259, "x": 1269, "y": 340, "z": 1182,
}  # fmt: skip


def test_gpt_neox_tokenizer_gives_specs_ids(tokenizer_json):
    encode = load_tokenizer(str(tokenizer_json)).encode
    vocab = PasswordVocab.from_tokenizer(encode, ALPHABET, " {}", " regular", " reverse")
    assert dict(zip(ALPHABET, vocab.letter_ids)) == SPEC_LETTER_IDS
    assert (vocab.regular_id, vocab.reverse_id) == (3963, 8107)


def test_recorded_pythia_ids_equal_the_tokenizers(tokenizer_json):
    c = make_cfg_dict("model=pythia-160m")
    assert c["model"]["token_ids"]["letters"] == [SPEC_LETTER_IDS[ch] for ch in ALPHABET]
    assert (c["model"]["token_ids"]["regular"], c["model"]["token_ids"]["reverse"]) == (3963, 8107)


def test_multi_token_prefix_is_an_error(tokenizer_json):
    encode = load_tokenizer(str(tokenizer_json)).encode
    with pytest.raises(NegrlError, match="'regularly backwards' is .* tokens .* change tokens.regular_prefix"):
        PasswordVocab.from_tokenizer(encode, ALPHABET, " {}", "regularly backwards", " reverse")


def test_random_pythia_checkpoint_loads_back_through_model_path(tmp_path, tokenizer_json):
    """A pythia-shaped (full 50304 vocabulary, small width) random model saved with the real tokenizer."""
    arch = dict(make_cfg_dict("model=pythia-70m")["model"]["architecture"], hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64)  # fmt: skip
    saved = Backbone.random_init(arch, seed=0)
    saved.model.save_pretrained(tmp_path)
    shutil.copy(tokenizer_json, tmp_path / "tokenizer.json")
    shape = [f"model.architecture.{k}={arch[k]}" for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")]
    c = make_cfg_dict(
        "model=pythia-70m", *shape, f"model.architecture.intermediate_size={arch['intermediate_size']}",
        f"model.path={tmp_path}", f"model.tokenizer={tmp_path / 'tokenizer.json'}",
    )  # fmt: skip
    backbone, vocab = load_model(c["model"], c["tokens"], seed=1)
    assert vocab.letter_ids[0] == 247 and vocab.reverse_id == 8107
    for (name, a), b in zip(saved.state_dict().items(), backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(backbone.layers) == 2 and backbone.unembedding.weight.shape == (50304, 32)


def test_offline_hub_without_cache_names_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    c = make_cfg_dict("model=pythia-160m")
    with pytest.raises(NegrlError) as err:
        load_model(c["model"], c["tokens"], seed=0)
    msg = str(err.value)
    assert "EleutherAI/pythia-160m" in msg and "model.path=DIR" in msg and "model.init=random" in msg
    assert "\n" not in msg


def test_unreachable_hub_fails_fast_in_one_line_before_torch_is_imported(tmp_path):
    """No HF_HUB_OFFLINE, but the hub endpoint refuses connections and the cache is empty: one line, exit 2, nothing
    written, and torch never imported (train.py checks the model before it loads torch and the model code)."""
    import os
    import subprocess
    import sys
    import time

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), WANDB_MODE="offline")
    argv = ["train.py", "model=pythia-160m", "data=small", "wandb.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    probe = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    elapsed = time.perf_counter() - started
    assert proc.stdout.split() == ["2", "False"], proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "warning" not in ln]
    assert len(lines) == 1 and lines[0].startswith("negrl: error: cannot load EleutherAI/pythia-160m"), proc.stderr
    assert "(unreachable: cache only)" in lines[0] and "model.init=random" in lines[0]
    assert not (tmp_path / "run").exists()
    print(f"failed in {elapsed:.1f} s")  # the figure, not an assertion


def test_random_init_is_seeded_and_tiny_has_builtin_vocab():
    c = make_cfg_dict()
    a, vocab = load_model(c["model"], c["tokens"], seed=0)
    b, _ = load_model(c["model"], c["tokens"], seed=0)
    other, _ = load_model(c["model"], c["tokens"], seed=1)
    assert vocab == PasswordVocab.builtin()
    w = lambda m: m.model.get_input_embeddings().weight  # noqa: E731
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(other))
    assert a.model.config.hidden_dropout == 0 and a.model.config.attention_dropout == 0


def test_token_logprobs_are_a_full_vocabulary_log_softmax():
    c = make_cfg_dict()
    backbone, _ = load_model(c["model"], c["tokens"], seed=0)
    tokens = torch.randint(0, 26, (3, 17))
    expected = torch.log_softmax(backbone.model(input_ids=tokens[:, :-1]).logits, -1).gather(-1, tokens[:, 1:, None])[
        ..., 0
    ]
    assert torch.allclose(backbone.token_logprobs(tokens), expected, atol=1e-6)
    assert backbone.token_logprobs(tokens).shape == (3, 16)


def test_bad_model_path_is_a_one_line_error(tmp_path):
    c = make_cfg_dict("model=pythia-70m", f"model.path={tmp_path / 'nope'}")
    with pytest.raises(NegrlError, match="model.path=.*nope is not a directory"):
        load_model(c["model"], c["tokens"], seed=0)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    c = make_cfg_dict("model=pythia-70m", f"model.path={tmp_path}")
    with pytest.raises(NegrlError, match="holds a 'llama' model, but model=pythia-70m is 'gpt_neox'"):
        load_model(c["model"], c["tokens"], seed=0)
