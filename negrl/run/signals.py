"""Stopping when asked: SIGINT (Ctrl-C) and SIGTERM (`timeout`, a scheduler before it kills a job) stop a run at
once, wherever it is (training, the attacks, an evaluation, between phases), as an `Interrupted` exception that the
run records (results.json `failed: interrupted`, its checkpoint kept) and the command line turns into exit code
128 + the signal's number (130 for SIGINT, 143 for SIGTERM), stopping a whole sweep.

Lightning keeps a handler it finds installed when `Trainer.fit` starts, calling it after its own SIGTERM notifier
(its documented way to compose a program's handler with its own), so its "received SIGTERM" flag, which waits for
the end of the step, no longer swallows the signal. A checkpoint being written is finished first (`deferred`).

A signal that lands in a finalizer (a `__del__`, a weakref callback), where Python ignores exceptions, is not lost:
it is raised again at the next line the program runs (`_unraisable`). A local sweep's worker process records a
signal from its start (`install`, the local launcher's initializer) but raises it only inside a run: between jobs
it goes on and starts no other, so its pool never sees it die (which kills the other workers mid-recording).
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: armed: a signal raises `Interrupted` (else it is only recorded); hook_before: the unraisable hook negrl's replaced.
_state: dict[str, Any] = {"received": None, "raised": False, "deferring": 0, "pending": None, "forward": False,
                          "armed": False, "hook_before": sys.__unraisablehook__, "block": 0}  # fmt: skip
#: How soon a signal whose `Interrupted` a finalizer swallowed is raised again (seconds): after the finalizer returns.
RERAISE_AFTER = 0.01


class Interrupted(SystemExit):
    """A run stopped by a signal: a `SystemExit` (Lightning and Hydra let it through; uncaught, the process exits
    with `code`) whose code is the shell's 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"interrupted by {signal_name(self.signum)}"

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return Interrupted, (self.signum,)  # pickled by its signal, not by its exit code


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
    _state["received"] = signum
    if _state["forward"]:  # a sweep's parent whose jobs run in worker processes: they stop, then it does
        _forward(signum)  # every signal (a worker that started after the first gets the next)
    # Not in a run (a sweep worker between jobs), or already stopping: a second Ctrl-C does not cut the recording
    # of the first.
    if not _state["armed"] or _state["raised"]:
        return
    if _state["deferring"]:
        _state["pending"] = signum
        return
    stop(signum)


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


def _unraisable(hook: Any) -> None:
    """`sys.unraisablehook` while negrl's handler is installed: an `Interrupted` raised where Python ignores
    exceptions (a finalizer: a `__del__`, a weakref callback) is raised again as soon as the finalizer has returned,
    without the "Exception ignored" traceback; every other unraisable exception goes to Python's hook."""
    err = hook.exc_value
    if not (isinstance(err, Interrupted) and _state["raised"]):
        _state["hook_before"](hook)
        return
    _state["raised"] = False
    # the signal again, from a thread: its handler then runs in the main thread's next line, outside the finalizer
    threading.Timer(RERAISE_AFTER, _reraise, args=(err.signum, _state["block"])).start()


def _reraise(signum: int, block: int) -> None:
    """The signal a finalizer swallowed, to the main thread, if the block it arrived in is still running (a block
    that ended, or a later one, is not stopped by it)."""
    if _state["block"] == block and signal.getsignal(signum) is _handler:
        _thread.interrupt_main(signum)


def _install_handlers() -> dict[Any, Any]:
    """negrl's handler for SIGINT and SIGTERM and its unraisable hook; returns what they replaced (`_restore`)."""
    previous: dict[Any, Any] = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous["hook"] = sys.unraisablehook
    if sys.unraisablehook is not _unraisable:  # (never itself: it would call itself)
        _state["hook_before"] = sys.unraisablehook
    for s in STOP_SIGNALS:
        signal.signal(s, _handler)
    sys.unraisablehook = _unraisable
    return previous


def _restore(previous: dict[Any, Any]) -> None:
    """The handlers and unraisable hook `_install_handlers` replaced."""
    for s in STOP_SIGNALS:
        signal.signal(s, previous[s])
    sys.unraisablehook = previous["hook"]


@contextmanager
def stop_on_signals(forward: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block; with `forward` (the parent of a sweep's worker
    processes) they are passed to the children instead, and the block goes on until the workers have stopped.
    The previous handlers are restored afterwards; `received()` stays set until the next block starts. A nested
    block keeps the outer one's handlers; inside a sweep worker (`install`) it raises, for its run, a signal the
    worker received before the block, and any that arrives in it. Outside the main thread this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is _handler:
        if _state["armed"]:
            yield  # inside a block that already stops on signals (a sweep run in this process)
            return
        # a local sweep's worker, or its parent running a job itself (joblib with one job at a time runs them in
        # this process): the run stops on signals
        with _armed():
            yield
        return
    was = {k: _state[k] for k in ("forward", "armed")}
    _state.update(received=None, raised=False, pending=None, forward=forward, armed=not forward)  # a new run starts
    _state["block"] += 1
    previous = _install_handlers()  # after the reset: a signal from now on is this block's
    try:
        yield
    finally:
        _restore(previous)
        _state["block"] += 1  # a re-raise still pending does nothing now
        _state.update(was)


@contextmanager
def _armed() -> Iterator[None]:
    """Inside a sweep worker's run (or one its parent runs itself): a signal received before it stops the run now,
    and one that arrives in the block raises `Interrupted`; after it, signals are recorded only again."""
    _state["armed"] = True  # first: a signal from now on raises, one before it is raised here
    try:
        signum = _state["received"]
        if signum is not None:  # received since the process started: no run starts
            stop(signum)
        yield
    finally:
        _state["armed"] = False


def install() -> None:
    """From now on in this process (a local sweep's worker, from its start), SIGINT and SIGTERM are recorded
    (`received`): the worker starts no further job, and the run it is running stops (`stop_on_signals`, around
    every run). Between jobs, the worker goes on: a worker that died on a signal would have its pool kill the other
    workers, mid-recording. The one call is enough; later ones do nothing."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not _handler:
        _state.update(armed=False, forward=False)
        _install_handlers()


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
            stop(pending)


def reset() -> None:
    """Forget a received signal (for tests that interrupt several runs in one process)."""
    _state.update(received=None, raised=False, deferring=0, pending=None)
    _state["block"] += 1


def stop(signum: int) -> None:
    """Raise `signum` as `Interrupted`, marked raised: a second signal then does not cut its unwinding (the handler,
    a deferred block's end, a run started after the signal, a sweep that stops after a job)."""
    _state["raised"] = True
    raise Interrupted(signum)
