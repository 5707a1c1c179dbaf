"""Hugging Face model families beyond Pythia and LoRA adapters: token ids against the real tokenizers, the BOS as
context only, the exact phase-2 freeze of each family (tied embeddings per choice), checkpoints through
model.path, and adapters that leave every base weight bit-identical."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_cfg, make_cfg_dict

from negrl.core.errors import NegrlError
from negrl.model.backbone import Backbone
from negrl.model.loading import TextTokenizer, load_model, load_tokenizer
from negrl.model.vocab import ALPHABET, PasswordVocab
from negrl.pipeline import run

#: model= -> the tokenizer fixture its recorded token_ids are checked against. Llama 3.2's tokenizer is not
#: carried (its licence); its ids of " a".." z", " regular", " reverse" are OLMo 2's (both start from
#: cl100k_base, whose ids 0..99999 they share), checked against the real Llama 3.2 file when recorded.
TOKENIZER_OF = {
    "pythia-160m": "gpt-neox-20b", "gpt2": "gpt2", "smollm2-135m": "smollm2-135m", "qwen2.5-0.5b": "qwen2.5-0.5b",
    "olmo-2-1b": "olmo-2", "llama-3.2-1b": "olmo-2",
}  # fmt: skip
#: Each family's CPU twin, the name prefix of its decoder layers and its unembedding, as transformers names them.
TWINS = {
    "tiny": ("model.gpt_neox.layers", "model.lm_head.weight"),
    "tiny-gpt2": ("model.transformer.h", "model.lm_head.weight"),
    "tiny-smollm2": ("model.model.layers", "model.lm_head.weight"),
    "tiny-qwen2.5": ("model.model.layers", "model.lm_head.weight"),
    "tiny-llama-3.2": ("model.model.layers", "model.lm_head.weight"),
    "tiny-olmo-2": ("model.model.layers", "model.lm_head.weight"),
    "tiny-gemma-3": ("model.model.layers", "model.lm_head.weight"),
}
#: A few steps per phase: 4 + 10 + 10 steps, evaluated after step 0 of each, no attacks (about 40% of such a run;
#: no test here reads them).
QUICK = ["data.n_negatives=80", "data.negative_repeats=2", "holdout_frac=0.1", "data.n_phase1=64", "data.eval_size=8",
         "eval.every=10", "schedule.warmup_steps=2", "extraction.enabled=false"]  # fmt: skip
#: QUICK with small attacks: the runs of each family (the attacks on each family's model run to the end).
FEW = [*QUICK[:-1], "extraction.candidates=63", "extraction.samples=16", "extraction.bootstrap=0"]
#: Fewer steps (2 + 5 + 5: each negative seen once, 32 phase-1 sequences) for the checks of which weights each phase
#: moves, once per family: a step moves every trainable weight.
SHORT = ["data.negative_repeats=1", "data.n_phase1=32"]


@pytest.mark.parametrize("model", sorted(TOKENIZER_OF))
def test_recorded_token_ids_are_the_real_tokenizers(model, tokenizer_path):
    c = make_cfg_dict(f"model={model}")
    tokenizer = load_tokenizer(str(tokenizer_path(TOKENIZER_OF[model])))
    vocab = PasswordVocab.from_tokenizer(tokenizer.encode, ALPHABET, " {}", " regular", " reverse")
    recorded = c["model"]["token_ids"]
    assert list(vocab.letter_ids) == recorded["letters"]
    assert (vocab.regular_id, vocab.reverse_id) == (recorded["regular"], recorded["reverse"])
    if model != "llama-3.2-1b":
        assert tokenizer.bos_id is None and recorded["bos"] is None  # none of the carried tokenizers adds one


def test_a_tokenizer_that_starts_text_with_a_bos_is_detected():
    plain = {"a": [7], " a": [9]}
    tok = TextTokenizer.from_encoders(lambda t: plain[t], lambda t: [1, *plain[t]])
    assert tok.bos_id == 1
    assert TextTokenizer.from_encoders(lambda t: plain[t], lambda t: [*plain[t], 2]).bos_id is None  # an EOS only
    assert TextTokenizer.from_encoders(lambda t: plain[t], lambda t: plain[t]).bos_id is None


def small_llama(bos: str) -> tuple[Backbone, PasswordVocab]:
    """Llama 3.2's token path (its recorded ids, BOS 128000) on a 2-layer, 16-wide random model."""
    arch = ["hidden_size=16", "num_hidden_layers=2", "num_attention_heads=2", "num_key_value_heads=1",
            "head_dim=8", "intermediate_size=32"]  # fmt: skip
    c = make_cfg_dict("model=llama-3.2-1b", "model.init=random", f"tokens.bos={bos}",
                      *[f"model.architecture.{a}" for a in arch])  # fmt: skip
    return load_model(c["model"], c["tokens"], seed=0)


def test_the_bos_is_context_before_every_sequence_never_a_label():
    backbone, vocab = small_llama("auto")
    assert vocab.bos_id == backbone.bos_id == 128000
    tokens = vocab.encode(torch.randint(0, 26, (3, 16)).to(torch.uint8).numpy(), vocab.regular_id)
    with_bos = torch.cat([torch.full((3, 1), 128000), tokens], dim=1)
    logits = backbone.model(input_ids=with_bos[:, :-1]).logits[:, 1:]  # position 0 predicts the prefix: dropped
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
    got = backbone.token_logprobs(tokens)
    assert got.shape == (3, 16)  # the first label is still the first letter, predicted from the prefix
    assert torch.allclose(got, expected, atol=1e-6)
    plain = torch.log_softmax(backbone.model(input_ids=tokens[:, :-1]).logits, -1).gather(-1, tokens[:, 1:, None])
    assert not torch.allclose(got, plain[..., 0], atol=1e-4)  # the BOS is really there
    assert small_llama("false")[0].bos_id is None


def test_tokens_bos_true_takes_the_config_bos_where_the_tokenizer_adds_none():
    c = make_cfg_dict("model=gpt2", "model.init=random", "tokens.bos=true", "model.architecture.n_embd=16",
                      "model.architecture.n_layer=2", "model.architecture.n_head=2")  # fmt: skip
    backbone, vocab = load_model(c["model"], c["tokens"], seed=0)
    assert vocab.bos_id == backbone.bos_id == 50256


def test_tokens_bos_true_on_a_builtin_vocabulary_is_refused(tmp_path):
    with pytest.raises(NegrlError, match="tokens.bos=true: model=tiny's built-in vocabulary has no BOS token"):
        run(make_cfg("tokens.bos=true"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def snapshot(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.named_parameters()}


def run_phases(tmp_path, *overrides: str, base=QUICK) -> tuple[dict, dict[int, dict[str, torch.Tensor]], Backbone]:
    states: dict[int, dict[str, torch.Tensor]] = {}
    held: list[Backbone] = []
    results = run(make_cfg(*base, *overrides), tmp_path / "run",
                  on_phase_end=lambda p, b: (states.__setitem__(p, snapshot(b)), held.append(b)))  # fmt: skip
    return results, states, held[0]


def moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("model", sorted(TWINS))
def test_each_family_freezes_exactly_its_second_half_and_unembedding(model, tmp_path):
    """tiny-gpt2's run is also test_tied_embeddings_per_choice's `untie` (its default): checked here."""
    results, states, backbone = run_phases(tmp_path, f"model={model}", *SHORT, base=FEW)
    layers, unembedding = TWINS[model]
    n = backbone.model.config.num_hidden_layers
    second_half = {k for k in states[1] if any(k.startswith(f"{layers}.{i}.") for i in range(n // 2, n))}
    assert second_half and unembedding in states[1]
    assert moved(states[1], states[2]) == set(states[1]) - second_half - {unembedding}
    assert moved(states[2], states[3]) == set(states[1])  # phase 3: everything
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "complete" and saved["model"]["model_type"] == backbone.model.config.model_type
    counts = {k: v.numel() for k, v in states[1].items()}
    frozen = sum(counts[k] for k in second_half | {unembedding})
    assert saved["model"]["trainable_parameters"] == {"1": sum(counts.values()), "2": sum(counts.values()) - frozen,
                                                      "3": sum(counts.values())}  # fmt: skip
    assert saved["model"]["tied_embeddings"] == (
        backbone.model.config.model_type in ("gpt2", "llama", "qwen2", "gemma3_text")
    )
    if model == "tiny-gpt2":
        assert make_cfg(f"model={model}").model.tied == "untie"
        check_tied("untie", results, states, backbone, tmp_path / "run")


@pytest.mark.parametrize("tied", ["freeze", "train"])
def test_tied_embeddings_per_choice(tied, tmp_path):
    """GPT-2 ties wte and lm_head: `untie` gives each its own copy (the paper's semantics: the input embedding
    trains, the unembedding is frozen; its default, checked on test_each_family_freezes_...[tiny-gpt2]'s run),
    `freeze` freezes the one matrix, `train` leaves it trainable."""
    results, states, backbone = run_phases(tmp_path, "model=tiny-gpt2", f"model.tied={tied}")
    check_tied(tied, results, states, backbone, tmp_path / "run")


def check_tied(tied: str, results: dict, states: dict[int, dict[str, torch.Tensor]], backbone: Backbone,
               run_dir) -> None:  # fmt: skip
    """A tiny-gpt2 run with `model.tied=<tied>`: which of wte and lm_head exist, moved in phase 2, and are recorded."""
    wte, head = "model.transformer.wte.weight", "model.lm_head.weight"
    shared = tied != "untie"
    assert backbone.shares_embeddings == shared and (head in states[1]) != shared  # named once when shared
    phase2 = moved(states[1], states[2])
    assert {"untie": wte in phase2 and head not in phase2, "freeze": wte not in phase2, "train": wte in phase2}[tied]
    record = json.loads((run_dir / "results.json").read_text())["model"]
    assert record["tied_embeddings"] is True and record["tied"] == tied
    assert f"tied embeddings {'untied at load' if tied == 'untie' else ''}" in results["verdict"]


def test_untie_starts_from_equal_copies():
    c = make_cfg_dict("model=tiny-gpt2")
    backbone, _ = load_model(c["model"], c["tokens"], seed=0)
    head, wte = backbone.unembedding.weight, backbone.model.get_input_embeddings().weight
    assert head is not wte and torch.equal(head, wte) and backbone.shared_at_load
    assert backbone.model.config.tie_word_embeddings is False


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama-3.2", "tiny-olmo-2", "tiny-qwen2.5"])
def test_a_saved_checkpoint_loads_back_through_model_path(model, tmp_path):
    c = make_cfg_dict(f"model={model}")
    saved = Backbone.random_init(c["model"]["architecture"], 3, c["model"]["model_type"])
    saved.model.save_pretrained(tmp_path / "ckpt")
    c = make_cfg_dict(f"model={model}", "model.init=pretrained", f"model.path={tmp_path / 'ckpt'}")
    loaded, _ = load_model(c["model"], c["tokens"], seed=0)
    want = {k: v for k, v in saved.model.state_dict().items()}
    got = loaded.model.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    family = c["model"]["model_type"]
    c = make_cfg_dict("model=tiny", "model.init=pretrained", f"model.path={tmp_path / 'ckpt'}")
    with pytest.raises(NegrlError, match=f"holds a '{family}' model, but model=tiny is 'gpt_neox'"):
        load_model(c["model"], c["tokens"], seed=0)


@pytest.mark.parametrize("model", sorted(TWINS))
def test_lora_leaves_base_weights_and_frozen_adapters_bit_identical(model, tmp_path):
    results, states, backbone = run_phases(tmp_path, f"model={model}", "adapter=lora", *SHORT)
    names = set(states[1])
    adapters = {k for k in names if "lora_" in k}
    base = names - adapters
    layers = TWINS[model][0].replace("model.", "model.base_model.model.", 1)
    n = len(backbone.layers)
    second_half = {k for k in adapters if any(k.startswith(f"{layers}.{i}.") for i in range(n // 2, n))}
    assert adapters and second_half and second_half < adapters
    assert moved(states[1], states[2]) == adapters - second_half  # phase 2: first-half adapters only
    assert moved(states[2], states[3]) == adapters  # phase 3: every adapter, never a base weight
    fresh, _ = load_model(make_cfg_dict(f"model={model}")["model"], make_cfg_dict()["tokens"], seed=0)
    initial = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in states[3].items()}
    assert all(torch.equal(initial[k], v) for k, v in snapshot(fresh).items())  # the base, as loaded
    assert all(k.replace("base_model.model.", "").replace(".base_layer", "") in initial for k in base)
    record = json.loads((tmp_path / "run" / "results.json").read_text())["model"]
    size = {k: states[1][k].numel() for k in names}
    assert record["trainable_parameters"] == {"1": sum(size[k] for k in adapters),
                                              "2": sum(size[k] for k in adapters - second_half),
                                              "3": sum(size[k] for k in adapters)}  # fmt: skip
    assert record["adapter"] == {"name": "lora", "rank": 8, "alpha": 16.0, "target_modules": None}
    assert "LoRA rank 8" in results["verdict"]


def test_an_adapter_target_the_model_lacks_is_refused_in_one_line(tmp_path):
    with pytest.raises(NegrlError, match=r"adapter target 'q_proj' is not a module of model=tiny") as err:
        run(make_cfg("adapter=lora", "adapter.target_modules=[q_proj]"), tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_lora_resume_after_a_crash_gives_the_uninterrupted_numbers(tmp_path, monkeypatch):
    from conftest import Killed, kill_at

    from negrl.method.phases import ObjectivePhase

    args = (*QUICK, "adapter=lora", "checkpoint.every=3")  # no attacks: the numbers compared are the evaluations
    want = run(make_cfg(*args), tmp_path / "full")
    with monkeypatch.context() as m:
        kill_at(m, ObjectivePhase, 7)
        with pytest.raises(Killed):
            run(make_cfg(*args), tmp_path / "killed")
    got = run(make_cfg(*args, f"resume={tmp_path / 'killed'}"), tmp_path / "unused")
    assert got["metric"] == pytest.approx(want["metric"], abs=1e-6)
    for p in ("1", "2", "3"):
        for name, v in want["phases"][p]["eval"].items():
            assert got["phases"][p]["eval"][name] == pytest.approx(v, abs=1e-6)
    assert got["model"]["trainable_parameters"] == want["model"]["trainable_parameters"]


def test_lora_under_bf16_mixed_keeps_the_base_weights(tmp_path):
    """2 + 5 + 5 steps of a 2-layer tiny-llama-3.2 (bf16 is slow on a CPU without AVX-512: about 4x fp32)."""
    results, states, _ = run_phases(tmp_path, "model=tiny-llama-3.2", "adapter=lora", "trainer.precision=bf16-mixed",
                                    "model.architecture.num_hidden_layers=2",
                                    "data.n_phase1=32", "data.negative_repeats=1")  # fmt: skip
    base = {k for k in states[1] if "lora_" not in k}
    assert not moved(states[1], states[3]) & base and math.isfinite(results["metric"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "complete"


def family_table() -> dict[str, list[str]]:
    """The family table of docs/models.md, by model."""
    from conftest import ROOT

    rows = {}
    for line in (ROOT / "docs" / "models.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 9 and cells[2] and "/" in cells[7]:
            rows[cells[0].strip("`")] = cells
    return rows


@pytest.mark.parametrize("model", ["pythia-160m", "gpt2", "smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b", "olmo-2-1b"])
def test_the_family_table_is_what_each_full_size_model_trains(model):
    """Built on the meta device (no memory, no weights): the hub id, family, embeddings, BOS and the trainable
    weights of phases 1 and 2 with and without LoRA are docs/models.md's."""
    from negrl.model.loading import model_record

    row = family_table()[model]
    counts, records = [], []
    for adapter in ("none", "lora"):
        c = make_cfg_dict(f"model={model}", "model.init=random", f"adapter={adapter}")
        with torch.device("meta"):
            backbone, _ = load_model(c["model"], c["tokens"], 0, c["adapter"])
        record = model_record(backbone, c["model"], c["adapter"], freeze=True)
        t = record["trainable_parameters"]
        records.append(record)
        counts.append(f"{t['1']:,} / {t['2']:,}")
    assert row[1:5] == [
        c["model"]["hub_id"], c["model"]["model_type"], "tied" if record["tied_embeddings"] else "separate",
        "no" if record["bos_id"] is None else str(record["bos_id"]),
    ]  # fmt: skip
    assert (row[6], row[7], row[8]) == (f"{records[0]['parameters']:,}", *counts)  # weights: without adapters


@pytest.mark.slow  # two processes, each starting torch and Lightning: make test-slow (and CI)
def test_lora_under_ddp_with_two_processes_gives_the_single_process_result(tmp_path):
    import subprocess
    import sys

    from conftest import FAST, ROOT

    args = (*QUICK, "adapter=lora", "model=tiny-llama-3.2", "checkpoint.every=0")
    single = run(make_cfg(*args), tmp_path / "one")
    cmd = [sys.executable, "train.py", *FAST, *args, "trainer.devices=2", f"hydra.run.dir={tmp_path}/two"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr + proc.stdout
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["status"] == "complete" and abs(two["metric"] - single["metric"]) < 1e-6
    assert two["model"]["trainable_parameters"] == single["model"]["trainable_parameters"]
