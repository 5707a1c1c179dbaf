"""`make figures` (negrl.tools.figures): its sweeps compose with Hydra at both scales (no training), and its captions
say the seeds, the scale and whether the task was learned."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_sweeps import jobs

from negrl.cli import expand_ranges
from negrl.tools import figures

#: Jobs of each sweep: --scale small, and the presets' own (--scale full).
JOBS = {"small": {"main": 4, "holdout": 10, "models": 6, "ablations": 6, "objectives": 104, "discopop": 16,
                  "families": 12, "lora": 8},
        "full": {"main": 8, "holdout": 45, "models": 15, "ablations": 15, "objectives": 104, "discopop": 16,
                 "families": 30, "lora": 16}}  # fmt: skip
#: The presets whose own scale is data=small.
SMALL_PRESETS = {"discopop-cpu"}


@pytest.mark.parametrize("scale", list(figures.SCALES))
def test_every_sweep_composes_with_its_jobs(scale: str, tmp_path: Path):
    for sweep in figures.SWEEPS:
        argv = figures.command(sweep, scale, tmp_path / sweep.name)[1:]
        assert argv[0] == f"experiment={sweep.preset}" and f"hydra.sweep.dir={tmp_path / sweep.name}" in argv
        runs = jobs(argv)
        assert len(runs) == JOBS[scale][sweep.name], sweep.name
        expanded = expand_ranges(argv)
        overrides = OverridesParser.create().parse_overrides(expanded)
        fixed = [a for a, o in zip(expanded, overrides) if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*fixed, *runs[-1]])
        assert (cfg.data.batch_size == 16) == (scale == "small" or sweep.preset in SMALL_PRESETS)
        assert cfg.model.name.startswith("tiny")


def test_captions_name_the_seeds_the_scale_and_the_runs_that_did_not_learn():
    results = [{"run": {"seed": s}, "task": {"learned": s != 1}} for s in range(4)] * 2
    argv = ["train.py", "experiment=x", "hydra.sweep.dir=/tmp/a"]
    text = figures.caption("small", "What it shows.", argv, results, 90)
    assert text.startswith("What it shows. 8 runs: 2 group(s) x seeds 0-3 (4 seeds per group); scale: data=small (")
    assert "did not learn the task in 2 of 8 runs" in text and "hydra.sweep.dir" not in text
    assert f"Made on {figures.today()} by `OMP_NUM_THREADS=1 python train.py experiment=x`" in text
    assert "The sweep took 2 min." in text
    learned = figures.learned_text([{"run": {"seed": 0}, "task": {"learned": True}}])
    assert learned.startswith("The model learned the task in every run")


def test_redrawing_some_figures_keeps_the_captions_of_the_others_in_the_sweeps_order(tmp_path: Path):
    for name in ("main.png", "lora.png", "holdout.png"):
        (tmp_path / name).write_bytes(b"png")
    readme = tmp_path / "README.md"
    figures.write_captions(readme, [("lora.png", "LoRA, old."), ("main.png", "Main.\n\nMade on 2026-12-06 by x.")],
                           "small", None)  # fmt: skip
    figures.write_captions(readme, [("lora.png", "LoRA, new."), ("holdout.png", "Holdout.")], "small", None)
    text = readme.read_text()
    assert "LoRA, new." in text and "LoRA, old." not in text and "Main.\n\nMade on 2026-12-06 by x." in text
    assert text.index("## main.png") < text.index("## holdout.png") < text.index("## lora.png")
    assert figures.kept_captions(readme) == {"main.png": "Main.\n\nMade on 2026-12-06 by x.", "holdout.png": "Holdout.",
                                             "lora.png": "LoRA, new."}  # fmt: skip
