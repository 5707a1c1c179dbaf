"""negrl entry point: `python train.py [overrides]` runs the three-phase experiment of docs/experiment.md."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from negrl.core.errors import NegrlError
from negrl.model.hub import check_weights_at_hand
from negrl.run.config import check_config
from negrl.run.overrides import (
    CommandLine,
    check_group_choices,
    check_not_a_hidden_sweep,
    expand_ranges,
    read_command_line,
    rename_deprecated,
)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from negrl.cli import run_from_hydra

    return run_from_hydra(cfg)


def checked_before_torch(argv: list[str]) -> tuple[list[str], CommandLine | None]:
    """The checks that need no torch, so that a mistyped command is refused in about a second: renamed keys, ranges,
    group choices, the overrides' syntax, unknown keys and each value's type and range (negrl.run.config, on the
    composed config; a sweep's values are checked with its jobs), several values without -m, a pretrained model out
    of reach. Returns argv rewritten, and the command line read from it (None for --help, --cfg, ...)."""
    argv = expand_ranges(rename_deprecated(argv))
    check_group_choices(argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):  # --help, --cfg, ...
        return argv, None
    cmd = read_command_line(argv)
    check_config(cmd.base)
    check_not_a_hidden_sweep(cmd)
    if not cmd.is_sweep:  # a sweep's models: checked with its jobs
        check_weights_at_hand([OmegaConf.to_container(cmd.base.model, resolve=True)])
    return argv, cmd


if __name__ == "__main__":
    try:
        rewritten, cmd = checked_before_torch(sys.argv[1:])
    except NegrlError as err:
        print(f"negrl: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    from negrl.cli import command_line  # torch and the model code: the rest of the checks, then the run

    # every job checked (a refusal: one line, exit 2); stops on signals
    command_line(main, sys.argv[1:], rewritten, cmd)
