"""negrl entry point: `python train.py [overrides]` runs the three-phase experiment of SPEC.md."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from negrl.errors import NegrlError
from negrl.pipeline import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = run(cfg, run_dir)
    except NegrlError as err:
        print(f"negrl: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    print(results["verdict"])
    return results["delta"]


if __name__ == "__main__":
    main()
