"""Shared test helpers: composing negrl's Hydra config without the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOKENIZER_JSON = SHARED / "data" / "gpt-neox-20b" / "tokenizer.json"

#: Quiet, CPU-only, W&B off, scaled-down data: the defaults of every test run.
FAST = ["data=small", "wandb.enabled=false", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


def make_cfg(*overrides: str) -> DictConfig:
    """negrl's config as `python train.py <FAST> <overrides>` would see it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*FAST, *overrides])


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def tokenizer_json() -> Path:
    if not TOKENIZER_JSON.is_file():
        pytest.fail(f"{TOKENIZER_JSON} is missing: tests need ../shared beside the repository")
    return TOKENIZER_JSON
