"""Losses against hand-computed values on a hand-made batch."""

import copy
import math

import pytest
import torch
from conftest import FEW_STEPS, ROOT, make_cfg, make_cfg_dict
from omegaconf import OmegaConf

from negrl.core.errors import NegrlError
from negrl.method.objectives import (
    DEFAULTS,
    NEEDS,
    OBJECTIVES,
    Needs,
    PreferenceBatch,
    dpo_loss,
    mean_token_logprob,
    ntp_loss,
    objective_loss,
    sequence_logprob,
)
from negrl.method.phases import JointPhase, ObjectivePhase, OptimSettings
from negrl.method.reference import ReferenceLogprobs
from negrl.model.backbone import Backbone
from negrl.stacked.runner import check_stackable_objective

WEIGHTS = {"objective": 1.0, "random": 1.0, "useful": 1.0}

# Two sequences, three label positions each.
TOKEN_LP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -2.0]])


def test_sequence_logprob_is_a_sum_and_ntp_a_mean():
    assert sequence_logprob(TOKEN_LP).tolist() == [-6.0, -3.0]
    assert mean_token_logprob(TOKEN_LP).tolist() == [-2.0, -1.0]
    # NTP loss: mean over positions (-2, -1), then over sequences: 1.5.
    assert ntp_loss(TOKEN_LP).item() == pytest.approx(1.5, abs=1e-7)


def test_dpo_loss_matches_hand_computation():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-30.0, -15.0])
    rc, rr = torch.tensor([-12.0, -18.0]), torch.tensor([-25.0, -16.0])
    beta = 0.1
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    # pair 1: chosen reward 0.1*2 = 0.2, rejected 0.1*(-5) = -0.5, margin 0.7
    # pair 2: chosen reward 0.1*(-2) = -0.2, rejected 0.1*1 = 0.1, margin -0.3
    expected = (math.log1p(math.exp(-0.7)) + math.log1p(math.exp(0.3))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.6287706, abs=1e-6)  # (0.403186 + 0.854355) / 2
    assert stats["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-6)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.2, abs=1e-6)
    assert stats["rewards/margins"].item() == pytest.approx(0.2, abs=1e-6)
    assert stats["rewards/accuracies"].item() == 0.5


def test_dpo_loss_at_reference_is_log2():
    x = torch.tensor([-5.0, -7.0])
    loss, _ = dpo_loss(x, x - 1, x, x - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)


# ---- the registry of phase-2/3 objectives, on one hand-made batch ---------------------------------
# chosen tokens sum to -6, -3; rejected to -6, -6; reference: chosen -5, -4, rejected -7, -5.
# log-ratios: chosen -1, +1; rejected +1, -1; chosen minus rejected h = -2, +2.
PREF = PreferenceBatch(
    chosen=torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -2.0]]),
    rejected=torch.tensor([[-2.0, -2.0, -2.0], [-1.0, -1.0, -4.0]]),
    ref_chosen=torch.tensor([-5.0, -4.0]),
    ref_rejected=torch.tensor([-7.0, -5.0]),
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _ul(lp: float) -> float:
    return -math.log1p(-math.exp(lp))


HAND = {
    # -log sigmoid(0.1 h), h = -2, 2
    "dpo": ((_softplus(0.2) + _softplus(-0.2)) / 2, 0.6981388),
    # (h - 1/(2 tau))^2 = 49, 9
    "ipo": ((49 + 9) / 2, 29.0),
    # relu(1 - log p(c) + log p(r)) = relu(1 + 6 - 6), relu(1 + 3 - 6)
    "hinge": ((1 + 0) / 2, 0.5),
    # -(2/beta) log sigmoid(-beta r), r = +1, -1
    "npo": (20 * (_softplus(0.1) + _softplus(-0.1)) / 2, 13.8879416),
    # -(2/beta) log sigmoid(-beta * mean-token log p(r) - gamma), means -2, -2
    "simnpo": (0.8 * _softplus(-5.0), 0.0053722),
    # NTP(chosen) = 1.5, plus the mean of -log(1 - p) over the six rejected tokens
    "unlikelihood": (1.5 + (3 * _ul(-2.0) + 2 * _ul(-1.0) + _ul(-4.0)) / 6, 1.7286791),
    # minus the rejected NTP loss (2.0)
    "grad_ascent": (-2.0, -2.0),
}


@pytest.mark.parametrize("name", list(HAND))
def test_each_objective_matches_hand_computation(name):
    exact, rounded = HAND[name]
    loss = objective_loss(name, PREF, DEFAULTS[name])
    assert loss.item() == pytest.approx(exact, abs=1e-5)
    assert loss.item() == pytest.approx(rounded, abs=1e-5)


def test_every_objective_has_a_config_with_the_registry_defaults():
    """conf/objective/NAME.yaml for each registered name and no other, its keys and values the registry's (read
    from the files: dpo's beta follows dpo.beta, resolved by composing the config once)."""
    files = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (ROOT / "conf" / "objective").glob("*.yaml")}
    assert set(files) == set(OBJECTIVES)
    for name, cfg in files.items():
        assert cfg.pop("name") == name
        assert set(cfg) == set(DEFAULTS[name]), name
        assert {k: v for k, v in cfg.items() if not str(v).startswith("${")} == {
            k: v for k, v in DEFAULTS[name].items() if not str(cfg[k]).startswith("${")
        }, name
    assert make_cfg_dict("objective=dpo")["objective"] == {"name": "dpo", **DEFAULTS["dpo"]}
    assert DEFAULTS["dpo"] == {"beta": 0.1, "label_smoothing": 0.0}  # cDPO off: the paper's DPO


def test_npo_and_reference_free_objectives_ignore_what_they_should():
    other_chosen = PreferenceBatch(PREF.chosen * 3, PREF.rejected, PREF.ref_chosen + 1, PREF.ref_rejected)
    for name in ("npo", "simnpo", "grad_ascent", "kto_undesirable"):  # the rejected side only
        assert objective_loss(name, other_chosen, DEFAULTS[name]) == objective_loss(name, PREF, DEFAULTS[name])
    other_ref = PreferenceBatch(PREF.chosen, PREF.rejected, PREF.ref_chosen + 5, PREF.ref_rejected - 3)
    for name in ("hinge", "simnpo", "unlikelihood", "grad_ascent", "orpo", "cpo", "simpo", "grad_diff", "wga"):
        assert objective_loss(name, other_ref, DEFAULTS[name]) == objective_loss(name, PREF, DEFAULTS[name])


def test_cdpo_at_zero_label_smoothing_is_the_papers_dpo_bit_for_bit():
    plain = dpo_loss(sequence_logprob(PREF.chosen), sequence_logprob(PREF.rejected), PREF.ref_chosen,
                     PREF.ref_rejected, 0.1)[0]  # fmt: skip
    assert torch.equal(objective_loss("dpo", PREF, {"beta": 0.1, "label_smoothing": 0.0}), plain)


# ---- every objective through its phase modules, in process ----------------------------------------------
TINY = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"))["architecture"]


def _batch(seed: int, n: int = 4, length: int = 17) -> dict[str, torch.Tensor]:
    """A phase-3 batch of `n` pairs of tiny's tokens (letters 0-25 after the regular prefix 26)."""
    g = torch.Generator().manual_seed(seed)

    def seqs():
        return torch.cat([torch.full((n, 1), 26), torch.randint(0, 26, (n, length - 1), generator=g)], dim=1)

    return {"chosen": seqs(), "rejected": seqs(), "random": seqs(), "useful": seqs(),
            "chosen_id": torch.arange(n), "rejected_id": torch.arange(n) % 2}  # fmt: skip


@pytest.fixture(scope="module")
def phase1_model():
    return Backbone.random_init(TINY, seed=0)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_trains_a_step_of_phases_2_and_3(name, phase1_model):
    """A step of ObjectivePhase (the freeze on) and of JointPhase on model=tiny: a finite loss whose gradient
    reaches the trainable weights, and an optimizer step that changes them (the frozen half stays)."""
    params = {k: float(v) for k, v in DEFAULTS[name].items()}
    for phase_cls, extra in ((ObjectivePhase, {"freeze": True}), (JointPhase, {"weights": WEIGHTS})):
        backbone = copy.deepcopy(phase1_model)
        reference = ReferenceLogprobs(phase1_model.frozen_copy(), n_pairs=4, n_negatives=2)
        phase = phase_cls(backbone, reference, objective=(name, params), beta=0.1, optim=OptimSettings(),
                          total_steps=1, **extra)  # fmt: skip
        phase.apply_trainable()
        loss, parts = phase.compute_loss(_batch(1))
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values()), (name, phase_cls)
        assert set(parts) >= {name, "rewards/chosen", "rewards/margins"}
        before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
        opt = torch.optim.SGD(backbone.trainable_parameters(), lr=1e-2)
        loss.backward()
        opt.step()
        changed = {n for n, p in backbone.named_parameters() if not torch.equal(p, before[n])}
        assert changed, (name, phase_cls)
        if phase_cls is ObjectivePhase:
            frozen = {n for n, p in backbone.named_parameters() if any(p is q for q in backbone.frozen_by_phase2())}
            assert not changed & frozen


def test_the_default_objective_asks_for_nothing_beyond_label_logprobs(phase1_model, monkeypatch):
    """DPO takes the same path as before objectives could ask for more: no logits, no hidden states, no
    uncached reference forward."""
    backbone = copy.deepcopy(phase1_model)
    reference = ReferenceLogprobs(phase1_model.frozen_copy(), n_pairs=4, n_negatives=2)
    phase = ObjectivePhase(backbone, reference, objective=("dpo", {"beta": 0.1, "label_smoothing": 0.0}),
                           beta=0.1, optim=OptimSettings(), total_steps=1)  # fmt: skip

    def refused(*args, **kwargs):
        raise AssertionError("token_outputs called for dpo")

    monkeypatch.setattr(Backbone, "token_outputs", refused)
    assert phase.needs == Needs() and phase.layer is None
    loss, _ = phase.compute_loss(_batch(2))
    assert torch.isfinite(loss)


def test_rmu_reads_the_layer_it_names(phase1_model):
    """`token_outputs(layer=l)` is the residual stream leaving decoder layer l (Hugging Face's hidden_states[l + 1]
    at the label-predicting positions), and RMU's loss moves with objective.layer."""
    tokens = _batch(3)["rejected"]
    states = phase1_model.model(input_ids=tokens[:, :-1], output_hidden_states=True).hidden_states
    for layer in range(len(phase1_model.layers) - 1):  # the last entry is after the final norm in some families
        torch.testing.assert_close(phase1_model.token_outputs(tokens, layer=layer)["hidden"], states[layer + 1])
    losses = []
    for layer in (0, 1):
        backbone = copy.deepcopy(phase1_model)
        with torch.no_grad():  # move the policy off the reference so the retain term is not zero either
            for p in backbone.parameters():
                p.add_(0.01)
        reference = ReferenceLogprobs(phase1_model.frozen_copy(), n_pairs=4, n_negatives=2)
        params = {**{k: float(v) for k, v in DEFAULTS["rmu"].items()}, "layer": float(layer)}
        phase = ObjectivePhase(backbone, reference, objective=("rmu", params), beta=0.1, optim=OptimSettings(),
                               total_steps=1, freeze=True)  # fmt: skip
        losses.append(phase.compute_loss(_batch(3))[0].item())
    assert losses[0] != pytest.approx(losses[1])


def test_objectives_without_needs_run_under_vmap_as_stacked_seeds_do():
    """Stacked seeds run the objective under torch.func.vmap: each seed's loss is the one it gets alone."""
    k_seeds = 2
    stacked = PreferenceBatch(torch.stack([PREF.chosen, PREF.chosen * 0.5]), torch.stack([PREF.rejected] * k_seeds),
                              torch.stack([PREF.ref_chosen, PREF.ref_chosen - 1]), torch.stack([PREF.ref_rejected] * 2))
    for name in (n for n in OBJECTIVES if not NEEDS[n]):
        params = DEFAULTS[name]

        def one(c, r, rc, rr, name=name, params=params):
            return objective_loss(name, PreferenceBatch(c, r, rc, rr), params)

        together = torch.func.vmap(one)(stacked.chosen, stacked.rejected, stacked.ref_chosen, stacked.ref_rejected)
        alone = [one(stacked.chosen[k], stacked.rejected[k], stacked.ref_chosen[k], stacked.ref_rejected[k])
                 for k in range(k_seeds)]  # fmt: skip
        torch.testing.assert_close(together, torch.stack(alone), msg=name)


def test_objectives_reading_logits_or_hidden_states_are_refused_by_stacked_seeds():
    check_stackable_objective("kto")
    for name in ("undial", "rmu"):
        with pytest.raises(NegrlError, match=f"objective={name} reads the models' logits or hidden states, which "
                                             "stacked seeds do not compute; run it without hydra/launcher=stacked"):
            check_stackable_objective(name)


def test_an_objective_reading_hidden_states_runs_the_whole_pipeline(tmp_path):
    """RMU through Lightning, the reference's forward and metrics.csv (the other objectives: the in-process steps
    above; each one's `python train.py objective=NAME data=small` is in docs/objectives.md)."""
    import csv

    from negrl.pipeline import run

    name = "rmu"
    cfg = make_cfg(f"objective={name}", "checkpoint.every=0", *FEW_STEPS, "extraction.enabled=false")
    results = run(cfg, tmp_path / "run")
    assert results["status"] == "complete" and math.isfinite(results["metric"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] in ("2", "3")]
    assert rows and all(math.isfinite(float(r[f"train/{name}"])) for r in rows)


def test_a_dpo_config_written_before_cdpo_reads_as_label_smoothing_zero():
    """A config.yaml of an earlier run (objective: {name: dpo, beta}) is the same config for resume."""
    from negrl.run.config import upgrade_renamed

    old = {"objective": {"name": "dpo", "beta": 0.1}}
    assert upgrade_renamed(old)["objective"] == {"name": "dpo", "beta": 0.1, "label_smoothing": 0.0}
    assert upgrade_renamed({"objective": {"name": "ipo", "tau": 0.1}})["objective"] == {"name": "ipo", "tau": 0.1}
