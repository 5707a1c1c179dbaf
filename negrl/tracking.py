"""One metrics stream per experiment: a local CSV always, and one W&B run across all phases.

Each phase runs its own Lightning `Trainer`, whose step counter restarts at zero; the
`RunLogger` keeps a global step (phase offset + step) and a `phase` key, and writes the
same rows to every logger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from negrl.errors import NegrlError


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
        for logger in self.loggers:
            logger.log_hyperparams(config)

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
    def wandb_dir(self) -> str | None:
        """The local folder of the W&B run (what `wandb sync` takes), if W&B is on."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                return str(Path(logger.experiment.dir).parent)
        return None


def build_loggers(run_dir: Path, wandb_cfg: dict[str, Any], run_name: str) -> list[Logger]:
    """A CSVLogger writing `run_dir/metrics.csv`, plus a WandbLogger when `wandb.enabled`."""
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=100)]
    if wandb_cfg.get("enabled", True):
        mode = wandb_cfg.get("mode", "offline")
        if mode not in ("offline", "online"):
            raise NegrlError(f"wandb.mode={mode!r} must be 'offline' or 'online' (or set wandb.enabled=false)")
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                name=wandb_cfg.get("name") or run_name,
                project=wandb_cfg.get("project", "negrl"),
                entity=wandb_cfg.get("entity"),
                group=wandb_cfg.get("group"),
                tags=list(wandb_cfg.get("tags") or []),
                offline=mode == "offline",
            )
        )
    return loggers
