"""`make bench`: time training steps of each phase, optimized against a plain baseline.

    python -m negrl.tools.bench --model pythia-70m --steps 3 --json bench.json

For one model shape (random init), times `--steps` steps (after one warm-up step) of each phase
in the optimized configuration (the defaults at `--precision`) and in a plain baseline (no
reference cache, fp32, unfused AdamW and log-probs, sdpa attention), one after the other in the
same process, and prints per phase: seconds per step, tokens per second, achieved FLOP/s against
a matmul peak measured in the same run, peak memory, the projected wall time of a full paper run
(64 + 1200 + 1200 steps and their evaluations), and the optimized/baseline ratio. The steps run
through the pipeline's own Trainer and phase modules, built from the composed settings. With `--profile`
(CPU), one more step of each phase in the optimized configuration runs under the torch profiler: its time
in matrix multiplications, the rest, and the operators that take the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from negrl.attacks.extraction import Extraction
from negrl.core.machine import NATIVE_BF16_NAMES, native_cpu_bf16
from negrl.core.protocol import PHASES
from negrl.method.data import PasswordData
from negrl.method.evaluation import Evaluator
from negrl.method.phases import JointPhase, NTPPhase, ObjectivePhase, PhaseModule
from negrl.method.reference import ReferenceLogprobs
from negrl.model.backbone import Backbone
from negrl.model.loading import load_model
from negrl.run.config import CONF_DIR
from negrl.run.runner import make_trainer, quiet_lightning
from negrl.run.validation import Settings, validate
from negrl.tools.bench_history import HISTORY_DIR, compare_with_history
from negrl.tools.flops import matmul_weights, step_flops

PAPER_STEPS = {1: 64, 2: 1200, 3: 1200}
#: Operators whose self time is matrix multiplication; everything else in a step is "other" in a profile.
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::mv",
                        "aten::_addmm_activation"})  # fmt: skip


def matmul_peak(dtype: torch.dtype, device: str, reps: int = 10, budget_s: float = 0.2) -> float:
    """FLOP/s of a square matmul in `dtype` (n = 2048 on CPU, 8192 on GPU), best of `reps` after 3 warm-ups.
    On a CPU without native support for `dtype` (bf16 without AVX-512 bf16 or AMX runs 4-50x slower) n shrinks, in steps
    of 256, until one matmul takes at most `budget_s` by a 256-square probe."""
    n = 8192 if device.startswith("cuda") else 2048
    if not device.startswith("cuda"):
        probe = torch.randn(256, 256).to(dtype)
        probe @ probe
        t = time.perf_counter()
        probe @ probe
        rate = 2 * 256**3 / max(time.perf_counter() - t, 1e-9)
        n = max(256, min(n, int((rate * budget_s / 2) ** (1 / 3)) // 256 * 256))
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(3):
        a @ b
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_name(precision: str) -> str:
    """Which measured matmul peak a configuration at `precision` is held against: "bf16" or "fp32"."""
    return "bf16" if str(precision) == "bf16-mixed" else "fp32"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mb(device: str) -> float:
    """GPU: peak allocated since the last reset. CPU: the process's peak RSS (shared by both configurations)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def matmul_operands(name: str, shapes: Sequence[Sequence[int]]) -> tuple[Sequence[int], Sequence[int]]:
    """The two multiplied operands' shapes among a matmul operator's input shapes as the profiler records them:
    `mm`/`bmm`/`mv` take them first, the `add*` forms after the tensor they add to."""
    a, b = shapes[1:3] if name.removeprefix("aten::").startswith(("add", "_add", "badd")) else shapes[:2]
    return a, b


def matmul_flops(name: str, shapes: Sequence[Sequence[int]]) -> int:
    """FLOPs of one call of the matmul operator `name` (one of `MATMUL_OPS`) with these input shapes."""
    a, b = matmul_operands(name, shapes)
    return 2 * math.prod(a) * (b[-1] if len(b) > 1 else 1)


def step_profile(events: Any, top: int = 8) -> dict[str, Any]:
    """A profiled step's operators (`torch.profiler`'s `key_averages(group_by_input_shape=True)`), their self CPU
    time split into matrix multiplications and the rest, in seconds: the `top` operators of the rest, and the `top`
    matmuls by time with their shapes, calls and FLOP/s (a slow kernel shows as one shape far below the peak)."""
    other: dict[str, float] = {}
    matmuls, matmul_s = [], 0.0
    for e in events:
        t = e.self_cpu_time_total / 1e6
        if e.key not in MATMUL_OPS:
            other[e.key] = other.get(e.key, 0.0) + t
            continue
        matmul_s += t
        shapes = [list(x) for x in e.input_shapes]
        flops = e.count * matmul_flops(e.key, shapes)
        matmuls.append([e.key, shapes, e.count, t, flops / t if t > 0 else 0.0])
    ranked = sorted(other.items(), key=lambda kt: -kt[1])
    return {"matmul_s": matmul_s, "other_s": sum(other.values()), "top_other": [[k, t] for k, t in ranked[:top]],
            "top_matmuls": sorted(matmuls, key=lambda m: -m[3])[:top]}  # fmt: skip


def matmul_label(name: str, shapes: Sequence[Sequence[int]]) -> str:
    """`mm 2048x512@512x50304`: an operator and its two operands, as a profile line shows them."""
    a, b = matmul_operands(name, shapes)
    return f"{name.removeprefix('aten::')} {'x'.join(map(str, a))}@{'x'.join(map(str, b))}"


class StepTimer(Callback):
    """Per optimizer step of a fit: seconds (device work included), label tokens and sequences trained, positions
    per sequence, sequences the reference computed, and peak memory. Step 0 is a warm-up and not recorded; step
    `profile_at`, if any, runs under the torch profiler (`profile`: its `step_profile`) and is not timed either."""

    def __init__(self, device: str, profile_at: int | None = None):
        self.device, self.profile_at = device, profile_at
        self.times: list[float] = []
        self.tokens = self.sequences = self.ref_sequences = self.positions = 0
        self.memory_mb = 0.0
        self._start, self._computed = 0.0, 0
        self._profiler: torch.profiler.profile | None = None
        self.profile: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.profile_at:
            cpu = [torch.profiler.ProfilerActivity.CPU]
            self._profiler = torch.profiler.profile(activities=cpu, record_shapes=True)
            self._profiler.__enter__()
            return
        _reset_peak_memory(self.device)
        _sync(self.device)
        self._computed = _reference_computed(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.profile_at:
            self._profiler.__exit__(None, None, None)
            self.profile = step_profile(self._profiler.key_averages(group_by_input_shape=True))
            return
        _sync(self.device)
        elapsed = time.perf_counter() - self._start
        self.memory_mb = max(self.memory_mb, _peak_memory_mb(self.device))
        if batch_idx == 0:
            return
        self.times.append(elapsed)
        tokens = [v for k, v in batch.items() if not k.endswith("_id")]
        self.tokens += sum(v.numel() - len(v) for v in tokens)
        self.sequences += sum(len(v) for v in tokens)
        self.positions = tokens[0].shape[-1] - 1 + pl_module.backbone.context_tokens  # the labels' inputs and a BOS
        self.ref_sequences += _reference_computed(pl_module) - self._computed


def _reference_computed(module: PhaseModule) -> int:
    ref = getattr(module, "reference_logprobs", None)
    return 0 if ref is None else ref.computed


def phase_module(phase: int, s: Settings, backbone: Backbone, reference: ReferenceLogprobs) -> PhaseModule:
    """The pipeline's module of `phase` under settings `s` (at the paper's phase length, for its schedule)."""
    negative = dict(objective=s.objective, beta=s.beta, optim=s.optim, total_steps=PAPER_STEPS[phase])
    if phase == 1:
        return NTPPhase(backbone, optim=s.optim, total_steps=PAPER_STEPS[phase])
    if phase == 2:
        return ObjectivePhase(backbone, reference, freeze=s.freeze, **negative)
    return JointPhase(backbone, reference, weights=s.weights, **negative)


def warm_cache(reference: ReferenceLogprobs, data: PasswordData, phase: int, device: str) -> None:
    """The reference cache in its steady state: phase 2 has seen every negative after ~20 steps (chosen sequences
    are new at every step of phase 2), phase 3 all pairs."""
    dataset = data.dataset(phase)
    for i in range(min(len(dataset), 64 if phase == 3 else 40)):
        batch = {k: v.to(device) for k, v in dataset[i].items()}
        if phase == 2:
            batch = {**batch, "chosen": batch["chosen"][:0], "chosen_id": batch["chosen_id"][:0]}
        reference(batch)


def time_phase(
    phase: int, s: Settings, backbone, reference_model, data, steps: int, device: str, profile: bool = False
) -> StepTimer:
    """`steps` (+1 warm-up) steps of a phase through the pipeline's own Trainer and module, under settings `s`;
    with `profile`, one more step under the torch profiler."""
    for model in (backbone, reference_model):
        model.set_compute(**s.compute)
    sizes = s.sizes
    reference = ReferenceLogprobs(reference_model, sizes.dpo_size, sizes.n_negatives, use_cache=s.reference_cache)
    if s.reference_cache and phase >= 2:
        warm_cache(reference, data, phase, device)
    timer = StepTimer(device, profile_at=steps + 1 if profile else None)
    with quiet_lightning(), tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(s.trainer, s.optim.grad_clip, steps + 1 + profile, [timer], Path(tmp))
        trainer.fit(phase_module(phase, s, backbone, reference), datamodule=data.for_phase(phase))
    return timer


def bench_settings(model: str, precision: str, device: str, overrides: Sequence[str] = ()) -> dict[str, Settings]:
    """The settings timed: the default configuration (at `precision`) and a plain baseline (no reference cache,
    fp32, unfused AdamW, plain-autograd log-probs, Hugging Face's default attention), both from conf/."""
    from hydra import compose, initialize_config_dir

    common = [f"model={model}", "model.init=random", "wandb.enabled=false", "trainer.enable_progress_bar=false",
              f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}", *overrides]  # fmt: skip
    configs = {
        "optimized": [f"trainer.precision={precision}"],
        "baseline": ["trainer.precision=32-true", "reference.cache=false", "optim.fused=false",
                     "compute.fused_logprobs=false", "compute.attention=sdpa"],
    }  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {name: validate(compose(config_name="config", overrides=[*common, *extra]), warn=False)
                for name, extra in configs.items()}  # fmt: skip


def run_bench(
    model: str, steps: int, precision: str, device: str, overrides: Sequence[str] = (), profile: bool = False
) -> dict[str, Any]:
    settings = bench_settings(model, precision, device, overrides)
    s = settings["optimized"]
    backbone, vocab = load_model(s.model, s.tokens, s.seed, s.adapter)
    backbone.to(device)
    reference = backbone.frozen_copy()
    data = PasswordData(vocab, s.sizes, s.holdout_frac, s.prefix, s.seed)
    n_params = matmul_weights(backbone)[0]
    peaks = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    out: dict[str, Any] = {"model": model, "device": device, "precision": precision, "steps": steps,
                           "overrides": list(overrides), "params_non_embedding": n_params, "matmul_peak_flops": peaks,
                           "bf16_emulated": not device.startswith("cuda") and not native_cpu_bf16(),
                           "threads": torch.get_num_threads(), "thp": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
                           "phases": {}}  # fmt: skip
    evaluator, extraction = Evaluator(s.eval_every), Extraction(vocab.letter_ids, s.sizes.password_length, s.attacks)
    sets, candidates = data.eval_sets(3), data.candidates(3, s.attacks.candidates)
    evaluator.start_phase(sets)
    evaluator.evaluate(backbone)
    eval_s, extract_s, extract_ref_s = {}, {}, {}
    for name, config in settings.items():
        for model in (backbone, reference):
            model.set_compute(**config.compute)
        eval_s[name] = _timed(lambda: evaluator.evaluate(backbone), device)
        # The attacks after phase 1; after phases 2 and 3 against the reference too.
        extract_s[name] = _timed(lambda: extraction(backbone, sets, candidates), device)
        extract_ref_s[name] = _timed(lambda: extraction(backbone, sets, candidates, reference), device)
    for phase in PHASES:
        row = {}
        for name, config in settings.items():
            timer = time_phase(phase, config, backbone, reference, data, steps, device, profile and name == "optimized")
            sec = sum(timer.times) / steps
            # What the step executed, with the phase's trainable set (negrl.tools.flops: frozen weights cost 4, not 6).
            flops = step_flops(backbone, timer.sequences, timer.positions, timer.ref_sequences) / steps
            peak = peaks[peak_name(config.trainer["precision"])]
            row[name] = {
                "s_per_step": sec,
                "tokens_per_s": timer.tokens / steps / sec,
                "flops_per_s": flops / sec,
                "frac_of_peak": flops / sec / peak,
                "peak_memory_mb": timer.memory_mb,
            }
            if timer.profile is not None:
                row[name]["profile"] = timer.profile
        row["speedup"] = row["baseline"]["s_per_step"] / row["optimized"]["s_per_step"]
        out["phases"][str(phase)] = row
    n_evals = sum((n + s.eval_every - 1) // s.eval_every for n in PAPER_STEPS.values())
    for name in settings:
        total = sum(PAPER_STEPS[p] * out["phases"][str(p)][name]["s_per_step"] for p in PHASES)
        total += n_evals * eval_s[name] + extract_s[name] + 2 * extract_ref_s[name]
        out[f"projected_full_run_s_{name}"] = total
    out["projected_speedup"] = out["projected_full_run_s_baseline"] / out["projected_full_run_s_optimized"]
    out["eval_s"] = eval_s
    out["extraction"] = {"candidates": s.attacks.candidates, "s": extract_s, "s_with_logit_diff": extract_ref_s}
    return out


def _timed(fn: Any, device: str) -> float:
    """Seconds one call of `fn` takes (device work included)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"negrl bench: model={r['model']} (random init, {r['params_non_embedding'] / 1e6:.1f}M non-embedding params), "
        f"device={r['device']}, optimized precision={r['precision']}, {r['steps']} timed steps per phase, "
        f"{r['threads']} threads" + (f", THP_MEM_ALLOC_ENABLE={r['thp']}" if r["thp"] else ""),
        f"matmul peak: fp32 {r['matmul_peak_flops']['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {r['matmul_peak_flops']['bf16'] / 1e9:.1f} GFLOP/s",
        f"{'phase':<6}{'config':<11}{'s/step':>9}{'tok/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'peak MB':>9}",
    ]
    if r.get("bf16_emulated"):
        lines.insert(2, f"bf16 is emulated on this CPU (no {NATIVE_BF16_NAMES}): its bf16 figures time PyTorch's "
                        "conversions, not bf16 hardware")  # fmt: skip
    for p, row in r["phases"].items():
        for name in ("optimized", "baseline"):
            x = row[name]
            lines.append(
                f"{p:<6}{name:<11}{x['s_per_step']:>9.3f}{x['tokens_per_s']:>10.0f}{x['flops_per_s'] / 1e9:>9.1f}"
                f"{100 * x['frac_of_peak']:>7.1f}%{x['peak_memory_mb']:>9.0f}"
            )
        lines.append(f"{p:<6}{'speedup':<11}{row['speedup']:>9.2f}x")
        if "profile" in row["optimized"]:
            prof = row["optimized"]["profile"]
            top = ", ".join(f"{k.removeprefix('aten::')} {t:.3f}" for k, t in prof["top_other"][:5])
            lines.append(f"{p:<6}{'profile':<11}matmuls {prof['matmul_s']:.3f} s, other {prof['other_s']:.3f} s: {top}")
            peak = r["matmul_peak_flops"][peak_name(r["precision"])]
            mms = "; ".join(f"{matmul_label(k, shapes)} x{n} {t:.3f} s {100 * rate / peak:.0f}%"
                            for k, shapes, n, t, rate in prof["top_matmuls"][:4])  # fmt: skip
            lines.append(f"{p:<6}{'matmuls':<11}{mms}")
    e = r["extraction"]
    for name in ("optimized", "baseline"):
        lines.append(
            f"{name}: evaluation {r['eval_s'][name]:.3f} s each; extraction at a phase end ({e['candidates']} "
            f"candidates) {e['s'][name]:.2f} s, against the reference (phases 2-3) {e['s_with_logit_diff'][name]:.2f} s"
        )
    lines.append(
        f"projected full paper run (64 + 1200 + 1200 steps + evaluations + extraction): optimized "
        f"{r['projected_full_run_s_optimized'] / 3600:.2f} h, "
        f"baseline {r['projected_full_run_s_baseline'] / 3600:.2f} h, "
        f"speedup {r['projected_speedup']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, pythia-70m, pythia-160m, ... (random init)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase and configuration")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="bench.json", help="where to write the figures as JSON")
    parser.add_argument(
        "--history", default=str(HISTORY_DIR), help="where the last figures of each machine kind are kept ('' : none)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="CPU: one more step of each phase (optimized) under the torch profiler: matmuls, the rest, its operators",
    )
    parser.add_argument(
        "overrides", nargs="*", help="train.py overrides for both configurations, e.g. extraction.candidates=255"
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"negrl bench: error: --steps={args.steps} must be at least 1", file=sys.stderr)
        return 2
    if args.profile and not args.device.startswith("cpu"):
        print(f"negrl bench: error: --profile times CPU operators, not --device={args.device}; on a GPU use "
              "train.py's trainer.profiler=pytorch", file=sys.stderr)  # fmt: skip
        return 2
    result = run_bench(args.model, args.steps, args.precision, args.device, args.overrides, args.profile)
    write_report(result, format_table, args.json)
    if args.history:
        compare_with_history(result, Path(args.history))
    return 0


def write_report(result: dict[str, Any], table: Any, path: str) -> None:
    """Print a bench's figures as `table(result)` and write them to `path` as JSON."""
    print(table(result))
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    sys.exit(main())
