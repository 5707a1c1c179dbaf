"""negrl entry point: `python train.py [overrides]` runs the three-phase experiment of docs/experiment.md."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from negrl.cli import command_line, run_from_hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    command_line(main)  # checks every job first (a refusal: one line, exit 2), then runs; stops on SIGINT/SIGTERM
