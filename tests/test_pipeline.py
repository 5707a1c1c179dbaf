"""The three phases end to end on a tiny model and scaled-down data."""

import csv
import json

import pytest
import torch
from conftest import FEW_STEPS, SMALL_ATTACKS, make_cfg

from negrl.pipeline import run


def snapshot(backbone):
    return {k: v.detach().clone() for k, v in backbone.named_parameters()}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One scaled-down run (8 + 40 + 40 steps) with the weights after every phase."""
    run_dir = tmp_path_factory.mktemp("run")
    states = {}
    results = run(make_cfg("seed=0"), run_dir, on_phase_end=lambda p, b: states.__setitem__(p, (snapshot(b), b)))
    return results, run_dir, states


def test_results_json_is_complete(tiny_run):
    results, run_dir, _ = tiny_run
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == "complete"
    assert saved["metric"] == saved["phases"]["3"]["eval"]["heldout"]["max"]
    assert saved["delta"] == pytest.approx(saved["metric"] - (-3.258096538021482), abs=1e-12)
    assert saved["control"]["metric"] == saved["phases"]["3"]["eval"]["random"]["max"]
    evals = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("eval/heldout_ll")]
    for p, steps in (("1", 8), ("2", 40), ("3", 40)):
        phase = saved["phases"][p]
        assert phase["steps"] == steps and phase["wall_time_s"] > 0
        assert set(phase["eval"]) == {"heldout", "useful", "random"}
        for name, v in phase["eval"].items():  # the summary agrees with the phase's logged evaluations
            logged = [float(r[f"eval/{name}_ll"]) for r in evals if int(float(r["phase"])) == int(p)]
            assert (v["max"], v["final"]) == pytest.approx((max(logged), logged[-1]), abs=1e-12)
    assert set(saved["versions"]) >= {"negrl", "torch", "lightning", "transformers", "python"}
    assert (run_dir / "config.yaml").is_file()
    assert "negrl verdict" in results["verdict"]


def test_freeze_in_phase2_and_all_trainable_in_phase3(tiny_run):
    _, _, states = tiny_run
    after1, backbone = states[1]
    after2, after3 = states[2][0], states[3][0]
    frozen = {id(p) for p in backbone.frozen_by_phase2()}
    frozen_names = {n for n, p in backbone.named_parameters() if id(p) in frozen}
    n = len(backbone.layers)
    unembedding = {n_ for n_, p in backbone.named_parameters() if p is backbone.unembedding.weight}
    assert unembedding in ({"model.lm_head.weight"}, {"model.embed_out.weight"})  # name depends on transformers
    assert frozen_names == {n_ for n_ in after1 if any(f"layers.{i}." in n_ for i in range(n // 2, n))} | unembedding
    for name in after1:
        if name in frozen_names:
            assert torch.equal(after1[name], after2[name]), f"{name} moved in phase 2"
        else:
            assert not torch.equal(after1[name], after2[name]), f"{name} did not move in phase 2"
        assert not torch.equal(after2[name], after3[name]), f"{name} did not move in phase 3"
    trainable_in_phase2 = set(after1) - frozen_names
    assert "model.gpt_neox.final_layer_norm.weight" in trainable_in_phase2
    assert "model.gpt_neox.embed_in.weight" in trainable_in_phase2


def test_evaluation_after_steps_0_5_10_of_each_phase(tiny_run):
    _, run_dir, _ = tiny_run
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    evals = [(int(float(r["phase"])), int(r["step"])) for r in rows if r.get("eval/heldout_ll")]
    offsets = {1: 0, 2: 8, 3: 48}
    expected = [(p, offsets[p] + s) for p, n in ((1, 8), (2, 40), (3, 40)) for s in range(0, n, 5)]
    assert evals == expected
    train = [r for r in rows if r.get("train/loss")]
    assert len(train) == 88 and [int(r["step"]) for r in train] == list(range(88))
    dpo = [r for r in train if int(float(r["phase"])) == 2]
    assert all(r["train/rewards/accuracies"] and r["train/rewards/margins"] for r in dpo)
    assert float(train[0]["lr"]) == 0.0  # step 0 of the warm-up


#: 4 + 10 + 10 steps without attacks: the runs of the checks that compare two runs' evaluations.
QUICK = (*FEW_STEPS, "extraction.enabled=false")


def test_same_seed_gives_identical_numbers(tmp_path):
    first = run(make_cfg(*QUICK, "seed=0"), tmp_path / "first")
    second = run(make_cfg(*QUICK, "seed=0"), tmp_path / "second")
    for key in ("metric", "delta"):
        assert first[key] == second[key]
    assert first["phases"]["3"]["eval"] == second["phases"]["3"]["eval"]
    other = run(make_cfg(*QUICK, "seed=1"), tmp_path / "other")
    assert other["metric"] != first["metric"]


def test_no_prefix_and_no_freeze_run(tmp_path):
    results = run(make_cfg("prefix=false", "freeze=false", "data.n_phase1=32", "data.negative_repeats=1"), tmp_path)
    assert results["status"] == "complete"
    assert results["phases"]["2"]["steps"] == 20


def test_one_offline_wandb_run_covers_all_phases(tmp_path):
    results = run(make_cfg("wandb.enabled=true", "wandb.mode=offline", *QUICK), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert f"wandb sync {runs[0]}" in results["verdict"]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"


def test_reference_cache_computes_each_sequence_once_and_changes_nothing(tiny_run, tmp_path):
    cached, _, _ = tiny_run
    # data=small with each negative twice: 640 pairs of 320 distinct negatives, 40 steps of 16 pairs per phase.
    assert cached["reference"] == {"cache": True, "sequences_computed": 640 + 320}
    # The two compared at 80 negatives, each twice: 160 pairs of 80 distinct negatives, 10 steps of 16 pairs per phase.
    cached = run(make_cfg(*QUICK, "seed=0"), tmp_path / "cached")
    uncached = run(make_cfg(*QUICK, "seed=0", "reference.cache=false"), tmp_path / "uncached")
    assert cached["reference"] == {"cache": True, "sequences_computed": 160 + 80}
    assert uncached["reference"] == {"cache": False, "sequences_computed": 2 * 10 * 32}
    assert cached["metric"] == pytest.approx(uncached["metric"], abs=1e-5)
    assert cached["control"]["metric"] == pytest.approx(uncached["control"]["metric"], abs=1e-5)
    for p in ("2", "3"):
        for name, v in cached["phases"][p]["eval"].items():
            assert v["max"] == pytest.approx(uncached["phases"][p]["eval"][name]["max"], abs=1e-5)


def test_bf16_mixed_runs_on_cpu_and_evaluates_in_fp32(tmp_path):
    from negrl.method.data import DataSizes, PasswordData
    from negrl.model.vocab import PasswordVocab

    # 2 + 5 + 5 steps, no attacks (bf16 is slow on a CPU without AVX-512: about 4x fp32), evaluated after each step.
    cfg = make_cfg("trainer.precision=bf16-mixed", *FEW_STEPS, "data.n_phase1=32", "data.negative_repeats=1",
                   "extraction.enabled=false", "eval.every=1")  # fmt: skip
    final = {}
    results = run(cfg, tmp_path, on_phase_end=lambda p, b: final.__setitem__(p, snapshot(b)) if p == 3 else None)
    assert results["status"] == "complete"
    # The logged phase-3 evaluation equals an fp32 evaluation of the final weights.
    from omegaconf import OmegaConf

    from negrl.model.backbone import Backbone

    c = OmegaConf.to_container(cfg, resolve=True)
    model = Backbone.random_init(c["model"]["architecture"], seed=0)
    model.load_state_dict({k: v.float() for k, v in final[3].items()})
    data = PasswordData(PasswordVocab.builtin(), DataSizes(**c["data"]), c["holdout_frac"], True, 0)
    with torch.no_grad():
        ll = model.token_logprobs(data.eval_sets(3)["heldout"]).double().mean(-1).mean().item()
    assert results["phases"]["3"]["eval"]["heldout"]["final"] == pytest.approx(ll, abs=1e-6)


def test_a_log_gets_progress_lines_not_progress_bar_frames(tmp_path, train_py):
    """Output to a file (SLURM, `> log`): a line per tenth of each phase, no carriage-return frames. Through
    train.py: in this process in the fast suite, as its own process in the slow one (`train_py`)."""
    proc = train_py("data=small", "data.negative_repeats=1", *SMALL_ATTACKS, "wandb.enabled=false",
                    "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("phase ")]
    assert lines[-1].startswith("phase 3: joint: step 20/20  loss ")
    assert sum(ln.startswith("phase 2: dpo: step ") for ln in lines) == 10
