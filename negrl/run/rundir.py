"""The run directory: its layout, atomic writes into it, its status, and the lock that keeps a second run out.

Every other module asks a `RunDir` for its paths (config.yaml, results.json, metrics.csv,
checkpoints/last.pt, wandb/) and writes through it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from negrl.core.errors import NegrlError
from negrl.run.config import upgrade_renamed

#: What Hydra writes into a run directory before negrl starts: nothing of a run yet.
HYDRA_ONLY = {".hydra", "train.log", ".lock"}


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def as_umask_allows(path: Path) -> None:
    """Give `path` (and, for a directory, all it holds) the mode a plain `open()` or `mkdir()` would: 0666 / 0777 less
    the umask, instead of the 0600 / 0700 of the temporary files and directories negrl writes through."""
    mask = current_umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place: readers see the old
    file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        as_umask_allows(Path(tmp))  # collaborators read what the umask lets them, as for any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as indented JSON at `path`, written atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if it is missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class RunDir:
    """`RUN_DIR/`: config.yaml, results.json, metrics.csv, checkpoints/last.pt, wandb/, and `.lock` while a
    process trains in it."""

    path: Path
    _lock: IO[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        """metrics.csv, written by Lightning's CSVLogger with `save_dir=path`."""
        return self.path / "metrics.csv"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def status(self) -> str | None:
        """`running`, `complete`, `failed`, or None (no readable results.json)."""
        return (self.read_results() or {}).get("status")

    def read_results(self) -> dict[str, Any] | None:
        return read_json(self.results)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results, results)

    def write_config(self, config: dict[str, Any]) -> None:
        write_atomic(self.config, lambda tmp: OmegaConf.save(OmegaConf.create(config), tmp))

    def read_config(self) -> dict[str, Any] | None:
        """The config the run recorded in config.yaml, renamed keys under their new names (None if it has none
        or it is unreadable)."""
        try:
            config = OmegaConf.to_container(OmegaConf.load(self.config), resolve=True)
        except (OSError, ValueError, OmegaConfBaseException):
            return None
        return upgrade_renamed(config) if isinstance(config, dict) else None

    def check_usable(self) -> None:
        """Refuse a directory that holds a completed run, is in use by another process, or cannot be written."""
        if self.status() == "complete":
            raise NegrlError(f"{self.path} already holds a completed run; set hydra.run.dir to a new directory")
        if self.locked_by_other():
            raise NegrlError(
                f"{self.path} is in use by another negrl process (see {self.path / '.lock'}); wait for it to finish "
                "or choose another hydra.run.dir"
            )
        parent = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not os.access(parent, os.W_OK | os.X_OK):
            raise NegrlError(f"cannot write the run directory {self.path} ({parent} is not writable); "
                             "set hydra.run.dir to a writable place")  # fmt: skip

    @contextmanager
    def claimed(self, writer: bool = True) -> Iterator[RunDir]:
        """Hold the directory for one run: refused if it is unusable (`check_usable`), locked until the run
        ends, removed if the run wrote nothing. `writer=False` (DDP ranks > 0): no checks, no lock."""
        if writer:
            self.check_usable()
            self.lock()
        try:
            yield self
        finally:
            self.unlock()

    def lock(self) -> None:
        """Hold `.lock` (an exclusive flock, released when the process ends) for as long as this run trains."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise NegrlError(
                f"{self.path} is in use by another negrl process; wait for it to finish or choose another hydra.run.dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
            (self.path / ".lock").unlink(missing_ok=True)
            if not any(self.path.iterdir()):  # refused before anything was written
                self.path.rmdir()

    def locked_by_other(self) -> bool:
        """Whether another process holds this directory's lock."""
        path = self.path / ".lock"
        if self._lock is not None or not path.exists():
            return False
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def holds_no_run(self) -> bool:
        """Whether the directory holds nothing but what Hydra writes before a run starts."""
        return self.path.is_dir() and {p.name for p in self.path.iterdir()} <= HYDRA_ONLY

    def remove_if_unused(self, stop_at: Path | None = None) -> None:
        """Remove the directory if it holds no run (a refused command), and its parents left empty, up to
        `stop_at` (default: the working directory)."""
        if not self.holds_no_run() or self.locked_by_other():
            return
        log = self.path / "train.log"
        if log.exists() and log.stat().st_size:
            return  # Hydra's log of this job says something: keep it
        shutil.rmtree(self.path)
        stop = (stop_at or Path.cwd()).resolve()
        parent = self.path.resolve().parent
        while parent != stop and stop in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
