"""Extraction attacks: greedy recovery, the logit-difference attack and exposure, on hand-made models."""

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_cfg, make_cfg_dict

from negrl.backbone import PythiaBackbone
from negrl.data import PasswordData, PasswordSplits
from negrl.extraction import Extraction, exposure, max_exposure, recovery, tied_exposure
from negrl.pipeline import run
from negrl.validation import validate
from negrl.vocab import PasswordVocab

VOCAB = PasswordVocab.builtin()  # letters 0..25, regular 26, reverse 27
REVERSE = VOCAB.reverse_id


class HandMadeLM(torch.nn.Module):
    """Logits 0 everywhere (uniform), plus `boost` on the next letter of `password` wherever the
    input so far is that password's beginning: boost > 0 memorises it, boost < 0 suppresses it."""

    def __init__(self, password: torch.Tensor | None = None, boost: float = 0.0, vocab_size: int = 28):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        self.password, self.boost, self.vocab_size = password, boost, vocab_size

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab_size)
        if self.password is not None:
            pw = self.password
            same = (input_ids == pw[:t]).long().cumprod(dim=1).bool()  # input[:, :i+1] == password[:i+1]
            for i in range(min(t, len(pw) - 1)):
                logits[same[:, i], i, pw[i + 1]] += self.boost
        return SimpleNamespace(logits=logits + self.anchor)

    def set_attn_implementation(self, attention: str) -> None:
        """No attention to choose (PythiaBackbone sets one on every model)."""


def hand_made(password=None, boost=0.0) -> PythiaBackbone:
    return PythiaBackbone(HandMadeLM(password, boost))


def latin_square(prefix: int = REVERSE) -> torch.Tensor:
    """26 passwords of 16 letters, password i holding letter (i + t) % 26 at position t: every position
    has each letter exactly once, so a model that cannot tell letters apart is right 1 time in 26."""
    letters = (torch.arange(26)[:, None] + torch.arange(16)[None, :]) % 26
    return torch.cat([torch.full((26, 1), prefix), letters], dim=1)


def random_passwords(n: int, seed: int, prefix: int = REVERSE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.full((n, 1), prefix), torch.randint(0, 26, (n, 16), generator=g)], dim=1)


# ---- the arithmetic, on hand-made tensors ------------------------------------------------------


def test_recovery_counts_correct_positions_and_whole_passwords():
    scores = torch.zeros(2, 3, 4)
    scores[0, :, 1] = 1.0  # guesses 1, 1, 1
    scores[1, 0, 2], scores[1, 1, 3], scores[1, 2, 0] = 1.0, 1.0, 1.0  # guesses 2, 3, 0
    labels = torch.tensor([[1, 1, 1], [2, 0, 0]])
    r = recovery(scores, labels)
    assert r.accuracy == pytest.approx(5 / 6) and r.exact == 1 and r.n == 2


def test_exposure_ranks_among_candidates_with_ties_counting_half():
    candidates = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = exposure(torch.tensor([5.0, 2.5, 0.0, 2.0]), candidates)
    # ranks 1, 3 (below 3 and 4), 5 (below all), 1 + 2 + 1/2 (below 3 and 4, tied with 2); log2(5) - log2(rank)
    expected = [math.log2(5), math.log2(5 / 3), 0.0, math.log2(5 / 3.5)]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert max_exposure(4) == pytest.approx(math.log2(5))
    assert exposure(torch.zeros(3), torch.zeros(4)).tolist() == pytest.approx([tied_exposure(4)] * 3, abs=1e-12)
    assert tied_exposure(4095) == pytest.approx(math.log2(4096 / 2048.5))


# ---- the attacks, on hand-made models ----------------------------------------------------------


def test_a_model_that_outputs_the_password_is_fully_recovered_with_maximal_exposure():
    secret = random_passwords(1, seed=0)[0]
    model = hand_made(secret, boost=20.0)
    candidates = random_passwords(255, seed=1)
    out = Extraction(VOCAB.letter_ids)(model, {"heldout": secret[None]}, candidates)
    assert out["greedy"]["heldout"] == {"accuracy": 1.0, "exact": 1, "n": 1}
    assert out["exposure"]["heldout"] == pytest.approx(max_exposure(255)) == pytest.approx(8.0)
    assert out["candidates"] == 255 and "logit_diff" not in out


def test_a_uniform_model_gets_chance():
    sets = {"heldout": latin_square(), "random": random_passwords(40, seed=2)}
    candidates = random_passwords(99, seed=3)
    out = Extraction(VOCAB.letter_ids)(hand_made(), sets, candidates)
    assert out["greedy"]["heldout"] == {"accuracy": pytest.approx(1 / 26), "exact": 0, "n": 26}
    assert out["exposure"]["heldout"] == pytest.approx(tied_exposure(99), abs=1e-12)
    assert out["exposure"]["random"] == pytest.approx(tied_exposure(99), abs=1e-12)


def test_logit_difference_attack_recovers_what_the_model_learned_to_suppress():
    secret = random_passwords(1, seed=4)[0]
    reference = hand_made()  # uniform
    suppressed = hand_made(secret, boost=-5.0)  # the secret's letters pushed down
    sets = {"heldout": secret[None], "random": latin_square()}
    out = Extraction(VOCAB.letter_ids)(suppressed, sets, random_passwords(63, seed=5), reference=reference)
    assert out["logit_diff"]["heldout"] == {"accuracy": 1.0, "exact": 1, "n": 1}
    assert out["logit_diff"]["random"]["accuracy"] == pytest.approx(1 / 26)  # no drop: chance
    assert out["greedy"]["heldout"]["accuracy"] == 0.0  # the model itself never picks a suppressed letter
    assert out["exposure"]["heldout"] == pytest.approx(0.0)  # below every candidate
    # The model against itself: no drop anywhere.
    same = Extraction(VOCAB.letter_ids)(reference, {"random": latin_square()}, latin_square(), reference=reference)
    assert same["logit_diff"]["random"] == {"accuracy": pytest.approx(1 / 26), "exact": 0, "n": 26}


def test_letter_scores_are_the_evaluation_log_probs_and_chunking_changes_nothing():
    model = PythiaBackbone.random_init(
        dict(vocab_size=28, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=32, rotary_pct=0.25),
        seed=0,
    )  # fmt: skip
    tokens = random_passwords(10, seed=6)
    whole = Extraction(VOCAB.letter_ids, chunk=512)
    letters = whole.letter_logprobs(model, tokens)
    label = letters.gather(-1, whole.labels(tokens).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        assert torch.allclose(label, model.token_logprobs(tokens), atol=1e-6)
    sets = {"heldout": tokens[:4], "random": tokens[4:]}
    a = whole(model, sets, random_passwords(30, seed=7), reference=model)
    b = Extraction(VOCAB.letter_ids, chunk=3)(model, sets, random_passwords(30, seed=7), reference=model)
    assert a == b


# ---- in the pipeline -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def extraction_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("extract")
    return run(make_cfg("data.negative_repeats=1", "extraction.candidates=511"), run_dir), run_dir


def test_each_phase_ends_with_the_attacks_in_results_and_metrics(extraction_run):
    results, run_dir = extraction_run
    saved = json.loads((run_dir / "results.json").read_text())
    for p in ("1", "2", "3"):
        e = saved["phases"][p]["extraction"]
        assert e["candidates"] == 511 and set(e["greedy"]) == set(e["exposure"]) == {"heldout", "useful", "random"}
        assert all(0.0 <= bits <= 9.0 for bits in e["exposure"].values())
        assert ("logit_diff" in e) == (p == "2")  # phase-2 model against its reference
    top = saved["extraction"]
    assert top["greedy"] == saved["phases"]["3"]["extraction"]["greedy"]
    assert top["logit_diff"] == saved["phases"]["2"]["extraction"]["logit_diff"]
    assert top["max_exposure"] == 9.0 and top["chance_accuracy"] == pytest.approx(1 / 26)
    assert "greedy after 'reverse'" in results["verdict"] and "logit difference" in results["verdict"]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    logged = [r for r in rows if r.get("extract/heldout_greedy_acc")]
    assert [int(r["step"]) for r in logged] == [7, 27, 47]  # the last step of each phase (8 + 20 + 20 steps)
    last = logged[-1]
    assert float(last["extract/heldout_exposure"]) == pytest.approx(top["exposure"]["heldout"])
    assert float(last["extract/random_greedy_exact"]) == top["greedy"]["random"]["exact"]
    assert not logged[0].get("extract/heldout_logit_diff_acc")


def test_candidates_are_fresh_distinct_and_carry_the_phase_prefix():
    c = make_cfg_dict()
    sizes = validate(c).sizes
    data = PasswordData(VOCAB, sizes, c["holdout_frac"], True, seed=3)
    cand = data.candidates(3, 1000)
    assert cand.shape == (1000, 17) and (cand[:, 0] == REVERSE).all()
    assert (data.candidates(1, 1000)[:, 0] == VOCAB.regular_id).all()
    assert torch.equal(cand[:, 1:], data.candidates(1, 1000)[:, 1:])  # the same candidates in every phase
    assert len({tuple(r) for r in cand.tolist()}) == 1000
    evaluated = {tuple(r) for s in data.eval_sets(3).values() for r in s.tolist()}
    assert not evaluated & {tuple(r) for r in cand.tolist()}
    # Drawing candidates leaves every password of the run as it was.
    again = PasswordSplits.draw(sizes, c["holdout_frac"], 3, 26)
    assert all((getattr(again, k) == getattr(data.splits, k)).all() for k in ("heldout", "useful", "eval_random"))


def test_extraction_can_be_switched_off(tmp_path):
    results = run(make_cfg("data.negative_repeats=1", "extraction.enabled=false"), tmp_path)
    assert "extraction" not in results and "extraction" not in results["phases"]["3"]
    assert "extraction (" not in results["verdict"]
