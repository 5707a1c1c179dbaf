"""What a run sends to W&B: its config flat (W&B's group-by and filters take each key as it is), its group, and the
paper's metric, control and delta in its summary."""

from __future__ import annotations

from negrl.run.rundir import RunDir
from negrl.run.tracking import RunLogger, build_loggers, flat_config


def test_a_nested_config_is_flat_with_dotted_keys():
    config = {"seed": 3, "data": {"n_negatives": 80, "batch_size": 16}, "model": {"architecture": {"hidden_size": 64}},
              "wandb": {"tags": ["a"], "group": None}, "empty": {}}  # fmt: skip
    assert flat_config(config) == {
        "seed": 3, "data.n_negatives": 80, "data.batch_size": 16, "model.architecture.hidden_size": 64,
        "wandb.tags": ["a"], "wandb.group": None, "empty": {},
    }  # fmt: skip


def test_a_wandb_run_gets_the_flat_config_its_group_and_the_metric_control_and_delta(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_cfg = {"enabled": True, "mode": "offline", "project": "negrl", "group": "sweep-1", "tags": ["seed=0"]}
    loggers = build_loggers(RunDir(tmp_path), wandb_cfg)
    run = RunLogger(loggers)
    run.log_config({"seed": 0, "data": {"n_negatives": 80}})
    experiment = loggers[-1].experiment
    assert experiment.group == "sweep-1"
    assert experiment.config["data.n_negatives"] == 80 and "data" not in experiment.config
    finish, exit_codes = experiment.finish, []
    monkeypatch.setattr(experiment, "finish", lambda exit_code=None: exit_codes.append(exit_code))
    run.finish("success", {"metric": -3.3, "control": -3.26, "delta": -0.04})
    assert {k: experiment.summary[k] for k in ("metric", "control", "delta")} == {
        "metric": -3.3, "control": -3.26, "delta": -0.04
    }
    assert exit_codes == [0]
    finish()
    assert (tmp_path / "hparams.yaml").read_text() == "seed: 0\ndata:\n  n_negatives: 80\n"  # the CSV side: nested


def test_a_lora_run_with_wandb_prints_only_negrls_lines(tmp_path, capfd, monkeypatch):
    """No W&B banner or sync hints, no transformers deprecation warning from peft, no progress bar: negrl's lines
    (its warnings on stderr, the verdict on stdout)."""
    import warnings

    from conftest import FEW_STEPS, make_cfg

    from negrl.pipeline import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(make_cfg(*FEW_STEPS, "adapter=lora", "wandb.enabled=true"), tmp_path / "run")
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert all(line.startswith("negrl: ") for line in err), err
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_a_resumed_runs_kept_metric_rows_are_on_disk_as_soon_as_its_logger_starts(tmp_path):
    """The CSV logger deletes metrics.csv when it starts; the rows a resume keeps are written back at once, so a hard
    kill before the next flush loses none of them."""
    import csv

    rows = [{"step": str(s), "train/loss": str(1.0 + s), "lr": str(s / 10)} for s in range(6)]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["lr", "step", "train/loss"])
        writer.writeheader()
        writer.writerows(rows)
    build_loggers(RunDir(tmp_path), {"enabled": False}, resume_step=3)
    on_disk = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(int(r["step"]), float(r["train/loss"])) for r in on_disk] == [(s, 1.0 + s) for s in range(4)]
