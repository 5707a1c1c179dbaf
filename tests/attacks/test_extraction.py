"""Extraction attacks: greedy recovery, the logit-difference attack and exposure, on hand-made models."""

import csv
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import FEW_STEPS, make_cfg, make_cfg_dict
from scipy.stats import mannwhitneyu

from negrl.attacks import generation, membership
from negrl.attacks.extraction import AttackSettings, Extraction, exposure, recovery, strength
from negrl.attacks.lens import letter_lens
from negrl.core.stats import chance_exposure, max_exposure
from negrl.method.data import PasswordData, PasswordSplits
from negrl.model.backbone import Backbone
from negrl.model.vocab import PasswordVocab
from negrl.pipeline import run
from negrl.run.validation import validate

VOCAB = PasswordVocab.builtin()  # letters 0..25, regular 26, reverse 27
REVERSE = VOCAB.reverse_id


class HandMadeLM(torch.nn.Module):
    """Logits 0 everywhere (uniform), plus `boost` on the next letter of each of `passwords` wherever the input so
    far is that password's beginning (plus log of how many continue so): boost > 0 memorises them, boost < 0
    suppresses them."""

    def __init__(self, passwords: torch.Tensor | None = None, boost: float = 0.0, vocab_size: int = 28):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        if passwords is not None and passwords.dim() == 1:
            passwords = passwords[None]
        self.passwords, self.boost, self.vocab_size = passwords, boost, vocab_size

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> SimpleNamespace:
        b, t = input_ids.shape
        counts = torch.zeros(b, t, self.vocab_size)  # the passwords that continue each input with each token
        for pw in [] if self.passwords is None else self.passwords:
            same = (input_ids == pw[:t]).long().cumprod(dim=1).bool()  # input[:, :i+1] == password[:i+1]
            for i in range(min(t, len(pw) - 1)):
                counts[same[:, i], i, pw[i + 1]] += 1
        # boost + log(count): among the memorised continuations, each password equally likely
        logits = torch.where(counts > 0, self.boost + counts.clamp(min=1).log(), 0.0)
        return SimpleNamespace(logits=(logits + self.anchor)[:, -logits_to_keep:])

    def set_attn_implementation(self, attention: str) -> None:
        """No attention to choose (Backbone sets one on every model)."""


def hand_made(passwords=None, boost=0.0) -> Backbone:
    return Backbone(HandMadeLM(passwords, boost))


#: The attacks' settings of the hand-made tests (hand-made models have no layers: no logit lens).
SETTINGS = AttackSettings(candidates=255, samples=64, min_k=0.2, bootstrap=200, seed=0)


def attacks(chunk: int = 512, lens: bool = False, **settings) -> Extraction:
    return Extraction(VOCAB.letter_ids, 16, replace(SETTINGS, **settings), chunk=chunk, lens=lens)


def tiny_model(layers: int = 2, seed: int = 0) -> Backbone:
    return Backbone.random_init(
        dict(vocab_size=28, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=32, rotary_pct=0.25),
        seed=seed,
    )  # fmt: skip


def latin_square(prefix: int = REVERSE) -> torch.Tensor:
    """26 passwords of 16 letters, password i holding letter (i + t) % 26 at position t: every position
    has each letter exactly once, so a model that cannot tell letters apart is right 1 time in 26."""
    letters = (torch.arange(26)[:, None] + torch.arange(16)[None, :]) % 26
    return torch.cat([torch.full((26, 1), prefix), letters], dim=1)


def random_passwords(n: int, seed: int, prefix: int = REVERSE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.full((n, 1), prefix), torch.randint(0, 26, (n, 16), generator=g)], dim=1)


# ---- the arithmetic, on hand-made tensors ------------------------------------------------------


def test_recovery_counts_strictly_best_letters_whole_passwords_and_positions():
    scores = torch.zeros(3, 3, 4)
    scores[0, :, 1] = 1.0  # guesses 1, 1, 1
    scores[1, 0, 2], scores[1, 1, 3], scores[1, 2, 0] = 1.0, 1.0, 1.0  # guesses 2, 3, 0
    labels = torch.tensor([[1, 1, 1], [2, 0, 0], [0, 0, 0]])  # row 2: all letters tied, so nothing recovered
    r = recovery(scores, labels, length=3)
    assert r.accuracy == pytest.approx(5 / 9) and r.greedy_in_set == 1 and r.n == 3
    assert r.position_accuracy == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    # strengths 1 (all right), 1/3 (right from the third letter on: k = 2), 0 (nothing recovered)
    assert r.strength == pytest.approx(4 / 9)
    no_prefix = recovery(scores, labels, length=4)  # the first of 4 letters is given, not predicted: k + 1
    assert no_prefix.position_accuracy[0] is None and no_prefix.strength == pytest.approx((3 / 4 + 1 / 4 + 0) / 3)


def test_extraction_strength_is_one_minus_the_shortest_prefix_that_greedy_completes():
    t, f = True, False
    correct = torch.tensor([[t, t, t, t], [f, t, t, t], [t, f, t, t], [t, t, t, f], [f, f, f, f]])
    assert strength(correct, 4).tolist() == pytest.approx([1.0, 3 / 4, 2 / 4, 0.0, 0.0])
    assert strength(correct, 5).tolist() == pytest.approx([4 / 5, 3 / 5, 2 / 5, 0.0, 0.0])  # one letter given


def test_exposure_ranks_among_candidates_with_ties_counting_against_the_password():
    candidates = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = exposure(torch.tensor([5.0, 2.5, 0.0, 2.0]), candidates)
    # ranks 1, 3 (below 3 and 4), 5 (below all), 4 (tied with 2: counted as above it, as TF Privacy does)
    expected = [math.log2(5), math.log2(5 / 3), 0.0, math.log2(5 / 4)]
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert max_exposure(4) == pytest.approx(math.log2(5))
    assert exposure(torch.zeros(3), torch.zeros(4)).tolist() == [0.0, 0.0, 0.0]  # tied with all: the last rank


def test_non_finite_scores_give_nan_exposure_never_the_maximum():
    candidates = torch.tensor([1.0, 2.0, 3.0])
    got = exposure(torch.tensor([float("nan"), float("inf"), float("-inf"), 2.5]), candidates)
    assert math.isnan(got[0]) and math.isnan(got[1]) and math.isnan(got[2]) and got[3] == pytest.approx(1.0)
    assert exposure(torch.tensor([5.0, 0.0]), torch.tensor([1.0, float("nan")])).isnan().all()


def test_chance_exposure_is_the_mean_and_spread_of_a_uniformly_random_rank():
    c = chance_exposure(4095)
    ranks = torch.arange(1, 4097, dtype=torch.float64)
    bits = 12 - torch.log2(ranks)
    assert c.mean == pytest.approx(float(bits.mean()), abs=1e-12) == pytest.approx(1.4409, abs=1e-4)
    assert c.std == pytest.approx(float(bits.std(unbiased=False)), abs=1e-12) == pytest.approx(1.4353, abs=1e-4)
    assert chance_exposure(1).mean == pytest.approx(0.5) and chance_exposure(10**6).mean == pytest.approx(
        math.log2(math.e), abs=1e-3
    )
    # Passwords scored like the candidates (no memorisation): their mean exposure is this chance level.
    g = torch.Generator().manual_seed(0)
    sampled = exposure(torch.randn(20000, generator=g), torch.randn(4095, generator=g))
    assert float(sampled.mean()) == pytest.approx(c.mean, abs=4 * c.std / math.sqrt(20000))


def test_membership_scores_by_hand():
    ll = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0], [-1.0, -1.0, -1.0, -1.0, -9.0]])
    assert membership.loss_scores(ll).tolist() == pytest.approx([3.0, 2.6])
    assert membership.min_k_scores(ll, 0.2).tolist() == pytest.approx([5.0, 9.0])  # int(0.2 * 5) = 1 token
    assert membership.min_k_scores(ll, 0.4).tolist() == pytest.approx([4.5, 5.0])
    assert membership.min_k_scores(ll, 0.01).tolist() == pytest.approx([5.0, 9.0])  # at least one token
    assert membership.reference_scores(ll, ll + 1).tolist() == pytest.approx([1.0, 1.0])


def test_roc_auc_is_the_probability_a_member_scores_higher_ties_half():
    members, nonmembers = torch.tensor([0.9, 0.4, 0.4, 0.1]), torch.tensor([0.4, 0.2, 0.0])
    pairs = [(m > n) + 0.5 * (m == n) for m in members.tolist() for n in nonmembers.tolist()]
    assert membership.roc_auc(members, nonmembers) == pytest.approx(sum(pairs) / len(pairs))
    assert membership.roc_auc(torch.ones(5), torch.zeros(5)) == 1.0
    assert membership.roc_auc(torch.zeros(5), torch.zeros(5)) == 0.5
    assert math.isnan(membership.roc_auc(torch.tensor([float("nan"), 1.0]), torch.zeros(2)))
    # The bootstrap's Mann-Whitney U / (n1 n0) is the same number.
    assert mannwhitneyu(members.numpy(), nonmembers.numpy()).statistic / 12 == pytest.approx(sum(pairs) / 12)


@pytest.mark.parametrize("shift", [0.0, 36.0, 40.0, 1e4])
def test_roc_auc_reads_raw_scores_at_any_scale(shift):
    """Scores are nats, not probabilities or logits: a shift of every score leaves the AUC as it is (a sigmoid
    first, as torchmetrics' binary_auroc applies to scores outside [0, 1], ties them all above about 37)."""
    members, nonmembers = torch.tensor([5.0, 4.2, 4.0, 3.1]), torch.tensor([4.0, 3.0, 2.5])
    assert membership.roc_auc(members + shift, nonmembers + shift) == 10.5 / 12
    assert membership.roc_auc(members + shift + 9, nonmembers + shift) == 1.0
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, generator=g, dtype=torch.float64) + 0.5, torch.randn(64, generator=g, dtype=torch.float64)
    interval = membership.auc_interval(a + shift, b + shift, n_boot=200, seed=3)
    assert interval == membership.auc_interval(a, b, n_boot=200, seed=3)  # same AUC and interval at any scale
    assert interval.low <= interval.auc <= interval.high


def test_bootstrap_interval_is_seeded_and_covers_chance_for_indistinguishable_sets():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(128, generator=g), torch.randn(128, generator=g)
    one = membership.auc_interval(a, b, n_boot=500, seed=7)
    assert one == membership.auc_interval(a, b, n_boot=500, seed=7)
    assert one != membership.auc_interval(a, b, n_boot=500, seed=8)
    assert one.low < one.auc < one.high and 0.1 < one.high - one.low < 0.2  # about 4 standard errors over 128 + 128
    # Members and non-members from one distribution: the 95% interval holds chance about 95% of the time.
    covered = [membership.auc_interval(torch.randn(32, generator=g), torch.randn(32, generator=g), 400, seed)
               for seed in range(100)]  # fmt: skip
    assert 0.85 <= sum(c.low <= 0.5 <= c.high for c in covered) / 100 <= 1.0
    none = membership.auc_interval(a, b, n_boot=0, seed=7)
    assert none.auc == one.auc and math.isnan(none.low) and math.isnan(none.high)
    bad = membership.auc_interval(torch.tensor([float("inf"), 1.0]), b, n_boot=50, seed=7)
    assert math.isnan(bad.auc) and math.isnan(bad.low)


# ---- the attacks, on hand-made models ----------------------------------------------------------


def test_a_model_that_outputs_the_password_is_fully_recovered_with_maximal_exposure():
    secret = random_passwords(1, seed=0)[0]
    model = hand_made(secret, boost=20.0)
    candidates = random_passwords(255, seed=1)
    out = attacks()(model, {"heldout": secret[None], "random": random_passwords(8, seed=9)}, candidates)
    held = out["greedy"]["heldout"]
    assert (held["accuracy"], held["greedy_in_set"], held["n"], held["strength"]) == (1.0, 1, 1, 1.0)
    assert held["position_accuracy"] == [1.0] * 16
    assert out["exposure"]["heldout"] == pytest.approx(max_exposure(255)) == pytest.approx(8.0)
    assert out["candidates"] == 255 and "logit_diff" not in out and "reference" not in out["membership"]
    hits = out["generation"]["hits"]
    assert hits["greedy"] == {"heldout": 1, "random": 0} and hits["beam"]["heldout"] == 1
    assert out["membership"]["loss"]["heldout"]["auc"] == 0.0  # memorised: more likely than random, not less


def test_a_uniform_model_gets_chance():
    sets = {"heldout": latin_square(), "useful": latin_square(), "random": random_passwords(40, seed=2)}
    candidates = random_passwords(99, seed=3)
    out = attacks()(hand_made(), sets, candidates)
    held = out["greedy"]["heldout"]
    assert held["accuracy"] == 0.0 and held["strength"] == 0.0 and held["greedy_in_set"] == 0  # all ties
    assert out["exposure"]["heldout"] == out["exposure"]["random"] == 0.0  # tied with every candidate
    for attack in ("loss", "min_k"):
        auc = out["membership"][attack]["heldout"]
        assert auc["auc"] == 0.5 and auc["low"] <= 0.5 <= auc["high"]
    assert out["generation"]["hits"]["sampled"] == {"heldout": 0, "useful": 0, "random": 0}


def test_negatives_scored_lower_than_random_get_auc_one_for_the_loss_attack():
    negatives = random_passwords(24, seed=10)
    suppressed, reference = hand_made(negatives, boost=-5.0), hand_made()
    sets = {"heldout": negatives[:12], "useful": negatives[12:], "random": random_passwords(24, seed=11)}
    out = attacks()(suppressed, sets, random_passwords(63, seed=12), reference=reference)
    for attack in ("loss", "min_k", "reference"):
        assert out["membership"][attack]["heldout"] == {"auc": 1.0, "low": 1.0, "high": 1.0}
        assert out["membership"][attack]["useful"]["auc"] == 1.0


def test_generation_finds_every_memorised_password_where_greedy_finds_one():
    memorised = random_passwords(24, seed=13)
    model = hand_made(memorised, boost=20.0)
    sets = {"heldout": memorised, "random": random_passwords(24, seed=14)}
    before = torch.get_rng_state()
    out = attacks(samples=256)(model, sets, random_passwords(31, seed=15))
    assert torch.equal(before, torch.get_rng_state())  # sampling has its own generator
    hits = out["generation"]["hits"]
    assert hits["beam"] == {"heldout": 24, "random": 0}  # every memorised password
    assert 20 <= hits["sampled"]["heldout"] <= 24 and hits["sampled"]["random"] == 0
    assert hits["greedy"]["heldout"] == 1 and out["generation"]["distinct"]["greedy"] == 1
    # Teacher-forced greedy recovery counts at most the one output of greedy decoding.
    assert out["greedy"]["heldout"]["greedy_in_set"] <= 1
    again = attacks(samples=256)(model, sets, random_passwords(31, seed=15))
    assert again["generation"] == out["generation"]  # seeded


def test_decoders_without_a_prefix_start_from_every_first_letter():
    memorised = random_passwords(3, seed=16)[:, 1:]  # no prefix: 16 letters
    step = generation.decoder(hand_made(memorised, boost=20.0), torch.tensor(VOCAB.letter_ids), 512)
    start, letters = torch.empty(0, dtype=torch.long), torch.tensor(VOCAB.letter_ids)
    greedy = generation.greedy(step, start, letters, 16)
    assert greedy.shape == (26, 16) and generation.hits(greedy, memorised) == 3
    assert generation.hits(generation.beam(step, start, letters, 16, width=3), memorised) == 3
    sampled = generation.sample(step, start, letters, 16, 50, torch.Generator().manual_seed(0))
    assert sampled.shape == (50, 16)


def test_logit_difference_attack_recovers_what_the_model_learned_to_suppress():
    secret = random_passwords(1, seed=4)[0]
    reference = hand_made()  # uniform
    suppressed = hand_made(secret, boost=-5.0)  # the secret's letters pushed down
    sets = {"heldout": secret[None], "random": latin_square()}
    out = attacks()(suppressed, sets, random_passwords(63, seed=5), reference=reference)
    held = out["logit_diff"]["heldout"]
    assert (held["accuracy"], held["greedy_in_set"], held["strength"]) == (1.0, 1, 1.0)
    # Elsewhere no drop (all ties, nothing recovered) but where a password starts like the secret: 1 letter of 416.
    assert out["logit_diff"]["random"]["accuracy"] == pytest.approx(1 / 416)
    assert out["greedy"]["heldout"]["accuracy"] == 0.0  # the model itself never picks a suppressed letter
    assert out["exposure"]["heldout"] == pytest.approx(0.0)  # below every candidate


def test_letter_scores_are_the_evaluation_log_probs_and_chunking_changes_nothing():
    model = tiny_model()
    tokens = random_passwords(10, seed=6)
    whole = attacks(lens=True)
    letters = whole.letter_logprobs(model, tokens)
    label = letters.gather(-1, whole.labels(tokens).unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        assert torch.allclose(label, model.token_logprobs(tokens), atol=1e-6)
    sets = {"heldout": tokens[:3], "useful": tokens[3:6], "random": tokens[6:]}
    a = whole(model, sets, random_passwords(30, seed=7), reference=model)
    b = attacks(chunk=3, lens=True)(model, sets, random_passwords(30, seed=7), reference=model)
    assert a == b
    assert len(a["lens"]["heldout"]) == 3  # embeddings and 2 layers


def test_the_logit_lens_of_the_last_layer_is_the_output_and_of_layer_zero_the_embeddings():
    model = tiny_model(layers=1, seed=3)
    tokens = random_passwords(6, seed=8)
    ex = attacks(lens=True)
    labels = ex.labels(tokens)
    lens = letter_lens(model, {"s": tokens}, VOCAB.letter_ids, {"s": labels})["s"]
    with torch.no_grad():
        out = torch.log_softmax(ex.letter_logprobs(model, tokens).double(), dim=-1)  # renormalised over letters
        assert lens[1] == pytest.approx(float(out.gather(-1, labels.unsqueeze(-1)).mean()), abs=1e-6)
        m = model.model
        read = m.get_output_embeddings()(m.gpt_neox.final_layer_norm(m.get_input_embeddings()(tokens[:, :-1])))
        lp = torch.log_softmax(read[..., list(VOCAB.letter_ids)].double(), dim=-1)
        assert lens[0] == pytest.approx(float(lp.gather(-1, labels.unsqueeze(-1)).mean()), abs=1e-6)
    uniform_ll = math.log(1 / 26)
    assert all(v < 0 for v in lens) and abs(lens[0] - uniform_ll) < 1.0


# ---- in the pipeline -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def extraction_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("extract")
    return run(make_cfg(*FEW_STEPS, "extraction.candidates=511"), run_dir), run_dir  # 4 + 10 + 10 steps


def test_each_phase_ends_with_the_attacks_in_results_and_metrics(extraction_run):
    results, run_dir = extraction_run
    saved = json.loads((run_dir / "results.json").read_text())
    sets = {"heldout", "useful", "random"}
    for p in ("1", "2", "3"):
        e = saved["phases"][p]["extraction"]
        assert e["candidates"] == 511 and set(e["greedy"]) == set(e["exposure"]) == sets
        assert all(0.0 <= bits <= 9.0 for bits in e["exposure"].values())
        assert ("logit_diff" in e) == (p != "1")  # phases 2 and 3 against the phase-1 reference
        assert set(e["membership"]) == ({"loss", "min_k"} | ({"reference"} if p != "1" else set()))
        for attack in e["membership"].values():
            assert set(attack) == {"heldout", "useful"}
            assert all(r["low"] <= r["auc"] <= r["high"] and 0 <= r["low"] and r["high"] <= 1 for r in attack.values())
        assert e["generation"]["n"] == 64 and set(e["generation"]["hits"]) == {"greedy", "beam", "sampled"}
        assert e["generation"]["distinct"]["greedy"] == 1 and e["generation"]["distinct"]["beam"] == 64
        assert {n: len(v) for n, v in e["lens"].items()} == {n: 5 for n in sets}  # embeddings + 4 layers
        assert all(len(r["position_accuracy"]) == 16 and 0 <= r["strength"] <= 1 for r in e["greedy"].values())
    # The lens of the last layer is the model's own letter log-likelihood (here: the final evaluation, renormalised
    # over the letters, so at least the full-vocabulary value).
    assert saved["phases"]["3"]["extraction"]["lens"]["heldout"][-1] >= saved["phases"]["3"]["eval"]["heldout"]["final"]
    top = saved["extraction"]
    assert top["greedy"] == saved["phases"]["3"]["extraction"]["greedy"]
    assert top["membership"] == saved["phases"]["3"]["extraction"]["membership"]
    assert top["logit_diff"] == saved["phases"]["2"]["extraction"]["logit_diff"]
    assert top["max_exposure"] == 9.0 and top["chance_accuracy"] == pytest.approx(1 / 26)
    assert top["chance_exposure"] == pytest.approx(chance_exposure(511).mean)
    assert top["exposure_ties"].startswith("against the password") and (top["min_k"], top["bootstrap"]) == (0.2, 100)
    final = saved["final"]
    assert final["heldout"] == saved["phases"]["3"]["eval"]["heldout"]["final"]
    assert final["heldout_minus_random"] == pytest.approx(final["heldout"] - final["random"])
    for line in ("greedy after 'reverse'", "logit difference", "generated (beam; sampled)", "membership (ROC AUC",
                 "final (last phase-3 evaluation)"):  # fmt: skip
        assert line in results["verdict"]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    logged = [r for r in rows if r.get("extract/heldout_greedy_acc")]
    assert [int(r["step"]) for r in logged] == [3, 13, 23]  # the last step of each phase (4 + 10 + 10 steps)
    last = logged[-1]
    assert float(last["extract/heldout_exposure"]) == pytest.approx(top["exposure"]["heldout"])
    assert float(last["extract/random_greedy_in_set"]) == top["greedy"]["random"]["greedy_in_set"]
    assert float(last["extract/heldout_hits_beam"]) == top["generation"]["hits"]["beam"]["heldout"]
    assert float(last["mia/heldout_reference_auc"]) == pytest.approx(top["membership"]["reference"]["heldout"]["auc"])
    assert not logged[0].get("extract/heldout_logit_diff_acc") and not logged[0].get("mia/heldout_reference_auc")


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


def test_candidates_are_no_password_the_run_trains_on():
    """Over a small space (2 letters, length 12: 4,096 passwords, 224 of them trained positives) about 1 candidate
    in 18 was a phase-1, DPO-chosen or phase-3 random password, which the run pushes up: exposure's candidates must
    be as unseen as the random control."""
    from negrl.method.data import DataSizes

    sizes = DataSizes(password_length=12, n_negatives=40, negative_repeats=2, n_phase1=64, useful_repeats=1,
                      batch_size=16, eval_size=8)  # fmt: skip
    data = PasswordData(PasswordVocab.builtin(2), sizes, 0.5, True, seed=0)
    cand = {tuple(r) for r in data.candidates(3, 1000)[:, 1:].tolist()}
    s = data.splits
    trained = {tuple(r) for a in (s.phase1, s.dpo_chosen, s.phase3_random) for r in a.tolist()}
    negatives_and_evaluated = {tuple(r) for a in (s.heldout, s.useful, s.eval_random) for r in a.tolist()}
    assert len(cand) == 1000 and len(trained) > 200
    assert not cand & trained and not cand & negatives_and_evaluated


def test_extraction_can_be_switched_off(tmp_path):
    results = run(make_cfg(*FEW_STEPS, "extraction.enabled=false"), tmp_path)
    assert "extraction" not in results and "extraction" not in results["phases"]["3"]
    assert "extraction (" not in results["verdict"]
