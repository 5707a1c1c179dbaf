"""One metrics stream per experiment: a local CSV always, and one W&B run across all phases.

Each phase runs its own Lightning `Trainer`, whose step counter restarts at zero; the
`RunLogger` keeps a global step (phase offset + step) and a `phase` key, and writes the
same rows to every logger.
"""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from negrl.run.rundir import RunDir


class RunLogger:
    """Sends each metrics row, stamped with `phase` and the global step, to all loggers."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers
        self.phase = 0
        self.offset = 0

    def start_phase(self, phase: int, offset: int) -> None:
        """Steps of the next rows count from `offset`; rows carry `phase`."""
        self.phase, self.offset = phase, offset

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {**metrics, "phase": self.phase}
        for logger in self.loggers:
            logger.log_metrics(row, step=self.offset + step)

    def log_config(self, config: dict[str, Any]) -> None:
        """The run's config: nested in the CSV logger's hparams.yaml, flat (`data.n_negatives`) in W&B, whose
        group-by and filters then take each key as it is."""
        for logger in self.loggers:
            logger.log_hyperparams(flat_config(config) if isinstance(logger, WandbLogger) else config)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.save()

    def finish(self, status: str, summary: dict[str, Any] | None = None) -> None:
        """Flush every logger and close the W&B run (`status`: 'success' or 'failed')."""
        self.flush()
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                if summary:
                    run.summary.update(summary)
                run.finish(exit_code=0 if status == "success" else 1)
            logger.finalize(status)

    @property
    def wandb_id(self) -> str | None:
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                return logger.experiment.id
        return None

    @property
    def wandb_dir(self) -> str | None:
        """The local folder of the W&B run (what `wandb sync` takes), if W&B is on."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                return str(Path(logger.experiment.dir).parent)
        return None


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys: {"data": {"n_negatives": 8}} -> {"data.n_negatives": 8}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def build_loggers(
    owner: RunDir, wandb_cfg: dict[str, Any], resume_step: int | None = None, wandb_id: str | None = None
) -> list[Logger]:
    """A CSVLogger writing the run's metrics.csv, plus a WandbLogger (in RUN_DIR/wandb) when `wandb.enabled`.

    On resume, metrics.csv keeps its rows up to global step `resume_step` and the W&B run
    `wandb_id` is continued.
    """
    run_dir = owner.path
    kept = _csv_rows_up_to(owner.metrics, resume_step) if resume_step is not None else []
    csv_logger = CSVLogger(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=100)
    for step, row in kept:
        csv_logger.log_metrics(row, step=step)
    if kept:  # on disk now: the logger deleted the file when it started, and a hard kill must not lose these rows
        csv_logger.save()
    loggers: list[Logger] = [csv_logger]
    if wandb_cfg.get("enabled", True):
        mode = wandb_cfg.get("mode", "offline")  # checked by negrl.run.config
        loggers.append(
            _wandb_logger(
                save_dir=str(run_dir),
                name=wandb_cfg.get("name") or run_dir.name,
                project=wandb_cfg.get("project", "negrl"),
                entity=wandb_cfg.get("entity"),
                group=wandb_cfg.get("group"),
                tags=list(wandb_cfg.get("tags") or []),
                offline=mode == "offline",
                **({"id": wandb_id, "resume": "allow"} if wandb_id else {}),
            )
        )
    return loggers


def _csv_rows_up_to(path: Path, last_step: int) -> list[tuple[int, dict[str, float]]]:
    """The rows of a metrics.csv up to `last_step`, empty cells dropped."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [(int(r.pop("step")), {k: _number(v) for k, v in r.items() if v != ""}) for r in csv.DictReader(f)]
    return [(step, row) for step, row in rows if step <= last_step]


def _wandb_logger(**kwargs: Any) -> WandbLogger:
    """Lightning's WandbLogger without its `anonymous=None` init argument, which wandb warns about on every run
    ("The anonymous setting has no effect"), and quiet; each one its own W&B run, also beside others in the process
    (stacked seeds, negrl.stacked.runner: `reinit="create_new"` leaves the other runs, and `wandb.run`, alone)."""
    import wandb

    # quiet: no banner, sync hints or run summary on the terminal (negrl's verdict names the W&B folder)
    logger = WandbLogger(reinit="create_new", settings=wandb.Settings(quiet=True, silent=True), **kwargs)
    logger._wandb_init.pop("anonymous", None)
    return logger


def _number(text: str) -> int | float:
    """A metrics.csv cell as written: integers (the `phase` column) stay integers."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def wandb_login_found() -> bool:
    """Whether W&B online mode has credentials: WANDB_API_KEY (or an identity token file), or a `wandb login`
    entry in ~/.netrc (or $NETRC) for the host of WANDB_BASE_URL (default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
