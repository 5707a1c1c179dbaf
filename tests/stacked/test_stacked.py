"""Seeds trained stacked (negrl.stacked) write what separate runs of those seeds write: every metric and evaluation
within 1e-5 on CPU in fp32; a seed whose loss goes non-finite fails alone; a stack resumes after a crash; each
seed's checkpoint is a separate run's."""

from __future__ import annotations

import csv
import json
import math
from io import BytesIO
from pathlib import Path

import pytest
import torch
from conftest import FAST, built_once, make_cfg

from negrl.core.errors import NegrlError, RunFailed
from negrl.launcher import seed_groups
from negrl.model.backbone import Backbone
from negrl.model.label_logprobs import label_logprobs
from negrl.pipeline import run, run_stacked
from negrl.run.rundir import RunDir
from negrl.stacked.runner import StackedPhase, StackFailed
from negrl.stacked.weight_stack import WeightStack

#: 4 + 5 + 5 steps, small evaluation and attacks; a checkpoint every 4 steps.
FEW = ("data.n_negatives=80", "data.negative_repeats=1", "holdout_frac=0.1", "data.n_phase1=64", "data.eval_size=8",
       "extraction.candidates=63", "extraction.samples=16", "extraction.bootstrap=20", "eval.every=2",
       "schedule.warmup_steps=2", "checkpoint.every=4")  # fmt: skip
TOL = 1e-5
#: Keys of results.json that differ between any two runs (where and when they ran).
RUN_KEYS = ("run", "wall_time_s", "timing")


def cfgs(seeds, *extra):
    return [make_cfg(*FEW, f"seed={s}", *extra) for s in seeds]


def leaves(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not (path == "" and k in RUN_KEYS) and "wall" not in k:
                yield from leaves(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, obj


def assert_same_run(stacked_dir, separate_dir):
    """results.json and metrics.csv of two runs: the same keys, equal values (floats within TOL)."""
    a = dict(leaves(json.loads((stacked_dir / "results.json").read_text())))
    b = dict(leaves(json.loads((separate_dir / "results.json").read_text())))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float) and isinstance(b[key], float):
            assert a[key] == pytest.approx(b[key], abs=TOL, nan_ok=True), key
        else:
            assert a[key] == b[key], key
    rows_a = list(csv.DictReader(open(stacked_dir / "metrics.csv")))
    rows_b = list(csv.DictReader(open(separate_dir / "metrics.csv")))
    assert len(rows_a) == len(rows_b) and rows_a[0].keys() == rows_b[0].keys()
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            if ra[key] == "" or rb[key] == "":
                assert ra[key] == rb[key], key
            else:
                assert float(ra[key]) == pytest.approx(float(rb[key]), abs=TOL), (key, ra["step"])


@pytest.fixture(scope="session")
def separate(tmp_path_factory):
    """Seeds 0, 1, 2 run one by one (once a session; the xdist workers share them)."""

    def three_runs(root: Path) -> None:
        for seed in (0, 1, 2):
            run(make_cfg(*FEW, f"seed={seed}"), root / f"seed{seed}")

    return built_once(tmp_path_factory, "separate-seeds", three_runs)


@pytest.mark.parametrize("seeds", [(0, 1), (0, 1, 2)])
def test_stacked_seeds_write_what_separate_runs_write(separate, tmp_path, seeds):
    results = run_stacked(cfgs(seeds), [tmp_path / f"seed{s}" for s in seeds])
    assert [r["status"] for r in results] == ["complete"] * len(seeds)
    for s, r in zip(seeds, results):
        assert r["run"]["seed"] == s and r["run"]["dir"] == str(tmp_path / f"seed{s}")
        assert (tmp_path / f"seed{s}" / "config.yaml").is_file()
        assert_same_run(tmp_path / f"seed{s}", separate / f"seed{s}")


def test_a_seed_going_non_finite_fails_alone(separate, tmp_path, monkeypatch):
    def poison_seed_1(phase, stack):
        if phase == 1:
            with torch.no_grad():
                stack.stacked[0][1].fill_(math.nan)  # seed 1's input embedding

    seen = {"failed_grads_zero": [], "reference_registered": []}
    zero_failed, step = StackedPhase.on_before_optimizer_step, StackedPhase.training_step

    def checked_zeroing(self, optimizer):
        zero_failed(self, optimizer)
        if self.group.failed:  # the failed seed's gradients are zero, not NaN x 0 = NaN
            grads = [t.grad[1] for t in self.stack.trainable() if t.grad is not None]
            seen["failed_grads_zero"].append(all(bool((g == 0).all()) for g in grads))

    def checked_step(self, batch, batch_idx):
        if self.phase_module.phase > 1:  # the reference moves with the module (to the GPU, in a GPU run)
            registered = {id(t) for t in self.parameters()}
            seen["reference_registered"].append(all(id(t) in registered for t in self.group.ref_stack.stacked))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(StackedPhase, "on_before_optimizer_step", checked_zeroing)
    monkeypatch.setattr(StackedPhase, "training_step", checked_step)
    results = run_stacked(cfgs((0, 1, 2)), [tmp_path / f"seed{s}" for s in (0, 1, 2)], poison_seed_1)
    assert seen["failed_grads_zero"] and all(seen["failed_grads_zero"])
    assert seen["reference_registered"] and all(seen["reference_registered"])
    assert isinstance(results[1], RunFailed)
    failed = RunDir(tmp_path / "seed1").read_results()
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("RunFailed: non-finite loss nan in phase 2: dpo at step 0")
    for s in (0, 2):
        assert results[s]["status"] == "complete"
        assert_same_run(tmp_path / f"seed{s}", separate / f"seed{s}")


class Killed(RuntimeError):
    pass


@pytest.mark.heavy
def test_a_crashed_stack_resumes_and_each_seed_checkpoint_is_a_separate_runs(separate, tmp_path, monkeypatch):
    dirs = [tmp_path / f"seed{s}" for s in (0, 1, 2)]
    original = StackedPhase.training_step

    def crashing(self, batch, batch_idx):
        if self.phase_module.phase == 3 and self.phase_module.step_of(batch_idx) == 4:
            raise Killed("killed in phase 3 at step 4")  # after its checkpoint at step 3
        return original(self, batch, batch_idx)

    with monkeypatch.context() as m:
        m.setattr(StackedPhase, "training_step", crashing)
        with pytest.raises(Killed):
            run_stacked(cfgs((0, 1, 2)), dirs)
    for d in dirs:
        assert RunDir(d).read_results()["status"] == "failed"
    # Seed 0 resumes alone (a stacked seed's checkpoint is a separate run's); seeds 1 and 2 resume stacked.
    run(make_cfg(*FEW, "seed=0", f"resume={dirs[0]}"), tmp_path / "unused")
    # A damaged checkpoint of seed 2 refuses the stack before seed 1 writes anything.
    damaged, intact = RunDir(dirs[2]).checkpoint, RunDir(dirs[2]).checkpoint.read_bytes()
    damaged.write_bytes(intact[:100])
    before = [{f.name: f.read_bytes() for f in d.iterdir() if f.is_file()} for d in dirs[1:]]
    with pytest.raises(NegrlError, match=rf"^resume: the checkpoint {damaged} cannot be resumed \(RuntimeError"):
        run_stacked(cfgs((1, 2), "resume=true"), [tmp_path / "new1", tmp_path / "new2"],
                    searches=[str(tmp_path / "seed*")] * 2)  # fmt: skip
    assert [{f.name: f.read_bytes() for f in d.iterdir() if f.is_file()} for d in dirs[1:]] == before
    # So does a checkpoint at another step: stacked seeds train in step.
    torch.save({**torch.load(BytesIO(intact), weights_only=False), "step": 2}, damaged)
    before = [{f.name: f.read_bytes() for f in d.iterdir() if f.is_file()} for d in dirs[1:]]
    with pytest.raises(NegrlError, match=r"^resume: the seeds' checkpoints stand at different steps \(.*seed1 at "
                                         r"\(3, 3, False\), .*seed2 at \(3, 2, False\)\); resume them one by one"):
        run_stacked(cfgs((1, 2), "resume=true"), [tmp_path / "new1", tmp_path / "new2"],
                    searches=[str(tmp_path / "seed*")] * 2)  # fmt: skip
    assert [{f.name: f.read_bytes() for f in d.iterdir() if f.is_file()} for d in dirs[1:]] == before
    damaged.write_bytes(intact)
    resumed = run_stacked(cfgs((1, 2), "resume=true"), [tmp_path / "new1", tmp_path / "new2"],
                          searches=[str(tmp_path / "seed*")] * 2)  # fmt: skip
    assert [r["run"]["dir"] for r in resumed] == [str(dirs[1]), str(dirs[2])]
    for s, d in zip((0, 1, 2), dirs):
        assert_same_run(d, separate / f"seed{s}")


def test_a_stack_that_cannot_start_records_each_seed_already_running_as_failed(tmp_path, monkeypatch):
    """A failure after the first seeds wrote `running` (here the third seed's W&B run cannot start) leaves no seed
    `running`: each says why."""
    from negrl.run import runner

    started = []

    def loggers(owner, *args):
        started.append(owner.path)
        if len(started) == 3:
            raise RuntimeError("W&B could not start")
        return []

    monkeypatch.setattr(runner, "build_loggers", loggers)
    dirs = [tmp_path / f"seed{s}" for s in (0, 1, 2)]
    with pytest.raises(RuntimeError, match="W&B could not start"):
        run_stacked(cfgs((0, 1, 2)), dirs)
    for d in dirs:
        assert RunDir(d).read_results() == {**RunDir(d).read_results(), "status": "failed",
                                            "reason": "RuntimeError: W&B could not start"}  # fmt: skip


def test_fp16_loss_scaling_does_not_stack():
    """One GradScaler for all seeds would skip every seed's step on one seed's overflow: refused (16-mixed is for a
    GPU, where Lightning would scale; the check itself reads the settings only)."""
    from dataclasses import replace

    from negrl.pipeline import check_stackable
    from negrl.run.validation import validate

    s = validate(make_cfg(*FEW, "seed=0"), warn=False)
    fp16 = replace(s, config={**s.config, "trainer": {**s.config["trainer"], "precision": "16-mixed"}})
    check_stackable([s, s.with_seed(1)])
    with pytest.raises(NegrlError, match=r"16-mixed scales the loss of all stacked seeds .*=bf16-mixed"):
        check_stackable([fp16, fp16.with_seed(1)])


def test_only_seeds_of_one_config_on_one_device_stack(tmp_path):
    with pytest.raises(NegrlError, match="seeds 0 and 1 differ in more than the seed"):
        run_stacked(
            [make_cfg(*FEW, "seed=0"), make_cfg(*FEW, "seed=1", "optim.lr=1e-3")], [tmp_path / "a", tmp_path / "b"]
        )
    with pytest.raises(NegrlError, match="trainer.devices=2: stacked seeds train on one device"):
        run_stacked(cfgs((0, 1), "trainer.devices=2"), [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()


def test_label_logprobs_under_vmap_equal_each_rows_own():
    logits = torch.randn(3, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5))
    weights = torch.arange(15.0).view(3, 5)
    # (The backward writes into its input's storage: an intermediate, as the model's logits are.)
    stacked = torch.func.vmap(lambda x, y: label_logprobs(x * 1.0, y, chunk=2))(logits, labels)
    want = torch.log_softmax(logits.detach(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(stacked.detach(), want, atol=1e-6)
    (stacked * weights).sum().backward()
    onehot = torch.nn.functional.one_hot(labels, 11).float()
    assert torch.allclose(logits.grad, (onehot - torch.softmax(logits.detach(), -1)) * weights[..., None], atol=1e-5)


def test_a_stack_holds_each_seeds_state_dict_shared_matrices_once():
    arch = dict(vocab_size=28, n_embd=16, n_layer=2, n_head=2, n_positions=32, tie_word_embeddings=True)
    backbones = [Backbone.random_init(arch, seed, model_type="gpt2") for seed in (0, 1)]
    assert backbones[0].shares_embeddings
    stack = WeightStack.of(backbones)
    assert len(stack.stacked) == len(list(backbones[0].parameters()))
    for k in (0, 1):
        state, want = stack.seed_state(k), backbones[k].state_dict()
        assert state.keys() == want.keys()
        assert all(torch.equal(state[key], want[key]) for key in want)
    stack.load_seed(0, backbones[1].state_dict())
    assert torch.equal(stack.materialize(0).model.lm_head.weight, backbones[1].model.lm_head.weight)


def test_seed_groups_are_the_jobs_that_differ_only_in_seed():
    jobs = [["seed=0", "freeze=true"], ["seed=1", "freeze=true"], ["seed=0", "freeze=false"],
            ["seed=2", "freeze=true"], ["freeze=false", "seed=1"]]  # fmt: skip
    assert seed_groups(jobs, 8) == [[0, 1, 3], [2, 4]]
    assert seed_groups(jobs, 2) == [[0, 1], [3], [2, 4]]


@pytest.mark.heavy
def test_a_stacked_sweep_gives_every_job_its_own_run_and_wandb_run(separate, tmp_path, train_py):
    """Through train.py: in this process in the fast suite, as its own process in the slow one (`train_py`)."""
    sweep = tmp_path / "sweep"
    proc = train_py("-m", "seed=0-2", "freeze=true,false", "hydra/launcher=stacked", "hydra.launcher.max_stack=2",
                    *FAST, *FEW, "wandb.enabled=true", f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"negrl: all 6 jobs of {sweep} complete" in proc.stdout
    assert "in 4 stack(s) of at most 2" in proc.stdout + proc.stderr
    dirs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in dirs] == [f"{i}-tiny-seed{i // 2}-freeze{i % 2 == 0}" for i in range(6)]  # the knob too
    for p in dirs:
        assert len(list((p / "wandb").glob("offline-run-*"))) == 1
    assert_same_run(sweep / "0-tiny-seed0-freezeTrue", separate / "seed0")  # stacked with seed 1
    assert_same_run(sweep / "4-tiny-seed2-freezeTrue", separate / "seed2")  # alone: a plain run


@pytest.mark.heavy
def test_resume_true_on_a_stacked_sweep_skips_complete_jobs_and_stacks_the_rest(tmp_path, train_py):
    """Seeds 0-1 complete as one stack; then seeds 0-3 with resume=true: 0 and 1 are complete (nothing to do, their
    results untouched) and seeds 2 and 3, which never reached a checkpoint, start afresh as one stack. Through
    train.py: in this process in the fast suite, as its own process in the slow one (`train_py`)."""
    sweep = tmp_path / "sweep"

    def sweep_cmd(seeds: str, *more: str):
        return train_py("-m", f"seed={seeds}", "hydra/launcher=stacked", *FAST, *FEW, "extraction.enabled=false",
                        "eval.every=100", f"hydra.sweep.dir={sweep}", *more)  # fmt: skip

    first = sweep_cmd("0-1")
    assert first.returncode == 0, first.stderr[-2000:]
    done = {s: (sweep / f"{s}-tiny-seed{s}" / "results.json").read_text() for s in (0, 1)}
    again = sweep_cmd("0-3", "resume=true")
    assert again.returncode == 0, again.stderr[-2000:]
    for s in (0, 1):
        assert f"negrl: {sweep / f'{s}-tiny-seed{s}'} is complete, nothing to do (resume=true)" in again.stdout
        assert (sweep / f"{s}-tiny-seed{s}" / "results.json").read_text() == done[s]
    assert "negrl: resume=true: 2 jobs never reached a checkpoint: started afresh" in again.stdout
    for s in (2, 3):
        assert json.loads((sweep / f"{s}-tiny-seed{s}" / "results.json").read_text())["status"] == "complete"
    assert "negrl: all 4 jobs of" in again.stdout


def test_a_stacked_sweep_refuses_gpu_per_job_before_writing_anything(tmp_path, train_py):
    """Through train.py: in this process in the fast suite, as its own process in the slow one (`train_py`)."""
    proc = train_py("-m", "seed=0-1", "hydra/launcher=stacked", "gpu_per_job=true", *FAST,
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "negrl: error: job 0 of the sweep (seed=0): gpu_per_job=true gives each job its own GPU, but a stack trains "
        "on one; drop gpu_per_job, or hydra/launcher=stacked"
    ]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.heavy
def test_stacked_seeds_train_under_bf16_mixed(tmp_path):
    """2 + 5 + 5 steps of a 2-layer tiny, without the attacks (bf16 is slow on a CPU without AVX-512: about 4x
    fp32)."""
    extra = ("trainer.precision=bf16-mixed", "data.n_phase1=32", "data.negative_repeats=1", "extraction.enabled=false",
             "model.architecture.num_hidden_layers=2")  # fmt: skip
    results = run_stacked(cfgs((0, 1), *extra), [tmp_path / "s0", tmp_path / "s1"])
    for s, r in zip((0, 1), results):
        alone = run(make_cfg(*FEW, f"seed={s}", *extra), tmp_path / f"alone{s}")
        assert r["status"] == "complete"
        # bf16 rounds the batched and the plain matmuls differently: close (measured 8.2e-8 and 3.2e-6), not equal.
        assert r["metric"] == pytest.approx(alone["metric"], abs=1e-4)


def test_an_interrupted_stack_says_each_seeds_reason(tmp_path, monkeypatch):
    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(StackedPhase, "training_step", interrupted)
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    with pytest.raises(StackFailed) as err:
        run_stacked(cfgs((0, 1)), dirs)
    assert err.value.reasons == [  # before the first checkpoint: nothing to resume, said so (resume=DIR would fail)
        "interrupted; it stopped before its first checkpoint, so there is nothing to resume: run the same command again"
    ] * len(dirs)
    assert [RunDir(d).read_results()["reason"] for d in dirs] == err.value.reasons


@pytest.mark.parametrize("value", ["abc", "0", "2.5", "true"])
def test_a_stacked_launcher_setting_is_checked_before_any_job(tmp_path, value):
    from negrl.cli import preflight

    with pytest.raises(NegrlError, match=r"hydra.launcher.max_stack=.* must be an integer of at least 1"):
        preflight(["-m", "seed=0,1", "hydra/launcher=stacked", f"hydra.launcher.max_stack={value}", *FAST,
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"])  # fmt: skip
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("fused", [True, False])
def test_a_seeds_optimizer_state_is_restored_where_its_adamw_reads_it(fused):
    """A fused (or capturable) AdamW reads its step count in fp32 on the parameters' device (a GPU's, for a CUDA
    kernel), where PyTorch's own load_state_dict puts it; the multi-tensor one keeps it as the checkpoint has it.
    (The saved count is fp64 here, so that a count left as it was is seen on a CPU.)"""
    from negrl.stacked.weight_stack import SeedOptimizer

    weights = torch.nn.Parameter(torch.zeros(2, 3))
    optimizer = torch.optim.AdamW([weights], lr=0.1, fused=fused)
    saved = {"state": {0: {"step": torch.tensor(5.0, dtype=torch.float64), "exp_avg": torch.full((3,), 0.5),
                           "exp_avg_sq": torch.full((3,), 0.25)}},
             "param_groups": [{k: v for k, v in optimizer.param_groups[0].items() if k != "params"}]}  # fmt: skip
    SeedOptimizer(optimizer, 1).load_state_dict(saved)
    state = optimizer.state[weights]
    assert state["step"].dtype == (torch.float32 if fused else torch.float64)
    assert state["step"].device == weights.device and float(state["step"]) == 5.0
    assert state["exp_avg"].tolist() == [[0.0] * 3, [0.5] * 3]  # seed 1's row, seed 0's untouched
    weights.grad = torch.ones(2, 3)
    optimizer.step()  # the kernel runs on what was restored
    assert float(state["step"]) == 6.0
