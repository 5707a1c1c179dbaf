"""Bad input: a one-line error naming the value and the fix, exit code 2, nothing written."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, make_cfg

from negrl import checkpoint
from negrl.cli import check_group_choices
from negrl.errors import NegrlError, RunFailed
from negrl.pipeline import run

CASES = [
    (["holdout_frac=0"], "holdout_frac=0 must lie strictly between 0 and 1"),
    (["holdout_frac=1.5"], "holdout_frac=1.5 must lie strictly between 0 and 1"),
    (["holdout_frac=0.0123"], "holdout_frac=0.0123 gives 3.936 held-out .* not a positive whole number"),
    (["data=paper", "holdout_frac=0.025"], "64 held-out .* fewer than data.eval_size=128"),
    (["data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
    (["data.batch_size=-16"], "data.batch_size=-16 must be a positive integer"),
    (["data.negative_repeats=0"], "data.negative_repeats=0 must be a positive integer"),
    (["data.password_length=0"], "data.password_length=0 must be a positive integer"),
    (["data.n_phase1=100"], "data.n_phase1=100 is not a multiple of data.batch_size=16"),
    (["optim.lr=0"], "optim.lr=0 must be positive"),
    (["optim.lr=-1e-4"], "optim.lr=-0.0001 must be positive"),
    (["optim.weight_decay=-0.01"], "optim.weight_decay=-0.01 must be non-negative"),
    (["optim.fused=sometimes"], "optim.fused='sometimes' must be auto, true or false"),
    (["compute.fused_logprobs=yes"], "compute.fused_logprobs='yes' must be true or false"),
    (["compute.attention=flash"], "compute.attention='flash' must be one of eager, sdpa"),
    (["optim.fused=true", "trainer.precision=16-mixed"], "optim.fused=true cannot clip gradients under .*16-mixed"),
    (["dpo.beta=0"], "dpo.beta=0 must be positive"),
    (["objective=ipo", "objective.tau=0"], r"objective.tau=0 must be positive for objective=ipo"),
    (["objective=unlikelihood", "objective.alpha=-1"], r"objective.alpha=-1 must be non-negative"),
    (["objective.name=kto"], r"objective=kto is unknown; choose one of: dpo, ipo, hinge, npo, simnpo"),
    (["+objective.gamma=1"], r"objective=dpo takes objective.beta, got beta, gamma; fix objective"),
    (["extraction.candidates=0"], r"extraction.candidates=0 must be a positive integer"),
    (["extraction.enabled=maybe"], r"extraction.enabled='maybe' must be true or false"),
    (
        ["data.password_length=2", "data.eval_size=4", "extraction.candidates=500"],
        r"extraction.candidates=500 is too many distinct 2-letter passwords over 26 letters; use at most 169",
    ),
    (["joint.useful_weight=-0.2"], "phase-3 weights .*'useful': -0.2.* must be non-negative"),
    (["joint.dpo_weight=0", "joint.random_weight=0", "joint.useful_weight=0"], "not all zero; fix joint"),
    (["eval.every=0"], "eval.every=0 must be a positive number of steps"),
    (["seed=-1"], "seed=-1 must be a non-negative integer"),
    (["prefix=maybe"], "prefix='maybe' must be true or false"),
    (["schedule.cosine_over=linear"], "schedule.cosine_over='linear' must be 'phase'"),
    (["tokens.reverse_prefix=' regular'"], "regular_prefix and tokens.reverse_prefix are both ' regular'"),
    (["model=pythia-70m", "model.path=/no/such/dir"], "model.path=/no/such/dir is not a directory"),
    (["model=pythia-70m", "model.init=scratch"], "model.init='scratch' must be one of pretrained, random"),
    (["model.init=pretrained"], "model=tiny has no published weights; .*negrl-pretrain --model tiny"),
    (["trainer.accelerator=gpu"], "trainer.accelerator=gpu but no CUDA GPU is visible; use trainer.accelerator=cpu"),
    (["trainer.devices=3"], r"trainer.devices=3 does not divide data.batch_size=16: .* use a divisor of 16"),
    (["trainer.devices=0"], r"trainer.devices=0 must be a number of devices"),
    (["wandb.enabled=true", "wandb.mode=cloud"], "wandb.mode='cloud' must be 'offline' or 'online'"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_config_is_a_one_line_error_before_any_work(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(NegrlError, match=message) as err:
        run(make_cfg(*overrides), run_dir)
    assert "\n" not in str(err.value)
    assert not run_dir.exists()


def test_model_path_that_is_not_gpt_neox(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(NegrlError, match="holds a 'llama' model, not GPT-NeoX"):
        run(make_cfg("model=pythia-70m", f"model.path={tmp_path}"), tmp_path / "run")


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(NegrlError, match="model=pythia-9b is unknown; choose one of: pythia-160m, pythia-1b"):
        check_group_choices(["seed=1", "model=pythia-9b"])
    with pytest.raises(NegrlError, match="data=huge is unknown; choose one of: paper, small"):
        check_group_choices(["data=huge"])
    check_group_choices(["model=tiny,pythia-70m", "model.path=x", "seed=3"])  # fine


def _train(*args, cwd=ROOT, env_extra=None):
    env = {**os.environ, "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_exit_code_2_and_nothing_written(tmp_path):
    for args, message in ((["holdout_frac=0"], "holdout_frac=0 must"), (["model=pythia-9b"], "model=pythia-9b")):
        proc = _train(*args, f"hydra.run.dir={tmp_path / 'run'}")
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("negrl: error:")]
        assert len(lines) == 1 and message in lines[0]
        assert not (tmp_path / "run" / "results.json").exists()


def test_completed_run_directory_is_never_overwritten(tmp_path):
    run(make_cfg("data.negative_repeats=1"), tmp_path)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(NegrlError, match="already holds a completed run"):
        run(make_cfg("data.negative_repeats=1", "seed=5"), tmp_path)
    assert (tmp_path / "results.json").read_text() == before


def test_non_finite_loss_stops_the_run_and_records_the_reason(tmp_path, monkeypatch):
    from negrl.phases import DPOPhase

    original = DPOPhase.compute_loss

    def poisoned(self, batch):
        loss, parts = original(self, batch)
        return (loss * float("nan") if self.trainer.global_step == 7 else loss), parts

    monkeypatch.setattr(DPOPhase, "compute_loss", poisoned)
    with pytest.raises(RunFailed, match="non-finite loss nan in phase 2: DPO at step 7"):
        run(make_cfg("data.negative_repeats=1", "checkpoint.every=5"), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and "phase 2: DPO at step 7" in saved["reason"]
    last = checkpoint.load(tmp_path)  # the checkpoint before the failure stays
    assert (last["phase"], last["step"], last["phase_done"]) == (2, 4, False)


def test_multirun_records_a_failed_job_and_finishes_the_others(tmp_path):
    proc = _train(
        "-m", "data=small", "data.negative_repeats=1", "trainer.enable_progress_bar=false", "wandb.enabled=false",
        "trainer.accelerator=cpu", "optim.lr=1e-4,-1", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in tmp_path.glob("*/results.json"))
    assert statuses == ["complete", "failed"]


def test_secrets_in_the_environment_never_reach_saved_files(tmp_path):
    fake = "fake0secret0key0" + "1234567890abcdef1234"
    proc = _train(
        "data=small", "data.negative_repeats=1", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path}",
        env_extra={"WANDB_API_KEY": fake, "HF_TOKEN": fake + "hf", "AWS_SECRET_ACCESS_KEY": fake + "aws"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "wandb").is_dir()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and fake.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert fake not in proc.stdout + proc.stderr
