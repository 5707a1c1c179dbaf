"""`make bench`: time training steps of each phase, optimized against a plain baseline.

    python -m negrl.bench --model pythia-70m --steps 3 --json bench.json

For one model shape (random init), times `--steps` steps of each phase in the optimized
configuration (reference cache on, `--precision`) and in the baseline (no cache, fp32),
alternating in the same process, and prints per phase: seconds per step, tokens per second,
achieved FLOP/s against a matmul peak measured in the same run, peak memory, the projected
wall time of a full paper run (64 + 1200 + 1200 steps and their evaluations), and the
optimized/baseline ratio. The steps run the phases' own `compute_loss` code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from negrl.data import PHASES, PasswordDataModule
from negrl.evaluation import Evaluator
from negrl.extraction import Extraction
from negrl.loading import load_model
from negrl.phases import DPOPhase, JointPhase, SFTPhase
from negrl.reference import ReferenceLogprobs
from negrl.validation import Settings, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_STEPS = {1: 64, 2: 1200, 3: 1200}


def matmul_peak(dtype: torch.dtype, device: str, reps: int = 10, budget_s: float = 0.2) -> float:
    """FLOP/s of a square matmul in `dtype` (n = 2048 on CPU, 8192 on GPU), best of `reps` after 3 warm-ups.
    On a CPU without native support for `dtype` (bf16 without AVX-512/AMX runs ~50x slower) n shrinks, in steps
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


class PhaseBench:
    """One phase's module, optimizer and batches, with an optional reference cache."""

    def __init__(self, phase: int, backbone, reference, data, settings: Settings, setup: tuple, device: str):
        cached, self.autocast_dtype, fused, *self.compute = setup
        self.phase, self.device = phase, device
        self.backbones = (backbone, reference)
        c, sizes = settings.config, settings.sizes
        backbone.set_trainable(True, freeze_second_half=phase == 2 and c["freeze"])
        optim = dataclasses.replace(settings.optim, fused=fused)
        self.grad_clip = c["optim"]["grad_clip"]
        evaluator = Evaluator(c["eval"]["every"])
        common = dict(optim=optim, total_steps=PAPER_STEPS[phase], evaluator=evaluator, run_logger=None)
        ref = ReferenceLogprobs(reference, sizes.dpo_size, sizes.n_negatives, enabled=cached)
        negative = dict(beta=c["dpo"]["beta"], objective=settings.objective)
        if phase == 1:
            self.module = SFTPhase(backbone, **common)
        elif phase == 2:
            self.module = DPOPhase(backbone, ref, **negative, **common)
        else:
            self.module = JointPhase(backbone, ref, **negative, weights=settings.weights, **common)
        self.params = backbone.trainable_parameters()
        self.optimizer = optim.adamw(self.params)
        self.dataset = data.dataset(phase)
        self.ref = ref
        if cached and phase >= 2:  # steady state: phase 2 has seen every negative after ~20 steps, phase 3 all pairs
            for i in range(min(len(self.dataset), 64 if phase == 3 else 40)):
                batch = self._to_device(self.dataset[i])
                if phase == 2:  # only the rejected side: chosen sequences are new at every step of phase 2
                    batch = {**batch, "chosen": batch["chosen"][:0], "chosen_id": batch["chosen_id"][:0]}
                ref(batch)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def step(self, i: int) -> int:
        """One optimizer step on batch i; returns the number of trained label tokens."""
        batch = self._to_device(self.dataset[i])
        for model in self.backbones:
            model.set_compute(*self.compute)
        autocast = self.autocast_dtype is not None
        with torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype, enabled=autocast):
            loss, _ = self.module.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        _sync(self.device)
        return sum(v.numel() - len(v) for k, v in batch.items() if not k.endswith("_id"))


def run_bench(model: str, steps: int, precision: str, device: str) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}", "model.init=random"])
    settings = validate(cfg)
    c, sizes = settings.config, settings.sizes
    backbone, vocab = load_model(c["model"], c["tokens"], c["seed"])
    backbone.to(device)
    reference = backbone.frozen_copy()
    data = PasswordDataModule(vocab, sizes, c["holdout_frac"], c["prefix"], c["seed"])
    n_params = sum(p.numel() for p in backbone.parameters()) - backbone.model.get_input_embeddings().weight.numel()
    autocast = torch.bfloat16 if precision == "bf16-mixed" else None
    peaks = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    peak = peaks["bf16" if autocast else "fp32"]
    # (reference cache, autocast dtype, fused AdamW, fused label log-probs, attention): the default
    # configuration against a plain one (Hugging Face's default attention)
    configs = {"optimized": (True, autocast, "auto", True, "eager"), "baseline": (False, None, False, False, "sdpa")}
    out: dict[str, Any] = {"model": model, "device": device, "precision": precision, "steps": steps,
                           "params_non_embedding": n_params, "matmul_peak_flops": peaks, "phases": {}}  # fmt: skip
    n_candidates = c["extraction"]["candidates"]
    evaluator = Evaluator(c["eval"]["every"], Extraction(vocab.letter_ids))
    evaluator.start_phase(data.eval_sets(3), data.candidates(3, n_candidates))
    evaluator.evaluate(backbone)
    eval_s, extract_s, extract_ref_s = {}, {}, {}
    for name, (*_, fused_logprobs, attention) in configs.items():
        for model in (backbone, reference):
            model.set_compute(fused_logprobs, attention)
        eval_s[name] = _timed(lambda: evaluator.evaluate(backbone), device)
        # The extraction attacks after each phase; after phase 2 with the logit-difference attack too.
        extract_s[name] = _timed(lambda: evaluator.extract(backbone), device)
        extract_ref_s[name] = _timed(lambda: evaluator.extract(backbone, reference), device)
    for phase in PHASES:
        benches = {name: PhaseBench(phase, backbone, reference, data, settings, setup, device)
                   for name, setup in configs.items()}  # fmt: skip
        times = {name: [] for name in configs}
        tokens = {name: 0 for name in configs}
        ref_tokens = {name: 0 for name in configs}
        memory = {name: 0.0 for name in configs}
        for i in range(steps + 1):  # alternate; step 0 of each is a warm-up
            for name, bench in benches.items():
                bench.ref.computed = 0
                _reset_peak_memory(device)
                start = time.perf_counter()
                n = bench.step(i)
                memory[name] = max(memory[name], _peak_memory_mb(device))
                if i:
                    times[name].append(time.perf_counter() - start)
                    tokens[name] += n
                    ref_tokens[name] += bench.ref.computed * (sizes.password_length - (0 if c["prefix"] else 1))
        row = {}
        for name in configs:
            s = sum(times[name]) / steps
            flops = (6 * n_params * tokens[name] + 2 * n_params * ref_tokens[name]) / steps
            row[name] = {
                "s_per_step": s,
                "tokens_per_s": tokens[name] / steps / s,
                "flops_per_s": flops / s,
                "frac_of_peak": flops / s / (peak if name == "optimized" else peaks["fp32"]),
                "peak_memory_mb": memory[name],
            }
        row["speedup"] = row["baseline"]["s_per_step"] / row["optimized"]["s_per_step"]
        out["phases"][str(phase)] = row
    n_evals = sum((n + 4) // 5 for n in PAPER_STEPS.values())
    for name in configs:
        total = sum(PAPER_STEPS[p] * out["phases"][str(p)][name]["s_per_step"] for p in PHASES)
        total += n_evals * eval_s[name] + 2 * extract_s[name] + extract_ref_s[name]
        out[f"projected_full_run_s_{name}"] = total
    out["projected_speedup"] = out["projected_full_run_s_baseline"] / out["projected_full_run_s_optimized"]
    out["eval_s"] = eval_s
    out["extraction"] = {"candidates": n_candidates, "s": extract_s, "s_with_logit_diff": extract_ref_s}
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
        f"device={r['device']}, optimized precision={r['precision']}, {r['steps']} timed steps per phase",
        f"matmul peak: fp32 {r['matmul_peak_flops']['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {r['matmul_peak_flops']['bf16'] / 1e9:.1f} GFLOP/s",
        f"{'phase':<6}{'config':<11}{'s/step':>9}{'tok/s':>10}{'GFLOP/s':>9}{'% peak':>8}{'peak MB':>9}",
    ]
    for p, row in r["phases"].items():
        for name in ("optimized", "baseline"):
            x = row[name]
            lines.append(
                f"{p:<6}{name:<11}{x['s_per_step']:>9.3f}{x['tokens_per_s']:>10.0f}{x['flops_per_s'] / 1e9:>9.1f}"
                f"{100 * x['frac_of_peak']:>7.1f}%{x['peak_memory_mb']:>9.0f}"
            )
        lines.append(f"{p:<6}{'speedup':<11}{row['speedup']:>9.2f}x")
    e = r["extraction"]
    for name in ("optimized", "baseline"):
        lines.append(
            f"{name}: evaluation {r['eval_s'][name]:.3f} s each; extraction at a phase end ({e['candidates']} "
            f"candidates) {e['s'][name]:.2f} s, with the logit-difference attack {e['s_with_logit_diff'][name]:.2f} s"
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
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"negrl bench: error: --steps={args.steps} must be at least 1", file=sys.stderr)
        return 2
    result = run_bench(args.model, args.steps, args.precision, args.device)
    print(format_table(result))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
