"""The seeded password draw at the paper's full scale: counts, prefixes, and the invariant."""

from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from conftest import FEW_STEPS, make_cfg

from negrl.core.errors import NegrlError
from negrl.method.data import DataSizes, PasswordData, PasswordSplits, PhaseData, heldout_count
from negrl.model.vocab import PasswordVocab
from negrl.pipeline import run
from negrl.run import runner

VOCAB = PasswordVocab.builtin()  # letters 0..25, regular 26, reverse 27
SIZES = DataSizes()  # the paper's


def keys(rows):
    return [bytes(r) for r in np.asarray(rows, dtype=np.uint8)]


@pytest.fixture(scope="module")
def dm():
    return PasswordData(VOCAB, SIZES, 0.05, prefix=True, seed=0)


def test_split_sizes(dm):
    s = dm.splits
    assert len(s.heldout) == 128 and len(s.useful) == 2432
    assert len(set(keys(np.concatenate([s.heldout, s.useful])))) == 2560  # distinct negatives
    assert len(s.phase1) == 8192
    assert len(s.dpo_chosen) == len(s.dpo_rejected) == len(s.phase3_random) == len(s.phase3_useful) == 153_600
    assert len(s.eval_random) == 128
    assert s.heldout.shape[1] == 16 and s.heldout.max() < 26


def test_steps_per_phase():
    assert [SIZES.steps(p) for p in (1, 2, 3)] == [64, 1200, 1200]


def test_each_negative_exactly_60_times_in_dpo_and_pairing_is_fixed(dm):
    s = dm.splits
    rejected, counts = np.unique(s.dpo_rejected, axis=0, return_counts=True)
    assert np.array_equal(rejected, np.unique(np.concatenate([s.heldout, s.useful]), axis=0))
    assert set(counts.tolist()) == {60}
    # The same (chosen, rejected) pairs appear in phase 2 and phase 3, whatever the order: equal as multisets (each
    # phase's rows [chosen | rejected], sorted).
    def pairs(ds) -> np.ndarray:
        rows = np.concatenate([torch.cat([ds[i]["chosen"], ds[i]["rejected"]], dim=1).numpy() for i in range(len(ds))])
        return rows[np.lexsort(rows.T[::-1])]

    p2, p3 = pairs(dm.dataset(2)), pairs(dm.dataset(3))
    assert np.array_equal(p2, p3) and len(p2) == 153_600
    # ... but in a different batch order.
    assert not np.array_equal(dm.dataset(2)[0]["chosen"].numpy(), dm.dataset(3)[0]["chosen"].numpy())


def test_pair_ids_name_the_pair_and_the_negative(dm):
    """The keys of the reference cache: chosen_id is the pair, rejected_id the distinct negative."""
    s = dm.splits
    negatives = np.concatenate([s.heldout, s.useful])
    for phase in (2, 3):
        b = dm.dataset(phase)[5]
        assert np.array_equal(b["rejected"][:, 1:].numpy(), negatives[b["rejected_id"].numpy()])
        assert np.array_equal(b["chosen"][:, 1:].numpy(), s.dpo_chosen[b["chosen_id"].numpy()])
    assert sorted(Counter(s.dpo_rejected_id.tolist()).values()) == [60] * 2560


def test_phase3_useful_negative_repetition(dm):
    s = dm.splits
    counts = Counter(keys(s.phase3_useful))
    # 2432 x 30 = 72,960 tiled to 153,600 = 2 x 72,960 + 7,680 = 60 + (3 x 2432 + 384):
    # the first 384 useful negatives appear 64 times, the other 2048 63 times.
    useful = keys(s.useful)
    assert [counts[k] for k in useful[:384]] == [64] * 384
    assert [counts[k] for k in useful[384:]] == [63] * 2048
    assert sum(counts.values()) == 153_600


def test_prefix_tokens_in_place(dm):
    b1, b2, b3 = dm.dataset(1)[0], dm.dataset(2)[0], dm.dataset(3)[0]
    assert b1["random"].shape == (128, 17) and (b1["random"][:, 0] == 26).all()
    for key in ("chosen", "rejected"):
        assert (b2[key][:, 0] == 26).all() and (b3[key][:, 0] == 26).all()
    assert (b3["random"][:, 0] == 26).all() and (b3["useful"][:, 0] == 27).all()
    assert all((b[k][:, 1:] < 26).all() for b in (b1, b2, b3) for k in b if not k.endswith("_id"))
    for phase, prefix in ((1, 26), (2, 26), (3, 27)):
        sets = dm.eval_sets(phase)
        assert list(sets) == ["heldout", "useful", "random"]
        assert all(t.shape == (128, 17) and (t[:, 0] == prefix).all() for t in sets.values())


def test_no_prefix_means_no_token_prepended():
    dm = PasswordData(VOCAB, SIZES, 0.05, prefix=False, seed=0)
    b = dm.dataset(3)[0]
    assert all(t.shape == (128, 16) and (t < 26).all() for k, t in b.items() if not k.endswith("_id"))
    assert dm.eval_sets(3)["heldout"].shape == (128, 16)


def test_heldout_negatives_are_never_a_positive_target(dm):
    """Audit every batch of every stream of every phase at full scale."""
    held = set(keys(dm.splits.heldout))
    useful = set(keys(dm.splits.useful))
    seen_rejected = Counter()
    for phase in (1, 2, 3):
        ds = dm.dataset(phase)
        positive = set(dm.positive_targets(phase))
        assert positive == {1: {"random"}, 2: {"chosen"}, 3: {"chosen", "random", "useful"}}[phase]
        for i in range(len(ds)):
            for key, tokens in ds[i].items():
                if key.endswith("_id"):
                    continue
                rows = keys(tokens[:, 1:].numpy())
                if key == "rejected":
                    seen_rejected.update(r for r in rows if r in held)
                    continue
                assert key in positive
                assert not held.intersection(rows), f"held-out negative in phase {phase} stream {key}"
                if key != "useful":
                    assert not useful.intersection(rows), f"useful negative in phase {phase} stream {key}"
    # Held-out negatives appear only as rejected: 60 times in phase 2 and 60 in phase 3.
    assert set(seen_rejected) == held and set(seen_rejected.values()) == {120}
    # The random evaluation set was never trained on.
    trained = set(keys(dm.splits.phase1)) | set(keys(dm.splits.dpo_chosen)) | set(keys(dm.splits.phase3_random))
    assert not trained.intersection(keys(dm.splits.eval_random))


def test_same_seed_same_draw_other_seed_other_draw():
    a = PasswordSplits.draw(SIZES, 0.05, 3, 26)
    b = PasswordSplits.draw(SIZES, 0.05, 3, 26)
    c = PasswordSplits.draw(SIZES, 0.05, 4, 26)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in vars(a))
    assert not np.array_equal(a.heldout, c.heldout)


@pytest.mark.parametrize("frac,count", [(0.05, 128), (0.25, 640), (0.45, 1152)])
def test_heldout_count(frac, count):
    assert heldout_count(frac, 2560) == count


@pytest.mark.parametrize("frac", [0.0001, 0.051])  # outside (0, 1): refused by negrl.run.config (test_validation)
def test_bad_heldout_fraction(frac):
    with pytest.raises(NegrlError, match=f"holdout_frac={frac}"):
        heldout_count(frac, 2560)


def test_too_few_heldout_for_eval_set():
    with pytest.raises(NegrlError, match="fewer than data.eval_size=128"):
        PasswordSplits.draw(SIZES, 1 / 2560, 0, 26)


def test_each_phase_is_a_lightning_datamodule_serving_its_batches_from_the_resumed_step(dm):
    full, resumed = dm.for_phase(2), dm.for_phase(2, start=1197)
    assert isinstance(full, L.LightningDataModule) and (full.phase, full.start) == (2, 0)
    for data in (full, resumed):
        data.setup("fit")
    batches, tail = list(full.train_dataloader()), list(resumed.train_dataloader())
    assert len(batches) == 1200 and len(tail) == 3
    for a, b in zip(batches[-3:], tail):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(batches[0]["chosen"], dm.dataset(2)[0]["chosen"])  # the phase's seeded order, batch 0 first
    assert resumed.state_dict() == {"phase": 2, "next_step": 1197}  # before fitting: where it starts
    with pytest.raises(ValueError, match="phase 1 has 64 steps; cannot start at step 65"):
        dm.for_phase(1, start=65)


def test_the_trainer_of_each_phase_fits_on_the_phases_datamodule(tmp_path):
    seen = []

    class Record(L.Callback):
        def on_train_end(self, trainer, module):
            seen.append((type(trainer.datamodule), trainer.datamodule.state_dict()))

    original = runner.PhaseRunner.callbacks

    def with_record(self, *args, **kwargs):
        return [*original(self, *args, **kwargs), Record()]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(runner.PhaseRunner, "callbacks", with_record)
        run(make_cfg(*FEW_STEPS, "extraction.enabled=false", "eval.every=100"), tmp_path / "run")
    assert seen == [(PhaseData, {"phase": p, "next_step": n}) for p, n in ((1, 4), (2, 10), (3, 10))]
