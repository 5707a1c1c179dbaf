"""negrl entry point: `python train.py [overrides]` runs the three-phase experiment of docs/experiment.md."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from negrl.cli import check_group_choices, expand_ranges, preflight, rename_deprecated, run_from_hydra
from negrl.core.errors import NegrlError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    try:
        sys.argv[1:] = expand_ranges(rename_deprecated(sys.argv[1:]))
        check_group_choices(sys.argv[1:])
        sys.argv[1:] = preflight(sys.argv[1:])  # every job checked before Hydra writes anything
    except NegrlError as err:
        print(f"negrl: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    main()
