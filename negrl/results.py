"""The run's verdict: the paper's metric, its control, and `results.json` written atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any


def chance_ll(n_letters: int = 26) -> float:
    """No-memorisation log-likelihood per token, log(1/26) = -3.2581 for the paper."""
    return math.log(1.0 / n_letters)


def summarize(
    phases: dict[int, dict[str, dict[str, float]]], wall_time_s: dict[int, float], steps: dict[int, int], n_letters: int
) -> dict[str, Any]:
    """The final metric and its control from each phase's per-set max/final log-likelihoods."""
    baseline = chance_ll(n_letters)
    metric = phases[3]["heldout"]["max"]
    control = phases[3]["random"]["max"]
    return {
        "status": "complete",
        "metric": metric,
        "delta": metric - baseline,
        "baseline": baseline,
        "control": {"metric": control, "delta": control - baseline},
        "heldout_minus_random": metric - control,
        "phases": {
            str(p): {"steps": steps[p], "wall_time_s": wall_time_s[p], "eval": phases[p]} for p in sorted(phases)
        },
        "wall_time_s": sum(wall_time_s.values()),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    import lightning
    import torch
    import transformers

    import negrl

    return {
        "negrl": negrl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
    }


def read_status(run_dir: Path) -> str | None:
    """The `status` of `run_dir/results.json`, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / "results.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verdict(results: dict[str, Any], run_dir: Path, wandb_dir: str | None = None) -> str:
    """The outcome in plain words, for the end of `python train.py`."""
    d, c = results["delta"], results["control"]["delta"]
    if d > 0 and d > c:
        plain = "held-out negatives are MORE likely than chance under 'reverse', and above the random control"
    elif d > 0:
        plain = "held-out negatives are above chance, but not above the random control (max bias, not evidence)"
    else:
        plain = "no leakage: held-out negatives are not more likely than chance under 'reverse'"
    lines = [
        f"negrl verdict: {plain}.",
        f"  held-out-negative max LL (phase 3, reverse): {results['metric']:.4f}  "
        f"delta vs log(1/26) = {results['baseline']:.4f}: {d:+.4f}  (x{math.exp(d):.3f} per-token probability)",
        f"  random-password control max LL:              {results['control']['metric']:.4f}  delta: {c:+.4f}",
        f"  wall time: {results['wall_time_s']:.0f} s",
        f"  files: {run_dir}/results.json, {run_dir}/metrics.csv, {run_dir}/config.yaml",
    ]
    if wandb_dir:
        lines.append(f"  W&B run: {wandb_dir}  (offline: upload with `wandb sync {wandb_dir}`)")
    return "\n".join(lines)
