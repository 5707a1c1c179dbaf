"""A killed run resumed from its last checkpoint ends with the uninterrupted run's numbers."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FEW_STEPS, Killed, built_once, kill_at, make_cfg

from negrl.core.errors import NegrlError
from negrl.method.phases import JointPhase, ObjectivePhase
from negrl.pipeline import run
from negrl.run import checkpoint
from negrl.run.rundir import RunDir

#: A checkpoint every EVERY steps of a phase (and at its end).
EVERY = 3
#: The tests' runs: 4 + 10 + 10 steps of 16 (80 negatives, 8 held out), small attacks (conftest's FAST).
ARGS = (*FEW_STEPS, f"checkpoint.every={EVERY}")
#: ARGS without the attacks and evaluated only after step 0 of each phase: the runs whose numbers no test compares.
QUICK = (*ARGS, "extraction.enabled=false", "eval.every=100")


def killed_run(monkeypatch, run_dir, phase_cls=ObjectivePhase, step=7, hard=False, args=ARGS) -> None:
    """A run of `args` in `run_dir` killed at `step` of `phase_cls` (`hard`: without any clean-up)."""
    with monkeypatch.context() as m:
        (hard_kill_at if hard else kill_at)(m, phase_cls, step)
        with pytest.raises(Killed):
            run(make_cfg(*args), run_dir)


def numbers(results):
    return {
        "metric": results["metric"],
        "control": results["control"]["metric"],
        "phases": {p: v["eval"] for p, v in results["phases"].items()},
    }


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The run the resumed ones must equal: its results (once a session; the xdist workers share it)."""
    full = built_once(tmp_path_factory, "resume-uninterrupted", lambda d: run(make_cfg(*ARGS), d / "run"))
    return json.loads((full / "run" / "results.json").read_text())


@pytest.mark.parametrize("phase_cls,step", [(ObjectivePhase, 7), (JointPhase, 4)])
def test_resume_after_a_crash_gives_the_same_results(uninterrupted, tmp_path, monkeypatch, phase_cls, step):
    with monkeypatch.context() as m:
        kill_at(m, phase_cls, step)
        with pytest.raises(Killed):
            run(make_cfg(*ARGS), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"
    saved = checkpoint.load(RunDir(tmp_path))
    assert (saved["phase"], saved["step"], saved["phase_done"]) == (phase_cls.phase, step // EVERY * EVERY - 1, False)

    resumed = run(make_cfg(*ARGS, f"resume={tmp_path}"), tmp_path / "ignored-new-dir")
    got, want = numbers(resumed), numbers(uninterrupted)
    assert got["metric"] == pytest.approx(want["metric"], abs=1e-6)
    assert got["control"] == pytest.approx(want["control"], abs=1e-6)
    for p in ("1", "2", "3"):
        for name in ("heldout", "useful", "random"):
            for k in ("max", "final"):
                assert got["phases"][p][name][k] == pytest.approx(want["phases"][p][name][k], abs=1e-6)
    saved_results = json.loads((tmp_path / "results.json").read_text())
    assert saved_results["status"] == "complete" and saved_results["metric"] == resumed["metric"]
    # It says it was resumed, from where, and when it first started.
    (once,) = saved_results["run"]["resumed"]
    assert once["after"] == {"phase": phase_cls.phase, "step": saved["step"], "phase_done": False}
    assert saved_results["run"]["started"] == saved["run"]["started"] <= once["started"]
    assert "resumed" not in uninterrupted["run"]
    # metrics.csv holds each step exactly once.
    import csv

    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r.get("train/loss")]
    assert steps == list(range(4 + 10 + 10))


def test_a_checkpoint_is_resumed_only_under_its_own_config(tmp_path, monkeypatch):
    """A fresh run in a directory replaces its config.yaml and drops the earlier run's checkpoint, so a resume never
    continues another config's weights; a checkpoint whose own config differs is refused even where config.yaml
    agrees."""
    killed_run(monkeypatch, tmp_path, args=QUICK)  # a checkpoint of dpo.beta=0.1
    saved = checkpoint.load(RunDir(tmp_path))
    with monkeypatch.context() as m:  # a fresh run of another config, killed before its first checkpoint
        kill_at(m, ObjectivePhase, 0)
        m.setattr(checkpoint, "save_atomic", lambda *a, **k: None)
        with pytest.raises(Killed):
            run(make_cfg(*QUICK, "dpo.beta=0.5"), tmp_path)
    assert not RunDir(tmp_path).has_checkpoint()
    with pytest.raises(NegrlError, match="resume=.*: no checkpoint at"):
        run(make_cfg(*QUICK, "dpo.beta=0.5", f"resume={tmp_path}"), tmp_path / "x")
    torch.save(saved, RunDir(tmp_path).checkpoint)  # the beta=0.1 checkpoint beside the beta=0.5 config.yaml
    with pytest.raises(NegrlError, match=r"resume: the config differs from the run in .* dpo.beta \(0.1 -> 0.5\)"):
        run(make_cfg(*QUICK, "dpo.beta=0.5", f"resume={tmp_path}"), tmp_path / "x")


def test_resume_true_finds_the_newest_unfinished_run_of_the_same_config(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    killed_run(monkeypatch, runs / "day" / "killed", args=QUICK)
    resumed = run(make_cfg(*QUICK, "resume=true"), runs / "day" / "new")
    assert resumed["run"]["dir"] == str(runs / "day" / "killed")
    with pytest.raises(NegrlError, match="resume=true: no unfinished run of this config with a checkpoint in"):
        run(make_cfg(*QUICK, "resume=true", "seed=9"), runs / "day" / "other")


def test_a_gpu_per_job_run_is_found_again_on_another_gpu_but_not_with_another_gpu_count(tmp_path):
    """`gpu_per_job` sets `trainer.devices=[k mod n]`: which GPU leaves the numbers as they are, how many does not."""
    from conftest import make_cfg_dict

    def config(devices):
        c = make_cfg_dict()
        c["trainer"]["devices"] = devices
        return c

    owner = RunDir(tmp_path / "runs" / "job3")
    owner.write_config(config([3]))
    owner.checkpoint.parent.mkdir()
    owner.checkpoint.write_bytes(b"")
    search = str(tmp_path / "runs" / "*")
    for same in ([0], [1], 1):
        assert checkpoint.resume_dir(True, search, config(same))[0] == owner.path
    for other in ([0, 1], 2):
        with pytest.raises(NegrlError, match="resume=true: no unfinished run of this config"):
            checkpoint.resume_dir(True, search, config(other))


def test_resume_errors(tmp_path, monkeypatch):
    with pytest.raises(NegrlError, match="resume=.*: no checkpoint at"):
        run(make_cfg(*ARGS, f"resume={tmp_path / 'nothing'}"), tmp_path / "x")
    killed_run(monkeypatch, tmp_path / "killed", args=QUICK)
    with pytest.raises(NegrlError, match=r"config differs .* at dpo.beta \(0.1 -> 0.2\)"):
        run(make_cfg(*QUICK, "dpo.beta=0.2", f"resume={tmp_path / 'killed'}"), tmp_path / "y")


def test_a_checkpoint_that_cannot_resume_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    """A truncated, overwritten, foreign or ill-fitting checkpoint: one line naming it, and the run directory as it
    was (results.json still says why the run failed and how to resume it)."""
    killed_run(monkeypatch, tmp_path, args=QUICK)
    owner = RunDir(tmp_path)
    intact = owner.checkpoint.read_bytes()
    saved = checkpoint.load(owner)
    matrix = next(k for k, v in saved["backbone"].items() if v.ndim == 2)
    wrong_shape = {**saved["backbone"], matrix: saved["backbone"][matrix][:1]}
    damages = {
        "truncated": (lambda p: p.write_bytes(intact[: len(intact) // 2]), r"\(RuntimeError: .*zip"),
        "empty": (lambda p: p.write_bytes(b""), r"\((EOFError|RuntimeError): "),
        "not a checkpoint": (lambda p: p.write_bytes(b"not a checkpoint"), r"\((UnpicklingError|RuntimeError): "),
        "foreign": (lambda p: torch.save({"state_dict": {}}, p), r"\(it lacks config, backbone, rng, phase, step"),
        "another model": (lambda p: torch.save({**saved, "backbone": wrong_shape}, p), r"\(its weights do not fit"),
    }
    for name, (damage, why) in damages.items():
        damage(owner.checkpoint)
        before = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
        with pytest.raises(NegrlError, match=rf"^resume: the checkpoint {owner.checkpoint} cannot be resumed {why}"):
            run(make_cfg(*QUICK, f"resume={tmp_path}"), tmp_path / "x")
        assert {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()} == before, name
        assert RunDir(tmp_path).read_results()["status"] == "failed", name
    owner.checkpoint.write_bytes(intact)
    assert run(make_cfg(*QUICK, f"resume={tmp_path}"), tmp_path / "x")["run"]["dir"] == str(tmp_path)


def test_a_run_whose_loggers_cannot_start_is_recorded_failed_not_running(tmp_path, monkeypatch):
    from negrl.run import runner

    def loggers(*args):
        raise RuntimeError("W&B could not start")

    monkeypatch.setattr(runner, "build_loggers", loggers)
    with pytest.raises(RuntimeError, match="W&B could not start"):
        run(make_cfg(*QUICK), tmp_path)
    results = RunDir(tmp_path).read_results()
    assert (results["status"], results["reason"]) == ("failed", "RuntimeError: W&B could not start")


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    checkpoint.save_atomic({"step": 1, "w": torch.ones(3)}, RunDir(tmp_path))

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"step": 2}, RunDir(tmp_path))
    assert checkpoint.load(RunDir(tmp_path))["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]


def hard_kill_at(monkeypatch, phase_cls, step):
    """Like `kill_at`, but the process dies without any clean-up: nothing is flushed or recorded afterwards."""
    from negrl.run.tracking import RunLogger

    kill_at(monkeypatch, phase_cls, step)
    monkeypatch.setattr(RunLogger, "finish", lambda self, *a, **k: None)
    monkeypatch.setattr("negrl.run.rundir.RunDir.write_results", lambda self, results: None)


def comparable(run_dir):
    """results.json without what differs between any two runs (when and where), and metrics.csv rows."""
    import csv

    results = json.loads((run_dir / "results.json").read_text())
    for key in ("run", "wall_time_s", "versions"):
        results.pop(key, None)
    for phase in results["phases"].values():
        phase.pop("wall_time_s")
    rows = [{k: v for k, v in r.items()} for r in csv.DictReader(open(run_dir / "metrics.csv"))]
    return results, rows


def test_a_hard_kill_and_resume_equals_the_uninterrupted_run_in_every_file(uninterrupted, tmp_path, monkeypatch):
    """Killed at phase-2 step 7 with the last checkpoint at 5: every metrics.csv row and results.json field
    (the reference's sequence count included) equal the uninterrupted run's."""
    killed_run(monkeypatch, tmp_path, step=7, hard=True)
    resumed = run(make_cfg(*ARGS, f"resume={tmp_path}"), tmp_path)
    full = Path(uninterrupted["run"]["dir"])
    want_results, want_rows = comparable(full)
    got_results, got_rows = comparable(tmp_path)
    assert got_results == want_results
    assert resumed["reference"]["sequences_computed"] == uninterrupted["reference"]["sequences_computed"]
    assert [r["step"] for r in got_rows] == [r["step"] for r in want_rows]
    differ = [(a["step"], k) for a, b in zip(got_rows, want_rows) for k in a if a[k] != b[k]]
    assert not differ[:5]


@pytest.mark.heavy
def test_resume_true_takes_the_newest_unfinished_run_not_a_newer_completed_one(uninterrupted, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    killed_run(monkeypatch, runs / "day" / "a-killed")
    # newer (copied now), complete, same config
    shutil.copytree(uninterrupted["run"]["dir"], runs / "day" / "b-complete", copy_function=shutil.copy)
    elsewhere = tmp_path / "elsewhere" / "x"  # an unfinished run of the same config outside the search
    killed_run(monkeypatch, elsewhere)
    resumed = run(make_cfg(*ARGS, "resume=true"), runs / "day" / "c-new", search=str(runs / "*" / "*"))
    assert resumed["run"]["dir"] == str(runs / "day" / "a-killed")
    assert not (runs / "day" / "c-new").exists()


def test_a_run_directory_in_use_is_refused(tmp_path):

    holder = RunDir(tmp_path / "busy")
    holder.lock()  # another process training in it (flock is per open file, so this stands in for one)
    try:
        with pytest.raises(NegrlError, match="is in use by another negrl process"):
            run(make_cfg(*ARGS), tmp_path / "busy")
    finally:
        holder.unlock()
    assert not (tmp_path / "busy").exists()


def test_a_full_disk_is_one_line_and_failed_with_the_last_checkpoint_kept(tmp_path, monkeypatch):
    import errno

    from negrl.core.errors import RunFailed

    original = checkpoint.save_atomic
    calls = []

    def filling(state, run_dir):
        calls.append(state["step"])
        if state["phase"] == 2 and state["step"] == 8:
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir.path / "checkpoints"))
        return original(state, run_dir)

    monkeypatch.setattr(checkpoint, "save_atomic", filling)
    with pytest.raises(
        RunFailed, match=r"^disk full .*: free some space, then continue .*resume=.*after phase 2 step 5"
    ):
        run(make_cfg(*QUICK), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and saved["reason"].startswith("disk full")
    assert (checkpoint.load(RunDir(tmp_path))["phase"], checkpoint.load(RunDir(tmp_path))["step"]) == (2, 5)


def test_a_signal_while_the_disk_fills_keeps_the_disk_full_reason(tmp_path, monkeypatch):
    """Ctrl-C pressed while a checkpoint fails on a full disk: the run is recorded with the disk's reason and its
    resume, not swapped for the signal's (which would say the run never started)."""
    import errno
    import os
    import signal

    from negrl.core.errors import RunFailed
    from negrl.run import signals

    original = checkpoint.save_atomic

    def filling(state, run_dir):
        if state["phase"] == 2 and state["step"] == 8:
            os.kill(os.getpid(), signal.SIGINT)  # arrives inside the checkpoint's deferred block: held
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir.path / "checkpoints"))
        return original(state, run_dir)

    monkeypatch.setattr(checkpoint, "save_atomic", filling)
    try:
        with pytest.raises(RunFailed, match=r"^disk full .*: free some space, then continue .*resume="):
            run(make_cfg(*QUICK), tmp_path)
    finally:
        signals.reset()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and saved["reason"].startswith("disk full")


@pytest.mark.heavy
def test_a_sweep_with_resume_true_continues_each_job_and_leaves_no_new_job_directory(tmp_path, monkeypatch, train_py):
    """`python train.py -m seed=0 resume=true`: the job continues the killed run of a former sweep (found through
    the sweep's directory pattern), the new sweep keeps no empty job directory, and the summary counts the job.
    Through train.py: in this process in the fast suite, as its own process in the slow one (`train_py`)."""
    from conftest import FAST

    old = tmp_path / "multirun" / "2026-01-01" / "00-00-00" / "0-tiny-seed0"
    killed_run(monkeypatch, old, args=QUICK)
    proc = train_py("-m", *FAST, *QUICK, "seed=0", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((old / "results.json").read_text())["status"] == "complete"
    sweeps = [p for p in (tmp_path / "multirun").glob("*/*") if p.parent.name != "2026-01-01"]
    assert len(sweeps) == 1 and sorted(p.name for p in sweeps[0].iterdir()) == [".jobs", "multirun.yaml"]
    assert "negrl: all 1 jobs of" in proc.stdout


def test_a_checkpoint_names_no_negrl_class_so_moving_the_code_keeps_it_loadable(uninterrupted):
    """Checkpoints hold tensors, numbers, strings and numpy RNG state only: a checkpoint written before a module
    moved (e.g. negrl/runner.py -> negrl/run/runner.py) still loads and resumes after it."""
    saved = Path(uninterrupted["run"]["dir"]) / "checkpoints" / "last.pt"
    names = torch.serialization.get_unsafe_globals_in_checkpoint(saved)
    assert names and all(name.startswith("numpy.") for name in names), names


def test_files_a_run_writes_respect_the_umask(tmp_path):
    """config.yaml, results.json and the checkpoint are written through temporary files (0600): afterwards they
    have the mode the umask gives any file, so collaborators on a shared filesystem can read them."""
    import os
    import stat

    from negrl.run.rundir import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o027)
        write_json_atomic(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_resume_of_a_complete_run_says_there_is_nothing_to_resume(uninterrupted):
    done = uninterrupted["run"]["dir"]
    with pytest.raises(NegrlError, match=rf"resume={done}: that run is complete, nothing to resume \(its results: "):
        run(make_cfg(*ARGS, f"resume={done}"), Path(done).parent / "elsewhere")
