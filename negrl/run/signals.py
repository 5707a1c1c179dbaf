"""Stopping when asked: SIGINT (Ctrl-C) and SIGTERM (`timeout`, a scheduler before it kills a job) stop a run at
once, wherever it is (training, the attacks, an evaluation, between phases), as an `Interrupted` exception that the
run records (results.json `failed: interrupted`, its checkpoint kept) and the command line turns into exit code
128 + the signal's number (130 for SIGINT, 143 for SIGTERM), stopping a whole sweep.

Lightning keeps a handler it finds installed when `Trainer.fit` starts, calling it after its own SIGTERM notifier
(its documented way to compose a program's handler with its own), so its "received SIGTERM" flag, which waits for
the end of the step, no longer swallows the signal. A checkpoint being written is finished first (`deferred`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_state: dict[str, Any] = {"received": None, "raised": False, "deferring": 0, "pending": None, "forward": False}


class Interrupted(SystemExit):
    """A run stopped by a signal: a `SystemExit` (Lightning and Hydra let it through; uncaught, the process exits
    with `code`) whose code is the shell's 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal_name(self.signum)}"


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def received() -> int | None:
    """The signal this process received to stop (None: none yet)."""
    return _state["received"]


def exit_code() -> int | None:
    """128 + the received signal's number (None: no signal received)."""
    signum = received()
    return None if signum is None else 128 + signum


def _handler(signum: int, frame: FrameType | None) -> None:
    first = _state["received"] is None
    _state["received"] = signum
    if _state["forward"]:  # a sweep's parent whose jobs run in worker processes: they stop, then it does
        if first:
            _forward(signum)
        return
    if _state["raised"]:
        return  # already stopping: a second Ctrl-C does not cut the recording of the first
    if _state["deferring"]:
        _state["pending"] = signum
        return
    _state["raised"] = True
    raise Interrupted(signum)


def _forward(signum: int) -> None:
    """Send the signal on to this process's children (a local sweep's workers), unless they had it already."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with wandb
        return
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            child.send_signal(signum)
        except psutil.Error:
            pass


@contextmanager
def stop_on_signals(forward: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block; with `forward` (the parent of a sweep's worker
    processes) they are passed to the children instead, and the block goes on until the workers have stopped.
    The previous handlers are restored afterwards; `received()` stays set until the next block starts. A nested
    block keeps the outer one's handlers; outside the main thread this is a no-op."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _handler:
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    was_forwarding = _state["forward"]
    _state.update(received=None, raised=False, pending=None, forward=forward)  # a new run (or sweep) starts
    for s in STOP_SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state["forward"] = was_forwarding


def install() -> None:
    """SIGINT and SIGTERM raise `Interrupted` from now on in this process (a local sweep's worker process, which
    runs jobs and nothing else: a signal between two jobs stops it too)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not _handler:
        for s in STOP_SIGNALS:
            signal.signal(s, _handler)


@contextmanager
def deferred(raise_pending: bool = True) -> Iterator[None]:
    """A block a signal must not cut in half (a checkpoint or results.json being written): a signal arriving
    inside it is raised when the block ends; with `raise_pending=False` (the block that records a run complete:
    nothing is left to stop) it is only kept as `received()`, which stops a sweep before its next job."""
    _state["deferring"] += 1
    try:
        yield
    except BaseException:
        _state["deferring"] -= 1
        raise
    _state["deferring"] -= 1
    pending = _state["pending"]
    if not _state["deferring"] and pending is not None:
        _state["pending"] = None
        if raise_pending:
            _state["raised"] = True
            raise Interrupted(pending)


def reset() -> None:
    """Forget a received signal (for tests that interrupt several runs in one process)."""
    _state.update(received=None, raised=False, deferring=0, pending=None)
