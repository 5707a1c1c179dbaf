"""SIGINT and SIGTERM stop a run within seconds, wherever it is, with its state recorded and exit code 128 + the
signal's number; a signal that stops a job stops its sweep, and `resume=true` continues the sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST, FEW_STEPS, ROOT, _train_in_process
from omegaconf import OmegaConf

from negrl.run import signals

#: A signal stops a run within this many seconds (measured: about 3 s on 2 loaded cores; the margin is the CI's).
STOP_WITHIN = 20


#: The threads of a run these tests start (as `make test`'s workers have).
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(*args: str, group: bool = False) -> subprocess.Popen:
    env = {**os.environ, **THREADS}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=group)  # fmt: skip


def wait_for(proc: subprocess.Popen, pattern: str, root: Path, timeout: float = 240, count: int = 1) -> None:
    """Until `count` files matching `pattern` exist under `root` (the process still running)."""
    end = time.monotonic() + timeout
    while len(list(root.glob(pattern))) < count:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, f"no {pattern} under {root} after {timeout} s"
        time.sleep(0.1)


def stop(proc: subprocess.Popen, signum: int, group: bool = False) -> tuple[int, float, str]:
    """Send `signum` (to the process group, as `timeout` and a terminal's Ctrl-C do, with `group`); the exit code,
    the seconds it took to exit, and stderr."""
    sent = time.monotonic()
    os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, time.monotonic() - sent, err


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ---- in-process ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def forget_signals():
    yield
    signals.reset()  # this test process received them, not a run of the other tests


def test_a_signal_raises_interrupted_with_the_shells_exit_code_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.Interrupted) as err, signals.stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never reached: the handler raises at once
    assert (err.value.code, err.value.signum, str(err.value)) == (143, signal.SIGTERM, "interrupted by SIGTERM")
    assert signals.received() == signal.SIGTERM and signals.exit_code() == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_during_a_checkpoint_is_raised_once_it_is_written():
    written = []
    with pytest.raises(signals.Interrupted) as err, signals.stop_on_signals():
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            written.append("checkpoint")  # the block finishes
        written.append("after")  # not reached
    assert written == ["checkpoint"] and err.value.code == 130


def test_a_signal_as_a_run_is_recorded_complete_is_kept_not_raised():
    written = []
    with signals.stop_on_signals():
        with signals.deferred(raise_pending=False):
            os.kill(os.getpid(), signal.SIGINT)
            written.append("results.json complete")
        written.append("the verdict")  # reached: nothing is left to stop
    assert written == ["results.json complete", "the verdict"] and signals.received() == signal.SIGINT


class SignalsInItsFinalizer:
    """An object whose `__del__` sends this process `signum` and goes on long enough for the handler to run there
    (Python then ignores what the handler raises); `seen` records that it entered, and whether it finished."""

    def __init__(self, signum: int, seen: list):
        self.signum, self.seen = signum, seen

    def __del__(self):
        self.seen.append("entered")
        os.kill(os.getpid(), self.signum)
        for _ in range(100_000):  # the handler runs here, inside the finalizer, and cuts it short
            pass
        self.seen.append("finished")


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """The exceptions that reach the unraisable hook negrl's replaces (Python's prints them: "Exception ignored")."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: seen.append(hook.exc_value))
    return seen


def test_a_signal_that_lands_in_a_finalizer_still_stops_the_run(unraisable):
    """SIGTERM handled while a `__del__` runs (transformers' tokenizer regexes have one, and a sweep job caught one
    as it loaded its model): Python ignores the finalizer's `Interrupted` and printed "Exception ignored ... Traceback",
    and the run went on to its end. Now the signal is raised again once the finalizer returns, silently."""
    finalizer: list = []
    ran = []
    with pytest.raises(signals.Interrupted) as err, signals.stop_on_signals():
        SignalsInItsFinalizer(signal.SIGTERM, finalizer)  # finalized at once
        for step in range(500):
            ran.append(step)
            time.sleep(0.01)  # the run goes on only until the signal is raised again
    assert finalizer == ["entered"] and err.value.signum == signal.SIGTERM and len(ran) < 100
    assert unraisable == []  # nothing printed


def test_a_reraise_still_pending_when_its_block_ends_does_nothing(unraisable):
    """SIGINT swallowed by a finalizer in a block's last moment: its re-raise comes after the block, where it must
    not raise Python's KeyboardInterrupt (a traceback after the run's one line) nor stop a later block."""
    late: list = []
    with signals.stop_on_signals():
        SignalsInItsFinalizer(signal.SIGINT, [])  # the block ends at once: the re-raise is still pending
    try:
        time.sleep(0.2)
    except KeyboardInterrupt:
        late.append("KeyboardInterrupt")
    assert late == [] and signals.received() == signal.SIGINT and unraisable == []


def test_a_sweeps_parent_running_a_job_itself_stops_it(monkeypatch):
    """`hydra/launcher=local` with one job at a time: joblib runs the jobs in the sweep's own process, whose block
    forwards signals to worker processes; the run's block there stops the run (it went on to its end)."""
    forwarded = []
    monkeypatch.setattr(signals, "_forward", forwarded.append)
    with signals.stop_on_signals(forward=True):
        with pytest.raises(signals.Interrupted), signals.stop_on_signals():  # the pipeline's, around one job
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # never reached
        with pytest.raises(signals.Interrupted), signals.stop_on_signals():
            pytest.fail("a job started after the signal")  # the next job: stopped as it starts (not reached)
    assert forwarded == [signal.SIGTERM]


def test_a_finalizers_other_exceptions_still_go_to_the_hook_before(unraisable):
    class Broken:
        def __del__(self):
            raise ValueError("a finalizer's own error")

    with signals.stop_on_signals():
        Broken()
    assert [str(e) for e in unraisable] == ["a finalizer's own error"]
    assert sys.unraisablehook is not signals._unraisable  # restored after the block


def test_a_sweep_worker_records_a_signal_between_jobs_and_stops_the_run_it_starts(unraisable):
    """A local sweep's worker (`install`, from its start): a signal while it waits for a job is recorded, not
    raised (a worker that dies has its pool kill the others mid-recording); the run it then starts stops at once,
    and one that arrives in a run raises. The worker's handlers are its own until it exits: restored here (the
    unraisable hook by the fixture)."""
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    try:
        signals.install()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # a worker between jobs: nothing raised
        assert signals.received() == signal.SIGTERM
        with pytest.raises(signals.Interrupted), signals.stop_on_signals():
            pytest.fail("a run started after the signal")  # never reached: it stops as it starts
        signals.reset()
        with pytest.raises(signals.Interrupted) as err, signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # never reached
        assert err.value.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # after the run: recorded again, not raised
        time.sleep(0.05)
        assert signals.received() == signal.SIGTERM
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_interrupted_pickles_with_its_signal():
    """A worker's exception reaches the sweep's process pickled: its signal, not its exit code, rebuilds it."""
    import pickle

    again = pickle.loads(pickle.dumps(signals.Interrupted(signal.SIGTERM)))
    assert (again.signum, again.code, str(again)) == (signal.SIGTERM, 143, "interrupted by SIGTERM")


def test_the_local_launcher_starts_its_workers_with_negrls_handler_and_ends_a_stopped_sweep_quietly(monkeypatch):
    """hydra/launcher=local is negrl's LocalLauncher (the pool's initializer: `signals.install`), in worker
    processes; a worker the signal killed as it started (joblib: TerminatedWorkerError) ends the sweep as the signal
    (`Interrupted`, no traceback); the same failure without a signal is raised as it is."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    from negrl import cli
    from negrl.launcher import LocalLauncher

    composed = OmegaConf.load(ROOT / "conf" / "hydra" / "launcher" / "local.yaml")
    assert composed._target_ == cli.LOCAL_LAUNCHER == "hydra_plugins.negrl_launcher.LocalLauncher"
    monkeypatch.setattr(cli, "_LAUNCH", dict(cli._LAUNCH))
    cli.preflight(["-m", "seed=0,1", "hydra/launcher=local", *FAST])
    assert cli._LAUNCH["workers"]
    seen = {}

    def died(self, job_overrides, initial_job_idx):
        seen["initializer"] = self.joblib["initializer"]
        raise TerminatedWorkerError("A worker process managed by the executor was unexpectedly terminated.")

    (joblib_launcher,) = LocalLauncher.__bases__  # Hydra's, as negrl.launcher imported it (Hydra's plugin scan may
    monkeypatch.setattr(joblib_launcher, "launch", died)  # have imported its module again since)
    assert joblib_launcher.__name__ == "JoblibLauncher"
    launcher = LocalLauncher(n_jobs=2)
    with pytest.raises(TerminatedWorkerError):
        launcher.launch([["seed=0"]], 0)
    assert seen["initializer"] is signals.install
    monkeypatch.setattr(signals, "received", lambda: signal.SIGTERM)
    with pytest.raises(signals.Interrupted) as err:
        launcher.launch([["seed=0"]], 0)
    assert err.value.code == 143 and err.value.__context__ is None
    seen.clear()  # a signal before the launch (the sweep still being composed): no worker starts
    with pytest.raises(signals.Interrupted):
        launcher.launch([["seed=0"]], 0)
    assert seen == {}


def test_a_signal_while_the_results_are_made_is_recorded_failed_with_how_to_resume(tmp_path, monkeypatch):
    """Stopped after phase 3 but before results.json says complete: `failed`, with the resume that finishes it (not
    'before it started: run the same command again'); resumed, it completes with the uninterrupted numbers."""
    from conftest import make_cfg

    from negrl.core.errors import RunFailed
    from negrl.pipeline import run
    from negrl.run import runner

    args = (*FEW_STEPS, "extraction.enabled=false", "eval.every=100")
    whole = run(make_cfg(*args), tmp_path / "whole")
    summarize = runner.summarize

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never reached: the handler raises at once
        return summarize(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(runner, "summarize", interrupted)
        with pytest.raises(RunFailed) as err:
            run(make_cfg(*args), tmp_path / "stopped")
    assert err.value.exit_code == 143
    stopped = results(tmp_path / "stopped")
    assert stopped["status"] == "failed" and "resume=" in stopped["reason"]
    assert "phase 3" in stopped["reason"] and "before it started" not in str(err.value)
    signals.reset()
    resumed = run(make_cfg(*args, f"resume={tmp_path / 'stopped'}"), tmp_path / "unused")
    assert results(tmp_path / "stopped")["status"] == "complete"
    assert resumed["metric"] == whole["metric"]
    assert {p: v["eval"] for p, v in resumed["phases"].items()} == {p: v["eval"] for p, v in whole["phases"].items()}


# ---- a real run, stopped -------------------------------------------------------------------------


@pytest.fixture(params=["in-process", pytest.param("process", marks=pytest.mark.slow)])
def stopped_run(request, monkeypatch, capfd):
    """`stopped_run(args, pattern, root, signum, wait=0, check=None)`: `python train.py ARGS`, sent `signum` once a
    file matching `pattern` exists under `root` (the run still going) and `wait` seconds more have passed (`check()`
    called just before the signal); its exit code, the seconds from the signal to its exit, and its stderr.

    In the fast suite the run is train.py's `__main__` in this process (conftest's train_py), the signal sent to this
    process from a thread, as a terminal or `timeout` sends it to a process (a signal sent too late meets a handler
    that ignores it); in the slow suite, a process of its own. `stopped_run.train(*argv)`: a run of train.py that is
    not stopped, the same way."""

    def in_process(args, pattern, root, signum, wait=0.0, check=None):
        finished, sent, failed = threading.Event(), [], []

        def signal_when_ready() -> None:
            end = time.monotonic() + 240
            while not list(root.glob(pattern)):
                if finished.is_set() or time.monotonic() > end:
                    return
                time.sleep(0.1)
            time.sleep(wait)
            try:
                if check is not None:
                    check()
            except BaseException as err:
                failed.append(err)
            if not finished.is_set():
                sent.append(time.monotonic())
                os.kill(os.getpid(), signum)

        before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
        for s in signals.STOP_SIGNALS:  # what the run restores at its end: a late signal is ignored
            signal.signal(s, lambda *_: None)
        sender = threading.Thread(target=signal_when_ready, daemon=True)
        try:
            sender.start()
            done = _train_in_process(list(args), ROOT, THREADS, monkeypatch, capfd)
            ended = time.monotonic()
            finished.set()
            sender.join()
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)
        if failed:
            raise failed[0]
        assert sent, f"no {pattern} under {root} while the run went on: {done.stderr[-2000:]}"
        return done.returncode, ended - sent[0], done.stderr

    def in_a_process(args, pattern, root, signum, wait=0.0, check=None):
        proc = start(*args)
        wait_for(proc, pattern, root)
        time.sleep(wait)
        if check is not None:
            check()
        return stop(proc, signum)

    def train_here(*argv: str) -> subprocess.CompletedProcess:
        return _train_in_process(list(argv), ROOT, THREADS, monkeypatch, capfd)

    def train_in_a_process(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env={**os.environ, **THREADS},
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    if request.param == "in-process":
        in_process.train = train_here  # type: ignore[attr-defined]
        return in_process
    in_a_process.train = train_in_a_process  # type: ignore[attr-defined]
    return in_a_process


@pytest.mark.heavy
def test_sigterm_in_training_stops_the_run_in_seconds_recorded_with_its_checkpoint(tmp_path, stopped_run):
    run_dir = tmp_path / "run"
    args = [*FAST, "extraction.enabled=false", "checkpoint.every=10", f"hydra.run.dir={run_dir}"]
    # metrics.csv is written with the first checkpoint: the run is in phase 1 or 2
    code, took, err = stopped_run(args, "metrics.csv", run_dir, signal.SIGTERM)
    assert code == 143 and took < STOP_WITHIN, err[-2000:]
    r = results(run_dir)
    assert r["status"] == "failed"
    assert r["reason"].startswith(f"interrupted by SIGTERM; continue with the same overrides and resume={run_dir} ")
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert err.strip().splitlines()[-1] == f"negrl: error: {r['reason']}"
    assert "Received SIGTERM" not in err  # Lightning's notice: negrl says it in its one line


@pytest.mark.heavy
def test_ctrl_c_during_the_attacks_stops_the_run_with_exit_code_130(tmp_path, stopped_run):
    run_dir = tmp_path / "run"

    def in_the_attacks() -> None:
        assert not (run_dir / "checkpoints").exists()  # still in phase 1's attacks (saved after them)

    # Phase 1 is 4 steps; its attacks then decode 20000 candidates twice (tens of seconds on one core).
    code, took, err = stopped_run([*FAST, *FEW_STEPS, "extraction.samples=20000", f"hydra.run.dir={run_dir}"],
                                  "results.json", run_dir, signal.SIGINT, wait=4, check=in_the_attacks)  # fmt: skip
    assert code == 130 and took < STOP_WITHIN, err[-2000:]
    assert results(run_dir)["reason"] == (
        "interrupted by SIGINT; it stopped before its first checkpoint, so there is nothing to resume: "
        "run the same command again"
    )
    assert "Traceback" not in err


# ---- sweeps -----------------------------------------------------------------------------------------


def sweep_args(sweep: Path, *more: str, seeds: str = "0,1", steps: tuple[str, ...] = tuple(FEW_STEPS)) -> list[str]:
    """A sweep of 4 + 10 + 10 steps a job (`steps`), without attacks (nothing the sweep tests read)."""
    return ["-m", f"seed={seeds}", *FAST, *steps, "extraction.enabled=false", f"hydra.sweep.dir={sweep}", *more]


@pytest.mark.heavy
def test_a_signal_stops_the_whole_sweep_and_resume_true_skips_complete_jobs_and_continues_the_rest(tmp_path,
                                                                                                  stopped_run):
    """The sweep stopped and the one resumed: train.py in this process in the fast suite (the signal from a thread),
    processes of their own in the slow one (`stopped_run`; a sweep stopped through its process in the fast suite: the
    local sweep below)."""
    sweep = tmp_path / "sweep"
    # job 0 complete, job 1 past its first checkpoint
    code, took, err = stopped_run(sweep_args(sweep), "1-*/metrics.csv", sweep, signal.SIGTERM)
    assert code == 143 and took < STOP_WITHIN, err[-2000:]
    again = " ".join(sweep_args(sweep, "resume=true"))
    assert err.strip().splitlines()[-1] == (
        "negrl: the sweep stopped on SIGTERM (complete jobs kept, the stopped ones recorded failed: interrupted); "
        f"continue it with: python train.py {again}"
    )
    first, second = sorted(p for p in sweep.iterdir() if not p.name.startswith("."))[:2]
    assert results(first)["status"] == "complete"
    assert results(second)["reason"].startswith("interrupted by SIGTERM; continue with the same overrides")
    done = results(first)

    resumed = stopped_run.train(*sweep_args(sweep, "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"negrl: {first} is complete, nothing to do (resume=true)" in resumed.stdout
    assert f"negrl: resuming {second} after phase" in resumed.stdout
    assert results(first) == done  # untouched
    assert results(second)["status"] == "complete"
    assert "negrl: all 2 jobs of" in resumed.stdout


@pytest.mark.slow  # three processes, each starting torch and Lightning: make test-slow (and CI)
def test_a_signal_to_a_local_sweep_stops_its_workers_and_starts_no_other_job(tmp_path):
    sweep = tmp_path / "sweep"
    # data=small's 8 + 40 + 40 steps: both first jobs still running when the later one has started
    args = sweep_args(sweep, "hydra/launcher=local", "hydra.launcher.n_jobs=2", seeds="0-3", steps=())
    proc = start(*args, group=True)
    wait_for(proc, "*/metrics.csv", sweep, count=2)  # both workers in a job (one still starting may not have one)
    code, took, err = stop(proc, signal.SIGTERM, group=True)  # as `timeout` sends it
    assert code == 143 and took < STOP_WITHIN, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("negrl: the sweep stopped on SIGTERM")
    assert "Traceback" not in err and "Exception ignored" not in err, err[-4000:]
    jobs = sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir())
    assert jobs == ["0-tiny-seed0", "1-tiny-seed1"]  # jobs 2 and 3 never started
    reasons = {j: results(sweep / j).get("reason", results(sweep / j)["status"]) for j in jobs}
    assert all(r.startswith("interrupted by SIGTERM") for r in reasons.values()), reasons


def test_a_sweep_job_stopped_before_it_started_is_recorded_with_the_signal_as_its_reason(tmp_path):
    """A signal that reaches a job of a sweep before its run wrote anything (loading the model, say): the job is
    recorded failed with "interrupted by SIGTERM before it started; ...", as every stopped job's reason begins; a
    config error keeps its error's name."""
    from negrl.cli import _record_failure
    from negrl.core.errors import NegrlError, RunFailed

    stopped = RunFailed(f"{signals.Interrupted(signal.SIGTERM)} before it started; nothing to resume: run the same "
                        "command again")  # fmt: skip
    _record_failure(tmp_path / "stopped", stopped)
    reason = json.loads((tmp_path / "stopped" / "results.json").read_text())["reason"]
    assert reason == "interrupted by SIGTERM before it started; nothing to resume: run the same command again"
    _record_failure(tmp_path / "bad", NegrlError("seed=x is not an integer; use seed=0"))
    reason = json.loads((tmp_path / "bad" / "results.json").read_text())["reason"]
    assert reason == "NegrlError: seed=x is not an integer; use seed=0"
