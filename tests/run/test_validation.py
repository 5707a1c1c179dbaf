"""Bad input: a one-line error naming the value and the fix, exit code 2, nothing written."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import FEW_STEPS, ROOT, make_cfg

from negrl.cli import check_group_choices
from negrl.core.errors import NegrlError, RunFailed
from negrl.pipeline import run
from negrl.run import checkpoint
from negrl.run.rundir import RunDir
from negrl.run.validation import validate

CASES = [
    (["holdout_frac=0"], "holdout_frac=0 must be > 0 and < 1; fix holdout_frac"),
    (["holdout_frac=1.5"], "holdout_frac=1.5 must be > 0 and < 1"),
    (["holdout_frac=0.0123"], "holdout_frac=0.0123 gives 3.936 held-out .* not a positive whole number"),
    (["data=paper", "holdout_frac=0.025"], "64 held-out .* fewer than data.eval_size=128"),
    (["data.batch_size=0"], "data.batch_size=0 must be >= 1 \\(a positive integer\\)"),
    (["data.batch_size=-16"], "data.batch_size=-16 must be >= 1"),
    (["data.negative_repeats=0"], "data.negative_repeats=0 must be >= 1"),
    (["data.password_length=0"], "data.password_length=0 must be >= 1"),
    (["data.n_phase1=100"], "data.n_phase1=100 is not a multiple of data.batch_size=16"),
    (["optim.lr=0"], "optim.lr=0 must be > 0; fix optim.lr"),
    (["optim.lr=-1e-4"], "optim.lr=-0.0001 must be > 0"),
    (["optim.weight_decay=-0.01"], "optim.weight_decay=-0.01 must be >= 0"),
    (["optim.fused=sometimes"], "optim.fused='sometimes' is not allowed; choose one of: auto, true, false"),
    (["compute.fused_logprobs=yes"], "compute.fused_logprobs='yes' must be true or false"),
    (["compute.attention=flash"], "compute.attention='flash' is not allowed; choose one of: eager, sdpa"),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs a GPU .*silently run bf16-mixed"),
    (["dpo.beta=0"], "dpo.beta=0 must be > 0"),
    (["objective=ipo", "objective.tau=0"], r"objective.tau=0 must be positive for objective=ipo"),
    (["objective=unlikelihood", "objective.alpha=-1"], r"objective.alpha=-1 must be non-negative"),
    (["objective.name=ppo"], r"objective=ppo is unknown; choose one of: dpo, ipo, hinge, npo, simnpo, .*, kto, "
                             r"kto_undesirable, orpo, cpo, simpo, grad_diff, wga, undial, rmu$"),
    (["+objective.gamma=1"], r"objective=dpo takes objective.beta, objective.label_smoothing, got beta, gamma, "
                             r"label_smoothing; fix objective"),
    (["objective=robust", "objective.label_smoothing=0.5"], r"objective.label_smoothing=0.5 must be in \[0, 0.5\)"),
    (["objective=exo_pair", "objective.label_smoothing=0"], r"objective.label_smoothing=0 must be in \(0, 1\)"),
    (["objective=kto", "objective.undesirable_weight=-1"], r"objective.undesirable_weight=-1 must be non-negative"),
    (["objective=rmu", "objective.layer=2"], r"objective.layer=2 is in the half phase 2 freezes \(layers 2 ... 3 of "
                                             r"model=tiny\), so rmu could not train it there; use objective.layer<2 "
                                             r"or freeze=false"),
    (["objective=rmu", "objective.layer=4", "freeze=false"], r"objective.layer=4 must be a layer index 0 ... 3"),
    (["extraction.candidates=0"], r"extraction.candidates=0 must be >= 1"),
    (["extraction.enabled=maybe"], r"extraction.enabled='maybe' must be true or false"),
    (
        ["data.password_length=3", "extraction.candidates=5000"],
        r"extraction.candidates=5000 is too many distinct 3-letter passwords over 26 letters; use at most 4394",
    ),
    (["joint.useful_weight=-0.2"], "joint.useful_weight=-0.2 must be >= 0"),
    (["joint.objective_weight=0", "joint.random_weight=0", "joint.useful_weight=0"], "are all zero; set at least one"),
    (["eval.every=0"], "eval.every=0 must be >= 1"),
    (["seed=-1"], "seed=-1 must be >= 0 and <= 4294967295"),
    (["prefix=maybe"], "prefix='maybe' must be true or false"),
    (["schedule.cosine_over=linear"], "schedule.cosine_over='linear' is not allowed; choose one of: phase, decay"),
    (["tokens.reverse_prefix=' regular'"], "regular_prefix and tokens.reverse_prefix are both ' regular'"),
    (["model=pythia-70m", "model.path=/no/such/dir"], "model.path=/no/such/dir is not a directory"),
    (["model=pythia-70m", "model.init=scratch"], "model.init='scratch' is not allowed; choose one"),
    (["model.init=pretrained"], "model=tiny has no published weights; .*negrl-pretrain --model tiny"),
    (["trainer.accelerator=gpu"], "trainer.accelerator=gpu but no CUDA GPU is visible; use trainer.accelerator=cpu"),
    (["trainer.devices=3"], r"trainer.devices=3 does not divide data.batch_size=16: .* use a divisor of 16"),
    (["trainer.devices=0"], r"trainer.devices=0 must be a number of devices"),
    # Any key: a declared type, finite, in range; unknown keys named with the nearest valid one.
    (["holdout_frac=abc"], "holdout_frac='abc' must be a number; fix holdout_frac"),
    (["optim.lr=abc"], "optim.lr='abc' must be a number"),
    (["joint.objective_weight=abc"], "joint.objective_weight='abc' must be a number"),
    (["joint.objective_weight=nan"], "joint.objective_weight=nan is not a finite number"),
    (["optim.betas=[0.9,inf]"], r"optim.betas\[1\]=inf is not a finite number"),
    (["objective=hinge", "objective.delta=inf"], "objective.delta=inf is not a finite number"),
    (["seed=4294967296"], "seed=4294967296 must be >= 0 and <= 4294967295"),
    (["seed=1.5"], "seed='1.5' must be an integer"),
    (["data.n_phase1=abc"], "data.n_phase1='abc' must be an integer"),
    (["freeze=1"], "freeze=1 must be true or false"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu' is not allowed; choose one of: auto, cpu, gpu"),
    (["trainer.precision=64"], "trainer.precision='64' is not allowed; choose one of: 32-true"),
    (["+holdout_fraction=0.1"], "holdout_fraction is not a negrl setting; did you mean holdout_frac"),
    (["+optim.learning_rate=1"], "optim.learning_rate is not a negrl setting"),
    (["+trainer.limit_train_batches=0.5"], "trainer.limit_train_batches is a Lightning setting that would change"),
    (["+trainer.accumulate_grad_batches=4"], "trainer.accumulate_grad_batches is a Lightning setting"),
    (["+trainer.max_steps=10"], "trainer.max_steps is a Lightning setting"),
    (["+trainer.precison=32"], "trainer.precison is not a negrl setting; did you mean trainer.precision"),
    (["+model.architecture.hidden_sise=8"], "architecture.hidden_sise .* mean model.architecture.hidden_size"),
    (["data.password_length=1"], "data.password_length=1 over 26 letters gives 26 distinct passwords, fewer than"),
    (["data.n_negatives=1000000000"], r"the passwords of data.\* need about .* GiB, more than the .* GiB of memory"),
    (["extraction.candidates=100000000"], r"extraction.candidates need about .* GiB, more than"),
    (["extraction.samples=1000000000"], r"extraction.samples=1000000000 needs about .* GiB for its decoding \(each "
     r"candidate's key-value cache and scores\), more than the .* GiB of memory available here; lower extraction.s"),
    (["extraction.bootstrap=1000000000"], r"extraction.bootstrap=1000000000 needs about .* GiB for its resamples"),
    (["data.password_length=63"], r"data.password_length=63 needs up to 65 positions \(a prefix and a BOS before the "
     r"letters\), more than model=tiny's 64; use data.password_length=62 or less"),
    (["wandb.enabled=true", "wandb.mode=cloud"], "wandb.mode='cloud' is not allowed; choose one of: offline, online"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_config_is_a_one_line_error_before_any_work(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(NegrlError, match=message) as err:
        run(make_cfg(*overrides), run_dir)
    assert "\n" not in str(err.value)
    assert not run_dir.exists()


def test_every_size_is_bounded_in_time_where_memory_would_allow_it(monkeypatch):
    """On a machine with memory enough for anything, a run of about 1,000 paper runs' work is refused: a size
    mistyped by a factor of 1,000 (phase 1's passwords, 1% of the paper's work: 1,000,000), whichever it is."""
    from negrl.run import validation

    monkeypatch.setattr(validation, "available_memory", lambda: 2**60)
    validate(make_cfg("data=paper", "data.negative_repeats=600", "extraction.samples=1024"), warn=False)  # 10 paper
    pattern = (r"^this run would make about .* token passes, .* times the most a run may make \(6.9e\+10, about 780 "
               r"paper runs\), .* of them in .*; lower those sizes$")  # fmt: skip
    for mistyped in ("data.negative_repeats=60000", "data.n_phase1=8192000000", "extraction.samples=1024000000",
                     "extraction.candidates=4095000000"):  # fmt: skip
        with pytest.raises(NegrlError, match=pattern):
            validate(make_cfg("data=paper", mistyped), warn=False)


def test_model_path_of_another_family_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(
        NegrlError,
        match="holds a 'llama' model, but model=pythia-70m is 'gpt_neox'; choose the model= of the checkpoint's family",
    ):
        run(make_cfg("model=pythia-70m", f"model.path={tmp_path}"), tmp_path / "run")


def test_a_checkpoint_of_another_architecture_than_model_is_refused(tmp_path):
    """`model=tiny model.path=DIR` with a 128-wide checkpoint: refused, naming both (it would train the
    128-wide model while config.yaml records tiny's 64)."""
    from negrl.model.backbone import Backbone

    wide = make_cfg("model=tiny-h128").model.architecture
    Backbone.random_init(dict(wide), seed=0).model.save_pretrained(tmp_path / "h128")
    with pytest.raises(NegrlError, match=r"does not match model=tiny \(hidden_size 128 vs 64, intermediate_size"):
        run(make_cfg("model.init=pretrained", f"model.path={tmp_path / 'h128'}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("corrupt", ["config", "weights", "nan"])
def test_a_broken_checkpoint_is_refused_in_one_line(tmp_path, corrupt):
    from negrl.model.backbone import Backbone

    ckpt = tmp_path / "ckpt"
    backbone = Backbone.random_init(dict(make_cfg().model.architecture), seed=0)
    if corrupt == "nan":
        backbone.model.get_input_embeddings().weight.data[0, 0] = float("nan")
    backbone.model.save_pretrained(ckpt)
    if corrupt == "config":
        (ckpt / "config.json").write_text('{"model_type": "gpt_neox", ')
    if corrupt == "weights":
        (ckpt / "model.safetensors").unlink()
    message = {"config": "config.json is not a valid JSON object", "weights": "has no weights",
               "nan": "weight gpt_neox.embed_in.weight holds non-finite values"}[corrupt]  # fmt: skip
    with pytest.raises(NegrlError, match=message) as err:
        run(make_cfg("model.init=pretrained", f"model.path={ckpt}"), tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_wandb_online_without_a_login_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = make_cfg("wandb.enabled=true", "wandb.mode=online")
    with pytest.raises(NegrlError, match=r"wandb.mode=online but no W&B login was found .* use wandb.mode=offline"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    from negrl.run.tracking import wandb_login_found

    assert wandb_login_found()


def test_resume_no_means_no_resume():
    from negrl.run.config import check_config

    for text, value in (("no", False), ("false", False), ("yes", True), ("true", True), ("runs/x", "runs/x")):
        assert check_config(make_cfg(f"resume={text}"))["resume"] == value


def test_degenerate_but_legal_settings_warn_in_one_line(capsys):
    from negrl.run.validation import validate

    validate(make_cfg("eval.every=10"))
    err = capsys.readouterr().err.splitlines()
    assert "negrl: warning: eval.every=10 is as long as phase 1 (8 steps): evaluated only after step 0 there" in err
    assert any(ln.startswith("negrl: warning: schedule.warmup_steps=100 is longer than every phase") for ln in err)
    validate(make_cfg("data=paper", "data.negative_repeats=60"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_warns_in_one_line(capsys, monkeypatch, native):
    from negrl.run import validation

    monkeypatch.setattr(validation, "native_cpu_bf16", lambda: native)
    paper = ("data=paper", "data.negative_repeats=60", "trainer.accelerator=cpu")  # nothing else to warn about
    validation.validate(make_cfg(*paper, "trainer.precision=bf16-mixed"))
    err = capsys.readouterr().err.splitlines()
    if native:
        assert err == []
    else:
        assert len(err) == 1 and err[0].startswith("negrl: warning: trainer.precision=bf16-mixed on a CPU without")
        assert "emulates bf16 matmuls" in err[0] and err[0].endswith("use trainer.precision=32-true on this CPU")
    validation.validate(make_cfg(*paper, "trainer.precision=32-true"))
    assert capsys.readouterr().err == ""


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(
        NegrlError, match="model=pythia-9b is unknown; choose one of: gemma-3-270m, gpt2, .*, pythia-160m, pythia-1b"
    ):
        check_group_choices(["seed=1", "model=pythia-9b"])
    with pytest.raises(NegrlError, match="data=huge is unknown; choose one of: paper, small"):
        check_group_choices(["data=huge"])
    check_group_choices(["model=tiny,pythia-70m", "model.path=x", "seed=3"])  # fine


def _train(*args, cwd=ROOT, env_extra=None):
    env = {**os.environ, "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "argv", [["seed=0-2", "objective=dpo,npo"], ["seed=7,0,3", "model=tiny-gpt2,tiny", "adapter=lora"]]
)
def test_a_sweeps_seed_variants_get_the_settings_of_their_own_composition(argv):
    """validate_sweep composes and validates a job once for all its seeds (the seed alone checked for the others):
    every job's settings equal `validate` on that job composed whole (the config, the seed, the attacks' seed)."""
    from negrl.run.overrides import compose_job, expand_ranges, read_command_line, sweep_jobs
    from negrl.run.validation import validate_sweep

    cmd = read_command_line(expand_ranges(["-m", "data=small", *argv]))
    jobs, swept = sweep_jobs(cmd.parser, cmd.overrides, cmd.base)
    assert len(jobs) == 6 and swept == {"seed", argv[1].partition("=")[0]}
    got = validate_sweep(jobs, swept, ROOT / "conf")
    want = [validate(compose_job(job), warn=False) for job in jobs]
    assert got == want and len({s.attacks.seed for s in got}) == 3
    with pytest.raises(NegrlError, match=r"^job 1 of the sweep \(seed=-1\): seed=-1 must be >= 0"):
        validate_sweep([["seed=0"], ["seed=-1"]], {"seed"}, ROOT / "conf")


@pytest.mark.parametrize("value", ["x", "7.5", "-1", "4294967296", "null"])
def test_a_seed_checked_alone_is_refused_as_in_its_whole_config(value):
    from negrl.run.overrides import compose_job, override_parser
    from negrl.run.validation import validate_sweep

    with pytest.raises(NegrlError) as whole:
        validate(compose_job([f"seed={value}"]), warn=False)
    assert override_parser().parse_overrides([f"seed={value}"])  # a valid override: its value is refused
    with pytest.raises(NegrlError) as alone:  # job 1 differs from job 0 only in its seed: checked alone
        validate_sweep([["seed=0"], [f"seed={value}"]], {"seed"}, ROOT / "conf")
    assert str(alone.value) == f"job 1 of the sweep (seed={value}): {whole.value}"


CLI_CASES = [
    (["holdout_frac=0"], "holdout_frac=0 must"),
    (["model=pythia-9b"], "model=pythia-9b"),
    (["holdout_frac=abc"], "holdout_frac='abc' must be a number"),
    (["foo=bar"], "foo is not a negrl setting"),
    (["seed=0,1"], "seed=0,1 lists several values; sweep them with -m"),
    (["-m", "seed=0-1,x"], r"job 2 of the sweep \(seed=x\): seed='x' must be an integer"),
    (["-m", "holdout_frac=0.05-0.1"], r"^job 0 of the sweep: holdout_frac='0.05-0.1' must be a number"),
    (["ablation=no-prefix"], r"ablation is a config group that is not in the defaults: add it with a plus, "
                             r"\+ablation=<option> \(options: no-freeze, no-prefix, none\)$"),
    (["-m", "seed=0,1", "hydra/launcher=stack"],
     r"available options in 'hydra/launcher': basic, joblib, local, slurm, stacked, submitit_local, submitit_slurm$"),
    (["model.architecture.vocab_size=10"], r"model.architecture.vocab_size=10 is smaller than model=tiny's built-in "
                                           r"vocabulary \(28 tokens: 26 letters and the 2 prefixes\)"),
    # a key of other options of its config group: those options are named, never the key itself as the fix
    (["objective.tau=0.5"], r"objective.tau is not a setting of the chosen objective=; it belongs to "
                            r"objective=discopop, objective=ipo:"),
    (["model.tokenizer=X"], r"model.tokenizer is not a setting of the chosen model=; it belongs to model=gemma-3-270m"),
    (["model.foo=1"], r"model.foo is not a negrl setting; valid keys here: name, model_type"),
    # values only transformers, torch or peft would check, refused before any work (the model's meta-device twin)
    (["model.architecture.hidden_size=63"],
     r"model.architecture of model=tiny does not build \(.*hidden_size=63.*\): ValueError: The hidden size is not "
     r"divisible by the number of attention heads"),
    (["model=tiny-gpt2", "model.architecture.n_head=3"], r"\(vocab_size=28, n_embd=64, n_head=3, n_layer=4\): `embed"),
    (["model=tiny-llama-3.2", "model.architecture.num_key_value_heads=3"],
     r"model=tiny-llama-3.2 does not build \(.*num_key_value_heads=3\): The size of tensor a \(4\) must match"),
    (["adapter=lora", "adapter.rank=100000"],
     r"adapter.rank=100000 is larger than the smallest adapted layer of model=tiny \(64\); use adapter.rank <= 64"),
    (["model=pythia-70m", "model.init=random", "model.tokenizer=/nonexistent/tokenizer.json"],
     r"model.tokenizer=/nonexistent/tokenizer.json does not exist; give a tokenizer.json or a directory"),
]  # fmt: skip


@pytest.mark.parametrize("args,message", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_a_refused_command_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch, args, message):
    """What train.py runs before Hydra starts, in a scratch working directory (where runs/ would land)."""
    from negrl.cli import check_group_choices, expand_ranges, preflight

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NegrlError, match=message) as err:
        argv = expand_ranges([*args, "data=small"])
        check_group_choices(argv)
        preflight(argv)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_exit_code_2_one_line_and_no_directory_left(tmp_path, train_py):
    """Through train.py, for an error of the model's checks (the other refusals: the in-process tests above, and
    through train.py in tests/test_sweeps.py and tests/stacked/test_stacked.py): in this process in the fast suite,
    as its own process in the slow one (`train_py`; a refusal after torch's import, through a process of its own in
    the fast suite: tests/model/test_models.py's unreachable hub)."""
    for args, message in (
        (
            ["tokens.letters=12345", "model=pythia-70m", "model.init=random", "model.tokenizer=/no/tokenizer.json"],
            r"model.tokenizer=/no/tokenizer.json does not exist; give a tokenizer.json",
        ),
    ):
        proc = train_py(*args, "data=small", cwd=tmp_path, env={"WANDB_MODE": "offline"})
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("negrl: error:"), proc.stderr
        assert re.search(message, lines[0]), lines[0]
        assert list(tmp_path.iterdir()) == []


def test_a_refused_command_leaves_a_completed_run_directory_untouched(tmp_path):
    from negrl.cli import preflight

    run(make_cfg(*FEW_STEPS, "extraction.enabled=false"), tmp_path / "done")
    (tmp_path / "done" / ".hydra").mkdir()
    (tmp_path / "done" / ".hydra" / "config.yaml").write_text("the original")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")}
    with pytest.raises(NegrlError, match="already holds a completed run"):
        preflight(["seed=3", "data=small", "data.negative_repeats=1", f"hydra.run.dir={tmp_path / 'done'}"])
    proc = _train("optim.lr=abc", f"hydra.run.dir={tmp_path / 'done'}")
    assert proc.returncode == 2 and proc.stderr.count("negrl: error:") == 1, proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "done").rglob("*")} == before
    assert (tmp_path / "done" / ".hydra" / "config.yaml").read_text() == "the original"


def test_completed_run_directory_is_never_overwritten(tmp_path):
    run(make_cfg(*FEW_STEPS, "extraction.enabled=false"), tmp_path)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(NegrlError, match="already holds a completed run"):
        run(make_cfg(*FEW_STEPS, "extraction.enabled=false", "seed=5"), tmp_path)
    assert (tmp_path / "results.json").read_text() == before


def test_non_finite_loss_stops_the_run_and_records_the_reason(tmp_path, monkeypatch):
    from negrl.method.phases import ObjectivePhase

    original = ObjectivePhase.compute_loss

    def poisoned(self, batch):
        loss, parts = original(self, batch)
        return (loss * float("nan") if self.trainer.global_step == 7 else loss), parts

    monkeypatch.setattr(ObjectivePhase, "compute_loss", poisoned)
    with pytest.raises(RunFailed, match=r"loss nan in phase 2: dpo at step 7; lower optim.lr \(now 0.0001\)$"):
        run(make_cfg(*FEW_STEPS, "extraction.enabled=false", "checkpoint.every=5"), tmp_path)  # phase 2: 10 steps
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and "phase 2: dpo at step 7" in saved["reason"]
    last = checkpoint.load(RunDir(tmp_path))  # the checkpoint before the failure stays
    assert (last["phase"], last["step"], last["phase_done"]) == (2, 4, False)


def test_non_finite_loss_names_the_part_that_went_non_finite(tmp_path, monkeypatch):
    from negrl.method.phases import JointPhase

    original = JointPhase.compute_loss

    def poisoned(self, batch):
        loss, parts = original(self, batch)
        parts["ntp_useful"] = parts["ntp_useful"] * float("inf")
        return loss + parts["ntp_useful"], parts

    monkeypatch.setattr(JointPhase, "compute_loss", poisoned)
    with pytest.raises(RunFailed, match=r"loss inf in phase 3: joint at step 0 \(ntp_useful=inf\); lower optim.lr"):
        run(make_cfg(*FEW_STEPS, "extraction.enabled=false", "objective=npo"), tmp_path)
    assert "or try trainer.precision=32-true" not in json.loads((tmp_path / "results.json").read_text())["reason"]


def test_multirun_with_a_bad_value_in_any_job_is_refused_before_any_job_runs(tmp_path, train_py):
    """Through train.py: in this process in the fast suite, as its own process in the slow one (`train_py`)."""
    proc = train_py(
        "-m", "data=small", "wandb.enabled=false", "trainer.accelerator=cpu", "optim.lr=1e-4,-1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", env={"WANDB_MODE": "offline"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "negrl: error: job 1 of the sweep (optim.lr=-1): optim.lr=-1 must be > 0; fix optim.lr"
    )
    assert not (tmp_path / "sweep").exists()


@pytest.mark.heavy
def test_multirun_records_a_failed_job_finishes_the_others_and_exits_1(tmp_path, train_py):
    """Job 1 crashes mid-run (its checkpoint folder cannot be created): recorded `failed`, job 0 completes, and
    the sweep ends with a summary line and exit code 1. Through train.py: in this process in the fast suite, as its
    own process in the slow one (`train_py`); no attacks (nothing here reads them)."""
    (tmp_path / "1-tiny-seed1").mkdir(parents=True)
    (tmp_path / "1-tiny-seed1" / "checkpoints").write_text("a file where the checkpoint folder goes")
    proc = train_py(
        "-m", "data=small", *FEW_STEPS, "extraction.enabled=false", "trainer.enable_progress_bar=false",
        "wandb.enabled=false", "trainer.accelerator=cpu", "seed=0,1", f"hydra.sweep.dir={tmp_path}",
        env={"WANDB_MODE": "offline"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in tmp_path.glob("*/results.json")}
    assert statuses == {"0-tiny-seed0": "complete", "1-tiny-seed1": "failed"}
    summary = [ln for ln in proc.stderr.splitlines() if "jobs failed" in ln]
    assert len(summary) == 1 and summary[0].startswith("negrl: 1 of 2 jobs failed: 1-tiny-seed1 (FileExistsError")


@pytest.mark.heavy
def test_secrets_in_the_environment_never_reach_saved_files(tmp_path, train_py):
    """Through train.py: in this process in the fast suite, as its own process in the slow one (`train_py`); every
    file a run writes (the attacks write none of their own: their figures go to results.json and metrics.csv)."""
    fake = "fake0secret0key0" + "1234567890abcdef1234"
    proc = train_py(
        "data=small", *FEW_STEPS, "extraction.enabled=false", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}",
        env={"WANDB_MODE": "offline", "WANDB_API_KEY": fake, "HF_TOKEN": fake + "hf",
             "AWS_SECRET_ACCESS_KEY": fake + "aws"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "wandb").is_dir()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and fake.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert fake not in proc.stdout + proc.stderr
    assert "anonymous setting" not in proc.stdout + proc.stderr  # Lightning's anonymous=None is not passed on


def test_an_unwritable_run_directory_is_refused_before_any_work(tmp_path, monkeypatch):
    # root may write anywhere, so the permission answer is what the test controls
    monkeypatch.setattr("negrl.run.rundir.os.access", lambda path, mode: False)
    with pytest.raises(NegrlError, match=r"cannot write the run directory .*run \(.* is not writable\)"):
        run(make_cfg(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg", ["seed=0-7", "model=nope", "+optim.learning_rate=1", "holdout_frac=2", "seed=0,1"])
def test_a_mistyped_command_is_refused_before_torch_is_imported(arg):
    """Ranges, group choices, unknown keys, a value's type and range: refused in about a second (measured 0.6-0.9 s
    on 2 loaded cores; 16 s when the refusal waited for torch and the model code)."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['train.py', {arg!r}]\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("negrl: error: ")
