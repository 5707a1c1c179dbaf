"""Sweeps: `a-b` integer ranges, the paper's presets and their CPU twins, launchers, job failures."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from conftest import FEW_STEPS, ROOT, SMALL_ATTACKS
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from negrl.cli import expand_ranges, job_devices, sweep_wandb
from negrl.core.errors import NegrlError


def jobs(argv: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for `python train.py ARGV` (ranges expanded as train.py does)."""
    argv = [a for a in expand_ranges(argv) if a not in ("-m", "--multirun")]
    parser = OverridesParser.create()
    fixed = [a for a, o in zip(argv, parser.parse_overrides(argv)) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    preset = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] if cfg.hydra.sweeper.params else []
    parsed = parser.parse_overrides(preset + argv)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@functools.cache
def composed_job(job: tuple[str, ...]) -> DictConfig:
    """A job composed as train.py composes it (read-only: composed once a process, shared by the tests)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(job))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def composed(preset: str, job: tuple[str, ...]) -> DictConfig:
    """A preset's job, composed once a process."""
    return composed_job((f"experiment={preset}", *job))


def but_for_the_seed(runs: list[list[str]]) -> list[list[str]]:
    """The first job of each set of jobs that differ only in the seed."""
    first: dict[tuple[str, ...], list[str]] = {}
    for job in runs:
        first.setdefault(tuple(o for o in job if not o.startswith("seed=")), job)
    return list(first.values())


def test_seed_range_times_a_list_is_sixteen_runs():
    runs = jobs(["-m", "seed=0-7", "freeze=true,false"])
    assert len(runs) == 16
    assert {(j[0], j[1]) for j in runs} == {(f"seed={s}", f"freeze={f}") for s in range(8) for f in ("True", "False")}


def test_ranges_mix_with_lists_range_and_glob():
    assert expand_ranges(["-m", "seed=0-2,10"]) == ["-m", "seed=0,1,2,10"]
    assert expand_ranges(["-m", "data.batch_size=8-9,16"]) == ["-m", "data.batch_size=8,9,16"]
    assert expand_ranges(["-m", "seed=range(0,3)", "model=glob(pythia-*)"]) == [
        "-m", "seed=range(0,3)", "model=glob(pythia-*)",
    ]  # fmt: skip
    assert len(jobs(["-m", "seed=0-1,5", "holdout_frac=0.05,0.1", "eval.every=range(5,7)"])) == 12
    untouched = ["-m", "hydra.run.dir=runs/2026-11-25", "model=pythia-70m", "optim.lr=1e-4"]
    assert expand_ranges(untouched) == untouched


def test_a_range_in_a_single_run_is_a_clear_error():
    with pytest.raises(NegrlError, match=r"seed=0-7 is a range of runs; sweep it with -m"):
        expand_ranges(["seed=0-7"])
    with pytest.raises(NegrlError, match=r"seed=7-0 is an empty range; write the smaller bound first \(seed=0-7\)"):
        expand_ranges(["-m", "seed=7-0"])
    proc = subprocess.run([sys.executable, "train.py", "seed=0-7"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "negrl: error: seed=0-7 is a range of runs; sweep it with -m (python train.py -m seed=0-7) or give one value"
    )


PRESETS = {
    "paper-main": 8, "paper-holdout": 45, "paper-models": 20, "paper-ablations": 15,
    "paper-main-cpu": 8, "paper-holdout-cpu": 45, "paper-models-cpu": 15, "paper-ablations-cpu": 15,
    "objectives": 208, "objectives-cpu": 104, "families": 30, "families-cpu": 30, "lora": 16, "lora-cpu": 16,
    "discopop-cpu": 16,
}  # fmt: skip
ON_PYTHIA_160M = ("paper-main", "paper-holdout", "paper-ablations", "paper-models", "objectives", "families", "lora")


def test_every_preset_of_conf_is_checked_here():
    assert sorted(PRESETS) == sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset,n", PRESETS.items())
def test_each_preset_is_a_complete_sweep_of_valid_configs(preset, n, monkeypatch):
    from negrl.run import validation
    from negrl.run.validation import validate_sweep

    monkeypatch.setattr(validation, "compose_job", lambda job, conf_dir: composed_job(tuple(job)))  # shared

    runs = jobs([f"experiment={preset}"])
    assert len(runs) == n
    models = set()
    for s in validate_sweep([[f"experiment={preset}", *job] for job in runs], set(), ROOT / "conf"):  # as train.py
        assert s.config["wandb"]["group"] == preset
        models.add(s.model["name"])
    assert ("pythia-160m" in models) == (preset in ON_PYTHIA_160M)
    if preset.endswith("-cpu"):
        assert all(m.startswith("tiny") for m in models)


@pytest.mark.parametrize("preset", ["families", "families-cpu"])
def test_families_preset_runs_one_model_of_each_family_with_paper_defaults(preset):
    """Each job but for its seed (the seed changes no other key)."""
    families = {}
    for job in but_for_the_seed(jobs([f"experiment={preset}"])):
        c = OmegaConf.to_container(composed(preset, tuple(job)))
        families.setdefault(c["model"]["model_type"], set()).add(c["model"]["name"])
        assert c["adapter"]["name"] == "none" and c["data"]["n_negatives"] == 2560  # the paper's scale
    assert set(families) == {"gpt_neox", "gpt2", "llama", "qwen2", "olmo2"} and len(families["llama"]) == 2


@pytest.mark.parametrize("preset", ["lora", "lora-cpu"])
def test_lora_preset_pairs_adapters_with_full_fine_tuning_per_seed(preset):
    runs = jobs([f"experiment={preset}"])
    pairs = {tuple(sorted(a for a in job if not a.startswith("adapter="))) for job in runs}
    assert len(pairs) == 8 and sorted(a for job in runs for a in job if a.startswith("adapter=")) == (
        ["adapter=lora"] * 8 + ["adapter=none"] * 8
    )


def test_ablation_preset_runs_the_baseline_and_each_ablation():
    runs = jobs(["experiment=paper-ablations-cpu"])
    knobs = set()
    for job in but_for_the_seed(runs):  # the seed changes no other key
        cfg = composed("paper-ablations-cpu", tuple(job))
        knobs.add((cfg.prefix, cfg.freeze))
    assert knobs == {(True, True), (False, True), (True, False)}


def test_objectives_preset_runs_every_objective_of_the_registry_with_its_defaults():
    from negrl.method.objectives import DEFAULTS, OBJECTIVES

    seen = {}
    for job in jobs(["experiment=objectives-cpu"]):
        overrides = dict(o.split("=", 1) for o in job)
        seen.setdefault(overrides["objective"], set()).add(int(overrides["seed"]))
        if overrides["seed"] != "0":
            continue
        cfg = composed("objectives-cpu", tuple(job))
        params = {k: v for k, v in cfg.objective.items() if k != "name"}
        assert params == pytest.approx(DEFAULTS[cfg.objective.name])
    assert seen == {name: set(range(4)) for name in OBJECTIVES}


@pytest.mark.slow  # two worker processes, each starting torch and Lightning: make test-slow (and CI)
def test_joblib_sweep_runs_in_parallel_and_a_failing_job_does_not_stop_the_others(tmp_path, train_py):
    """Two local processes, three jobs; job 1 crashes mid-run (its checkpoint folder cannot be created) and is
    recorded `failed`, jobs 0 and 2 complete; the sweep exits 1 after one summary line. Through train.py, in this
    process and as its own (`train_py`), with the workers processes either way; no attacks (nothing here reads
    them). The fast suite checks a failing job of a sweep in one process (test_validation's multirun test)."""
    (tmp_path / "1-tiny-seed1").mkdir(parents=True)
    (tmp_path / "1-tiny-seed1" / "checkpoints").write_text("a file where the checkpoint folder goes")
    proc = train_py(
        "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
        "data=small", *FEW_STEPS, "extraction.enabled=false", "wandb.enabled=false",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "seed=0-2", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in tmp_path.glob("*/results.json")}
    assert statuses == {"0-tiny-seed0": "complete", "1-tiny-seed1": "failed", "2-tiny-seed2": "complete"}
    assert "negrl: 1 of 3 jobs failed: 1-tiny-seed1" in proc.stderr


def test_sweep_jobs_share_a_wandb_group_and_are_tagged_with_their_knobs():
    from omegaconf import OmegaConf

    w = OmegaConf.create({"enabled": True, "group": None, "tags": ["mine"]})
    out = sweep_wandb(w, "multirun/2026-11-25/12-00-00", ["seed=3", "freeze=false", "hydra.launcher.n_jobs=2"])
    assert out.group == "12-00-00"
    assert list(out.tags) == ["mine", "seed=3", "freeze=false"]
    preset = sweep_wandb(OmegaConf.create({"group": "paper-main", "tags": []}), "x", ["experiment=paper-main"])
    assert preset.group == "paper-main" and list(preset.tags) == []


def test_gpu_per_job_spreads_jobs_over_the_gpus():
    assert [job_devices(k, 4) for k in range(6)] == [[0], [1], [2], [3], [0], [1]]
    with pytest.raises(NegrlError, match="gpu_per_job=true needs CUDA GPUs"):
        job_devices(0, 0)


def test_a_sweep_of_hub_weights_out_of_reach_is_refused_in_one_line_before_any_job(tmp_path, monkeypatch, capsys):
    """experiment=paper-main without network (and pythia-160m not cached): the single run's refusal, once, exit 2,
    nothing written; not eight failed jobs."""
    import huggingface_hub

    from negrl import cli

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # an empty cache
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setattr(cli, "_LAUNCH", dict(cli._LAUNCH))
    started = []
    with pytest.raises(SystemExit) as exit_:
        cli.command_line(lambda: started.append(1), ["experiment=paper-main", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert exit_.value.code == 2 and not started and not (tmp_path / "sweep").exists()
    assert capsys.readouterr().err.splitlines() == [
        "negrl: error: cannot load EleutherAI/pythia-160m from the Hugging Face hub or its cache (HF_HUB_OFFLINE is "
        "set): EleutherAI/pythia-160m is not in the local cache; connect once to cache it, or pass model.path=DIR (a "
        "saved checkpoint), or model.init=random"
    ]


def test_sweep_subdirectories_show_the_knobs_the_sweep_varies(tmp_path, monkeypatch):
    """`2-tiny-seed0-holdout_frac0.1`, not `2-tiny-seed0`; a group by its option's name; the seed alone as before."""
    from omegaconf import OmegaConf

    from negrl.cli import preflight, resume_search

    monkeypatch.chdir(tmp_path)
    common = [*SMALL_ATTACKS, "data=small", "wandb.enabled=false", "trainer.accelerator=cpu"]
    subdir = preflight(["-m", "seed=0,1", "holdout_frac=0.05,0.1", "freeze=true,false", *common])[-1]
    assert subdir == (
        "hydra.sweep.subdir='${hydra.job.num}-${model.name}-seed${seed}-freeze${freeze}-holdout_frac${holdout_frac}'"
    )
    assert preflight(["-m", "seed=0", "objective=dpo,ipo", *common])[-1] == (
        "hydra.sweep.subdir='${hydra.job.num}-${model.name}-seed${seed}-objective${objective.name}'"
    )
    assert preflight(["-m", "seed=0,1", *common])[-1] == "trainer.accelerator=cpu"  # the seed is in the name already
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["holdout_frac=0.1", "seed=2", subdir], return_hydra_config=True)
    search = resume_search(cfg.hydra, OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), multirun=True)
    assert search.endswith("/*-tiny-seed2-freezeTrue-holdout_frac0.1")  # resume=true finds the job's earlier runs
