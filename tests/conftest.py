"""Shared test helpers: composing negrl's Hydra config without the command line."""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# No test touches the network: the hub is offline for the whole session (before huggingface_hub reads it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist each worker has one core's share: one thread per process (also for the processes a test
# starts), so that the workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Real tokenizers, carried by the repository: tests/fixtures/tokenizers/<family>/tokenizer.json.xz (see SOURCES.md).
TOKENIZERS = ROOT / "tests" / "fixtures" / "tokenizers"

#: The attacks scaled down: 64 generated candidates, 255 exposure candidates, 100 bootstrap resamples.
SMALL_ATTACKS = ["extraction.samples=64", "extraction.candidates=255", "extraction.bootstrap=100"]
#: The fewest steps a run can take with the paper's structure: 4 + 10 + 10 steps of 16 (80 negatives, 8 held out), for
#: the tests that need a complete run or a sweep, not its numbers (with data=small).
FEW_STEPS = ["data.n_negatives=80", "data.negative_repeats=2", "holdout_frac=0.1", "data.n_phase1=64",
             "data.eval_size=8"]  # fmt: skip
#: Quiet, CPU-only, W&B off, scaled-down data (data=small with each negative twice: 8 + 40 + 40 steps) and attacks:
#: the defaults of every test run.
FAST = ["data=small", "data.negative_repeats=2", *SMALL_ATTACKS, "wandb.enabled=false",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heavy tests first (a stable sort: the same order on every xdist worker), so that no long test is left
    to run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def make_cfg(*overrides: str) -> DictConfig:
    """negrl's config as `python train.py <FAST> <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*FAST, *overrides])


def make_cfg_dict(*overrides: str) -> dict[str, Any]:
    """`make_cfg(*overrides)` resolved into plain dicts and lists (what negrl's functions take)."""
    return OmegaConf.to_container(make_cfg(*overrides), resolve=True)


class Killed(RuntimeError):
    """The crash `kill_at` injects."""


def kill_at(monkeypatch: pytest.MonkeyPatch, phase_cls: type, step: int) -> None:
    """Make `phase_cls` crash on its `step`-th update (0-based), like a pre-empted machine."""
    original = phase_cls.compute_loss

    def crashing(self, batch):
        if type(self) is phase_cls and self.start_step + self.trainer.global_step == step:
            raise Killed(f"killed in phase {self.phase} at step {step}")
        return original(self, batch)

    monkeypatch.setattr(phase_cls, "compute_loss", crashing)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Path:
    """The directory `name`, filled by `build(dir)` once per test session and shared by pytest-xdist's workers: the
    first worker to ask builds it under a file lock, the others wait for it and read it (for a session-scoped
    fixture whose runs several workers' tests read; `make test` schedules the heavy tests first, so a module's tests
    spread over the workers and over the session)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    out, done = root / f"built-{name}", root / f"built-{name}.done"
    with FileLock(str(root / f"built-{name}.lock")):
        if not done.exists():
            out.mkdir(exist_ok=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Callable[[str], Path]:
    """`tokenizer_path("gpt2")`: that family's tokenizer.json, decompressed once a session into a tmp directory."""
    root = tmp_path_factory.mktemp("tokenizers")

    def path(family: str) -> Path:
        packed = TOKENIZERS / family / "tokenizer.json.xz"
        if not packed.is_file():
            known = sorted(p.parent.name for p in TOKENIZERS.glob("*/tokenizer.json.xz"))
            pytest.fail(f"no tokenizer fixture {packed}; known families: {', '.join(known)}")
        out = root / family / "tokenizer.json"
        if not out.is_file():
            out.parent.mkdir(exist_ok=True)
            out.write_bytes(lzma.decompress(packed.read_bytes()))
        return out

    return path


@pytest.fixture(scope="session")
def tokenizer_json(tokenizer_path) -> Path:
    """The GPT-NeoX-20B (Pythia) tokenizer.json."""
    return tokenizer_path("gpt-neox-20b")


def _train_in_process(
    argv: list[str], cwd: Path, env: dict[str, str], monkeypatch, capfd
) -> subprocess.CompletedProcess:
    """train.py run as `python train.py ARGV` runs it (its `__main__` block: the checks before torch, then
    negrl.cli.command_line and Hydra), in this process: what a process would have left behind is undone (Hydra's
    global state, its logging configuration, the environment, the signal handlers)."""
    import logging
    import runpy
    import signal

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from negrl import cli
    from negrl.run import signals

    capfd.readouterr()
    root = logging.getLogger()
    loggers = {n: lg for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in (root, *loggers.values())]
    handlers = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    environ = dict(os.environ)
    code = 0
    with monkeypatch.context() as m:
        m.chdir(cwd)
        m.setattr(sys, "argv", [str(ROOT / "train.py"), *argv])
        m.setattr(cli, "_LAUNCH", {key: False for key in cli._LAUNCH})  # a fresh process's
        os.environ.update(env)
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
            for lg, kept, level, propagate, disabled in saved:
                for h in set(lg.handlers) - set(kept):
                    h.close()
                lg.handlers[:] = kept
                lg.setLevel(level)
                lg.propagate, lg.disabled = propagate, disabled
            for s, h in handlers.items():
                signal.signal(s, h)
            os.environ.clear()
            os.environ.update(environ)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture(params=["in-process", pytest.param("process", marks=pytest.mark.slow)])
def train_py(request, monkeypatch, capfd) -> Callable[..., subprocess.CompletedProcess]:
    """`train_py(*argv, cwd=ROOT, env={})`: `python train.py ARGV` with `env` added to the environment. In the fast
    suite it runs in this process (no second start-up of torch and Lightning: 6-9 s each on 2 cores); with
    `make test-slow`, also as its own process, as a user runs it."""

    def train(*argv: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        if request.param == "in-process":
            return _train_in_process(list(argv), cwd, env or {}, monkeypatch, capfd)
        cmd = [sys.executable, str(ROOT / "train.py"), *argv]
        env = {**os.environ, **(env or {})}
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

    return train
