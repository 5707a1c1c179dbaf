"""`make bench`'s sweep figures: runs per hour of a seed sweep, stacked (hydra/launcher=stacked) against separate
processes (hydra/launcher=local), for K = 1, 2, 4, 8 seeds, in one run.

    python -m negrl.tools.sweep_bench --model tiny --data small --stacks 1,2,4,8 --json sweep-bench.json

Each K runs `python train.py -m seed=0-(K-1)` twice, as a user would: once stacked, once as K separate processes
(at most one per CPU core at a time on CPU, each with its share of the cores; all K at once on one GPU). It prints
and writes the wall time, runs per hour, the training FLOP/s both achieve against the matmul peak measured in the
same run (negrl.tools.flops: what the steps execute; evaluation and attacks are in the wall time, not in the FLOPs), and
the largest difference in `metric` between a seed's stacked and separate run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from negrl.core.protocol import PHASES
from negrl.method.data import PasswordData
from negrl.model.loading import load_model
from negrl.run.config import CONF_DIR
from negrl.run.rundir import RunDir
from negrl.run.validation import Settings, validate
from negrl.tools.bench import matmul_peak, write_report
from negrl.tools.bench_history import device_name
from negrl.tools.flops import step_flops

TRAIN = Path(__file__).resolve().parents[2] / "train.py"


def sweep(overrides: list[str], k: int, launcher: list[str], sweep_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `train.py -m seed=0-(k-1)` with `launcher`; its wall time and each seed's results."""
    cmd = [sys.executable, str(TRAIN), "-m", f"seed=0-{k - 1}", *launcher, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    results = {}
    for run_dir in (p for p in sweep_dir.iterdir() if p.is_dir()):
        r = RunDir(run_dir).read_results()
        if r is not None and r.get("status") == "complete":
            results[r["run"]["seed"]] = r
    if sorted(results) != list(range(k)):
        raise RuntimeError(f"{sweep_dir}: complete runs of seeds {sorted(results)}, expected 0..{k - 1}")
    return {"wall_s": wall, "results": results}


def run_training_flops(s: Settings, reference_sequences: int) -> int:
    """FLOPs of one run's training steps (each phase's trainable set) and its reference's forward passes."""
    backbone, vocab = load_model(s.model, s.tokens, s.seed, s.adapter)
    data = PasswordData(vocab, s.sizes, s.holdout_frac, s.prefix, s.seed)
    total = 0
    for p in PHASES:
        batch = data.dataset(p)[0]
        tokens = [v for key, v in batch.items() if not key.endswith("_id")]
        positions = tokens[0].shape[-1] - 1 + backbone.context_tokens
        backbone.set_trainable(True, freeze_second_half=p == 2 and s.freeze)
        total += s.steps[p] * step_flops(backbone, sum(len(v) for v in tokens), positions)
    return total + step_flops(backbone, 0, positions, reference_sequences)


def run_sweep_bench(model: str, data: str, stacks: list[int], device: str, precision: str,
                    extra: list[str], root: Path) -> dict[str, Any]:  # fmt: skip
    from hydra import compose, initialize_config_dir

    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    overrides = [f"model={model}", f"data={data}", f"trainer.precision={precision}",
                 f"trainer.accelerator={accelerator}", "wandb.enabled=false", "trainer.enable_progress_bar=false",
                 *extra]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        s = validate(compose(config_name="config", overrides=overrides), warn=False)
    cores = os.cpu_count() or 1
    peak = matmul_peak(torch.bfloat16 if precision == "bf16-mixed" else torch.float32, device)
    out: dict[str, Any] = {"model": model, "data": data, "device": device_name(device), "precision": precision,
                           "overrides": extra, "matmul_peak_flops": peak, "stacks": []}  # fmt: skip
    run_flops = None
    for k in stacks:
        jobs = k if device.startswith("cuda") else min(k, cores)
        ways = {
            "stacked": (["hydra/launcher=stacked"], {}),
            "separate": (["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"],
                         {"OMP_NUM_THREADS": str(max(1, cores // jobs))}),
        }  # fmt: skip
        row: dict[str, Any] = {"K": k}
        for way, (launcher, env) in ways.items():
            got = sweep(overrides, k, launcher, root / f"{way}-{k}", env)
            if run_flops is None:
                run_flops = run_training_flops(s, got["results"][0]["reference"]["sequences_computed"])
                out["run_training_flops"] = run_flops
            flops_per_s = k * run_flops / got["wall_s"]
            row[way] = {"wall_s": got["wall_s"], "runs_per_hour": 3600 * k / got["wall_s"],
                        "flops_per_s": flops_per_s, "frac_of_peak": flops_per_s / peak,
                        "metrics": [got["results"][i]["metric"] for i in range(k)]}  # fmt: skip
        row["speedup"] = row["separate"]["wall_s"] / row["stacked"]["wall_s"]
        row["max_metric_diff"] = max(abs(a - b) for a, b in zip(row["stacked"]["metrics"], row["separate"]["metrics"]))
        out["stacks"].append(row)
    return out


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"negrl sweep bench: model={r['model']} data={r['data']} precision={r['precision']} on {r['device']}; "
        f"matmul peak {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; "
        f"one run's training {r['run_training_flops'] / 1e12:.3f} TFLOP",
        f"{'K':>3} {'way':<9}{'wall s':>9}{'runs/h':>9}{'GFLOP/s':>9}{'% peak':>8}",
    ]
    for row in r["stacks"]:
        for way in ("stacked", "separate"):
            x = row[way]
            lines.append(
                f"{row['K']:>3} {way:<9}{x['wall_s']:>9.1f}{x['runs_per_hour']:>9.1f}{x['flops_per_s'] / 1e9:>9.2f}"
                f"{100 * x['frac_of_peak']:>7.1f}%"
            )
        lines.append(f"{row['K']:>3} stacked is {row['speedup']:.2f}x faster; largest metric difference "
                     f"{row['max_metric_diff']:.1e}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data", default="small", help="paper or small")
    parser.add_argument("--stacks", default="1,2,4,8", help="the numbers of seeds K, comma-separated")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="sweep-bench.json")
    parser.add_argument(
        "overrides", nargs="*", help="more train.py overrides for every run, e.g. extraction.enabled=false"
    )
    args = parser.parse_args(argv)
    try:
        stacks = [int(k) for k in args.stacks.split(",")]
    except ValueError:
        stacks = []
    if not stacks or min(stacks) < 1:
        print(f"negrl sweep bench: error: --stacks={args.stacks} must list positive integers, e.g. 1,2,4,8",
              file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result = run_sweep_bench(args.model, args.data, stacks, args.device, args.precision, args.overrides, Path(tmp))
    write_report(result, format_table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
