"""`make figures`: the figures of the docs (docs/figures/) from real runs of the presets' CPU twins, drawn by
`negrl-report`.

    python -m negrl.tools.figures --scale small      # data=small, fewer seeds: about two hours on one core
    python -m negrl.tools.figures                    # the presets as they are (conf/experiment/*-cpu.yaml): hours

Each sweep runs one job after another (Hydra's basic launcher, one thread: set OMP_NUM_THREADS=1), into
`--runs/<sweep>` (emptied first); `negrl-report` then draws its figures, the ones the docs show are copied into
`--out`, and `--out`/README.md gets each figure's caption: the command that made it, its runs and seeds, its scale,
and whether the model learned the task (results.json `task`). `--no-train` redraws from the runs already there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from negrl.tools.bench_history import device_name

ROOT = Path(__file__).resolve().parents[2]
#: How each scale runs the presets: the overrides added to every sweep, and the scale in words.
SCALES = {
    "full": ((), "the preset's own scale (data=paper: 64 + 1200 + 1200 steps of batch 128, 128 passwords per set)"),
    "small": (
        ("data=small",),
        "data=small (320 negatives x 4 repeats, batch 16: 8 + 80 + 80 steps; 16 passwords per evaluation set)",
    ),
}
#: Every sweep also runs with these: one job after another, no W&B, no progress bar.
COMMON = ("hydra/launcher=basic", "wandb.enabled=false", "trainer.enable_progress_bar=false")


@dataclass(frozen=True)
class Sweep:
    """A preset's CPU twin and the figures of its report the docs show (report file -> docs file, caption)."""

    name: str
    preset: str
    #: The sweep of --scale small (fewer seeds, fewer held-out fractions); --scale full: the preset's own.
    small: tuple[str, ...]
    figures: tuple[tuple[str, str, str], ...]


SWEEPS = (
    Sweep("main", "paper-main-cpu", ("seed=0-3",), (
        ("fig_curves.png", "main.png", "Held-out negatives against random passwords (and useful negatives) across the "
         "three phases: each set's mean log-likelihood per token at every evaluation, mean over seeds with a ± 1 std "
         "band; phase 3 is evaluated under ' reverse'. Chance is log(1/26)."),
        ("fig_lens.png", "lens.png", "The logit lens of each phase's final model: the letter log-likelihood read out "
         "after each layer (0 = embeddings), per set, mean ± std over seeds."),
        ("fig_positions.png", "positions.png", "Letter-by-letter recovery: how often the true letter is the most "
         "likely one at each position, greedy on the final model and the phase-2 logit difference, held-out against "
         "random, mean ± std over seeds; chance 1/26."),
    )),
    Sweep("holdout", "paper-holdout-cpu", ("holdout_frac=0.05,0.15,0.25,0.35,0.45", "seed=0-1"), (
        ("fig_holdout.png", "holdout.png", "Max phase-3 log-likelihood of held-out negatives and of random passwords "
         "against the held-out fraction, mean ± std over seeds."),
    )),
    Sweep("models", "paper-models-cpu", ("seed=0-1",), (
        ("fig_models.png", "models.png", "The same against model size: the tiny model at hidden sizes 64, 128 and "
         "256, mean ± std over seeds."),
    )),
    Sweep("ablations", "paper-ablations-cpu", ("seed=0-1",), (
        ("fig_ablations.png", "ablations.png", "The ablations: each group's max phase-3 log-likelihood minus chance, "
         "held-out negatives against random passwords, without the prefixes and without the phase-2 freeze against "
         "the baseline, mean ± std over seeds."),
    )),
    Sweep("objectives", "objectives-cpu", ("seed=0-3",), (
        ("fig_ablations.png", "objectives.png", "Every objective: the max phase-3 log-likelihood minus chance of "
         "held-out negatives against random passwords, mean ± std over seeds (a group per objective)."),
    )),
    Sweep("discopop", "discopop-cpu", (), (
        ("fig_ablations.png", "discopop.png", "DiscoPOP against DPO (the preset's own scale, data=small): the max "
         "phase-3 log-likelihood minus chance of held-out negatives against random passwords, mean ± std over "
         "seeds."),
    )),
    Sweep("families", "families-cpu", ("seed=0-1",), (
        ("fig_models.png", "families.png", "Each model family's architecture at the tiny model's size (random "
         "init): max phase-3 log-likelihood of held-out negatives and of random passwords, mean ± std over seeds."),
    )),
    Sweep("lora", "lora-cpu", ("seed=0-3",), (
        ("fig_ablations.png", "lora.png", "LoRA adapters against full fine-tuning: the max phase-3 log-likelihood "
         "minus chance of held-out negatives against random passwords, mean ± std over seeds."),
    )),
)  # fmt: skip


def command(sweep: Sweep, scale: str, sweep_dir: Path) -> list[str]:
    """The `python train.py` command of `sweep` at `scale`, writing its runs into `sweep_dir`."""
    overrides = [*SCALES[scale][0], *(sweep.small if scale == "small" else ())]
    return ["train.py", f"experiment={sweep.preset}", *overrides, *COMMON, f"hydra.sweep.dir={sweep_dir}"]


def run_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """The results.json of every complete run under `sweep_dir`."""
    found = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("results.json"))]
    return [r for r in found if r.get("status") == "complete"]


def today() -> str:
    """The date, as the captions give it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def seeds_text(results: Sequence[dict[str, Any]]) -> str:
    """'8 runs, seeds 0-3 (4 per group)': the runs a figure pools."""
    seeds = sorted({r["run"]["seed"] for r in results})
    groups = len(results) // max(len(seeds), 1)
    span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
    return f"{len(results)} runs: {groups} group(s) x seeds {span} ({len(seeds)} seeds per group)"


def learned_text(results: Sequence[dict[str, Any]]) -> str:
    """Whether the model learned the task in the runs (results.json `task`), as the report says it."""
    failed = sum(1 for r in results if not (r.get("task") or {}).get("learned", True))
    if not failed:
        return "The model learned the task in every run (its random-password control ends within 0.02 nats of chance)."
    return (
        f"The model did not learn the task in {failed} of {len(results)} runs at this scale (its random-password "
        "control ends more than 0.02 nats below chance; the report lists them): held-out against chance says "
        "nothing about negatives there, held-out against random still does."
    )


def caption(scale: str, text: str, argv: Sequence[str], results: Sequence[dict[str, Any]], wall: float | None) -> str:
    """A figure's caption: what it shows, its runs and seeds, its scale, the command, whether the task was learned
    and (if it ran now) the sweep's wall time."""
    shown = " ".join(a for a in argv if not a.startswith("hydra.sweep.dir="))
    took = f" The sweep took {wall / 60:.0f} min." if wall is not None else ""
    return (
        f"{text} {seeds_text(results)}; scale: {SCALES[scale][1]}. {learned_text(results)}\n\n"
        f"Made on {today()} by `OMP_NUM_THREADS=1 python {shown}`, then `negrl-report` on its runs.{took}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m negrl.tools.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=list(SCALES), default="full", help="full: the presets; small: data=small")
    parser.add_argument("--runs", type=Path, default=None, help="where the runs go (default multirun/figures/SCALE)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="where the figures go")
    parser.add_argument("--only", nargs="*", choices=[s.name for s in SWEEPS], help="these sweeps only")
    parser.add_argument("--no-train", action="store_true", help="redraw from the runs already under --runs")
    args = parser.parse_args(argv)
    runs = args.runs or ROOT / "multirun" / "figures" / args.scale
    args.out.mkdir(parents=True, exist_ok=True)
    entries, total = [], 0.0
    for sweep in SWEEPS:
        if args.only and sweep.name not in args.only:
            continue
        sweep_dir = (runs / sweep.name).resolve()
        cmd = command(sweep, args.scale, sweep_dir)
        wall = None
        if not args.no_train:
            shutil.rmtree(sweep_dir, ignore_errors=True)
            print(f"figures: {sweep.name}: python {' '.join(cmd)}", flush=True)
            started = time.perf_counter()
            if subprocess.run([sys.executable, *cmd], cwd=ROOT).returncode:
                print(f"figures: a run of {sweep.name} failed (above); its runs are in {sweep_dir}", file=sys.stderr)
                return 1
            wall = time.perf_counter() - started
            total += wall
        report = sweep_dir / "report"
        draw = [sys.executable, "-m", "negrl.report", str(sweep_dir), "--out", str(report)]
        if subprocess.run(draw, cwd=ROOT).returncode:
            print(f"figures: negrl-report found no complete run of {sweep.name} in {sweep_dir}", file=sys.stderr)
            return 1
        results = run_results(sweep_dir)
        for source, target, text in sweep.figures:
            shutil.copyfile(report / source, args.out / target)
            entries.append((target, caption(args.scale, text, cmd, results, wall)))
    write_captions(args.out / "README.md", entries, args.scale, None if args.no_train or args.only else total)
    print(f"figures: wrote {', '.join(t for t, _ in entries)} and README.md into {args.out}")
    return 0


def write_captions(path: Path, entries: Sequence[tuple[str, str]], scale: str, wall: float | None) -> None:
    """docs/figures/README.md: each figure with its caption, how to make them again and (if they ran now) how long
    the sweeps took."""
    took = f" ({wall / 60:.0f} min in all)" if wall is not None else ""
    lines = [
        "# Figures of the docs",
        "",
        "Drawn by `negrl-report` from real runs of the presets' CPU twins (the `-cpu` presets of `conf/experiment/`), "
        f"run on {device_name('cpu')} with one thread per run, one run after another{took}, by",
        "",
        "```bash",
        f"make figures FIGURE_SCALE={scale}   # python -m negrl.tools.figures --scale {scale}",
        "```",
        "",
        "`make figures` (FIGURE_SCALE=full, the default) runs the presets at their own scale (hours on a CPU); "
        "FIGURE_SCALE=small runs them on `data=small` with fewer seeds (about two hours on one core: the 26 "
        "objectives take one). "
        "Each caption gives the date, the command, the seeds and the scale of its figure.",
    ]
    captions = {**kept_captions(path), **dict(entries)}
    order = [target for sweep in SWEEPS for _, target, _ in sweep.figures]
    for name in sorted(captions, key=lambda n: order.index(n) if n in order else len(order)):
        lines += ["", f"## {name}", "", f"![{name}]({name})", "", captions[name]]
    path.write_text("\n".join(lines) + "\n")


def kept_captions(path: Path) -> dict[str, str]:
    """The captions already in `path` (docs/figures/README.md), by figure: `--only` redraws some figures and keeps
    the others' captions."""
    if not path.is_file():
        return {}
    found: dict[str, str] = {}
    for section in path.read_text().split("\n## ")[1:]:
        name, _, body = section.partition("\n")
        text = body.strip().removeprefix(f"![{name}]({name})").strip()
        if (path.parent / name).is_file():
            found[name] = text
    return found


if __name__ == "__main__":
    sys.exit(main())
