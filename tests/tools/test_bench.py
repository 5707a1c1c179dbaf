"""`make bench` runs end to end on tiny and writes its figures (timings are printed, never asserted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from negrl.tools.bench import MATMUL_OPS, main


@pytest.mark.heavy
def test_bench_writes_every_figure_for_each_phase(tmp_path, capsys, monkeypatch):
    """The matmul peaks measured with one repetition of at most 10 ms each (the bench's own: 10 of up to 200 ms)."""
    import functools

    from negrl.tools import bench

    monkeypatch.setattr(bench, "matmul_peak", functools.partial(bench.matmul_peak, reps=1, budget_s=0.01))
    monkeypatch.setattr(bench, "native_cpu_bf16", lambda: False)
    out = tmp_path / "bench.json"
    attacks = ["extraction.candidates=255", "extraction.samples=64", "extraction.bootstrap=100"]
    history = tmp_path / "history"
    argv = ["--model", "tiny", "--steps", "1", "--device", "cpu", "--json", str(out), "--history", str(history)]
    # batches of 16, not the paper's 128: the figures, not their size
    assert main([*argv, "--profile", *attacks, "data=small"]) == 0
    r = json.loads(out.read_text())
    emulated = "bf16 is emulated on this CPU (no AVX-512 bf16, AMX or AVX-NE-CONVERT): its bf16 figures time"
    assert r["bf16_emulated"] is True and emulated in bench.format_table(r)
    assert emulated not in bench.format_table({**r, "bf16_emulated": False})
    (kept,) = history.glob("*.json")  # this machine kind's last figures, one entry for this configuration
    (entry,) = json.loads(kept.read_text()).values()
    assert set(entry["phases"]) == {"1", "2", "3"} and entry["date"]
    assert set(r["phases"]) == {"1", "2", "3"}
    figures = {"s_per_step", "tokens_per_s", "flops_per_s", "frac_of_peak", "peak_memory_mb"}
    for row in r["phases"].values():
        assert set(row["optimized"]) == figures | {"profile"} and set(row["baseline"]) == figures
        for name in ("optimized", "baseline"):
            assert row[name]["s_per_step"] > 0 and row[name]["tokens_per_s"] > 0
        assert row["speedup"] > 0
        prof = row["optimized"]["profile"]  # one more step, under the profiler: matmuls and the rest
        assert prof["matmul_s"] > 0 and prof["other_s"] > 0 and 0 < len(prof["top_other"]) <= 8
        others = [t for _, t in prof["top_other"]]
        assert others == sorted(others, reverse=True) and sum(others) <= prof["other_s"] + 1e-9
        assert not {k for k, _ in prof["top_other"]} & MATMUL_OPS
        assert 0 < len(prof["top_matmuls"]) <= 8 and {m[0] for m in prof["top_matmuls"]} <= MATMUL_OPS
        assert sum(m[3] for m in prof["top_matmuls"]) <= prof["matmul_s"] + 1e-9
        assert all(calls >= 1 and rate > 0 for _, _, calls, _, rate in prof["top_matmuls"])
    assert r["projected_full_run_s_optimized"] > 0 and r["projected_speedup"] > 0
    assert set(r["matmul_peak_flops"]) == {"fp32", "bf16"} and min(r["matmul_peak_flops"].values()) > 0
    assert r["extraction"]["candidates"] == 255  # the overrides reach both configurations
    for name in ("optimized", "baseline"):
        assert r["eval_s"][name] > 0 and r["extraction"]["s_with_logit_diff"][name] > 0
    out = capsys.readouterr().out
    assert "projected full paper run" in out and "extraction at a phase end (255 candidates)" in out
    assert r["threads"] >= 1 and f"timed steps per phase, {r['threads']} threads" in out
    assert "none yet for this configuration" in out
    assert out.count(" profile    matmuls ") == 3  # a line per phase
    assert out.count(" matmuls    ") == 3 and re.search(r" matmuls    (mm|addmm|bmm) \d+(x\d+)+@\d+(x\d+)+ x\d+ ", out)


def test_a_profiled_step_is_split_into_matmuls_and_the_rest():
    """`step_profile` on a step of known operators (grouped by input shape, as the bench records them): matmul self
    time counts as matmuls, everything else as the rest, the largest first; each matmul shape with its FLOP/s."""
    from types import SimpleNamespace

    from negrl.tools.bench import step_profile

    def op(key, us, shapes=(), count=1):
        return SimpleNamespace(key=key, self_cpu_time_total=us, input_shapes=list(shapes), count=count)

    events = [
        op("aten::mm", 2e6, [[2048, 512], [512, 50304]], count=2),  # 2 x 105.5 GFLOP in 2 s
        op("aten::mm", 1e6, [[50304, 2048], [2048, 512]]),
        op("aten::exp_", 3e5, [[16, 50304]]),
        op("aten::exp_", 2e5, [[8, 50304]]),  # the rest is summed over shapes, by operator
        op("aten::addmm", 1e6, [[1536], [2048, 512], [512, 1536], [], []], count=4),
        op("aten::copy_", 2.5e6, [[2048, 512], [2048, 512], []]),
        op("aten::bmm", 1e5, [[64, 17, 64], [64, 64, 17]], count=10),
        op("aten::baddbmm", 1e5, [[64, 17, 17], [64, 17, 64], [64, 64, 17], [], []]),
    ]
    prof = step_profile(events, top=2)
    assert prof["matmul_s"] == pytest.approx(4.2) and prof["other_s"] == pytest.approx(3.0)
    assert prof["top_other"] == [["aten::copy_", 2.5], ["aten::exp_", pytest.approx(0.5)]]
    (name, shapes, calls, seconds, rate), second = prof["top_matmuls"]
    assert (name, shapes, calls, seconds) == ("aten::mm", [[2048, 512], [512, 50304]], 2, 2.0)
    assert rate == 2 * 2 * 2048 * 512 * 50304 / 2.0
    assert second[:4] == ["aten::mm", [[50304, 2048], [2048, 512]], 1, 1.0]
    prof = step_profile(events, top=8)
    rates = {(m[0], m[1][0][0]): m[4] for m in prof["top_matmuls"]}
    assert rates[("aten::addmm", 1536)] == 4 * 2 * 2048 * 512 * 1536 / 1.0  # operands after the added bias
    assert rates[("aten::bmm", 64)] == 10 * 2 * 64 * 17 * 64 * 17 / 0.1
    assert rates[("aten::baddbmm", 64)] == 2 * 64 * 17 * 64 * 17 / 0.1


def test_a_matmul_is_labelled_by_its_operands():
    from negrl.tools.bench import matmul_label

    assert matmul_label("aten::addmm", [[1536], [2048, 512], [512, 1536], [], []]) == "addmm 2048x512@512x1536"
    assert matmul_label("aten::bmm", [[64, 17, 64], [64, 64, 17]]) == "bmm 64x17x64@64x64x17"


def test_bench_profile_is_refused_on_a_gpu(tmp_path, capsys):
    assert main(["--profile", "--device", "cuda", "--json", str(tmp_path / "b.json")]) == 2
    assert "--profile times CPU operators" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def _bench_result(s_per_step: dict[str, float], **extra) -> dict:
    phases = {p: {"optimized": {"s_per_step": s, "frac_of_peak": 0.5}} for p, s in s_per_step.items()}
    return {"model": "tiny", "precision": "32-true", "device": "cpu", "overrides": [], "phases": phases,
            "projected_full_run_s_optimized": 100.0, **extra}  # fmt: skip


def test_bench_flags_a_phase_slower_than_the_last_figures_of_this_machine_kind(tmp_path, capsys):
    from negrl.tools.bench_history import compare_with_history, config_key, load_last, machine_kind

    compare_with_history(_bench_result({"1": 1.0, "2": 2.0, "3": 4.0}), tmp_path)
    assert "none yet" in capsys.readouterr().out
    compare_with_history(_bench_result({"1": 1.05, "2": 2.3, "3": 3.0}), tmp_path)
    out = capsys.readouterr().out
    assert "phase 1: s/step +5.0%\n" in out  # within 10%: not flagged
    assert "phase 2: s/step +15.0%  SLOWER by more than 10%" in out
    assert "phase 3: s/step -25.0%\n" in out
    # The new figures are now the last ones; another configuration is kept apart from them.
    last = load_last(machine_kind("cpu"), config_key(_bench_result({})), tmp_path)
    assert last["phases"]["2"]["s_per_step"] == 2.3
    compare_with_history(_bench_result({"1": 9.0}, precision="bf16-mixed"), tmp_path)
    assert "none yet" in capsys.readouterr().out
    assert load_last(machine_kind("cpu"), config_key(_bench_result({})), tmp_path)["phases"]["1"]["s_per_step"] == 1.05


def test_figures_compare_only_under_the_same_threads_and_allocator():
    """Figures from fewer threads than cores, or with huge pages, are a configuration of their own; the defaults
    keep the key the stored figures were kept under."""
    import os

    from negrl.tools.bench_history import config_key

    plain = config_key(_bench_result({}, threads=os.cpu_count(), thp=""))
    assert plain == config_key(_bench_result({})) == "model=tiny precision=32-true"
    assert config_key(_bench_result({}, threads=os.cpu_count() + 1, thp="1")) == (
        f"model=tiny precision=32-true threads={os.cpu_count() + 1} THP_MEM_ALLOC_ENABLE=1"
    )
    assert config_key(_bench_result({}, overrides=["data=small"])) == "model=tiny precision=32-true data=small"


def test_machine_kind_names_the_instruction_sets_that_decide_matmul_speed():
    from negrl.tools.bench_history import machine_kind

    kind = machine_kind("cpu")
    assert kind == kind.lower() and " " not in kind
    assert any(isa in kind for isa in ("avx512f", "avx512-bf16", "amx-bf16", "no-avx512"))


def test_bench_rejects_zero_steps(tmp_path, capsys):
    assert main(["--steps", "0", "--json", str(tmp_path / "b.json")]) == 2
    assert "--steps=0" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_step_flops_match_a_hand_count_for_tiny():
    from conftest import make_cfg_dict

    from negrl.model.loading import load_model
    from negrl.tools.flops import step_flops

    c = make_cfg_dict()
    backbone, _ = load_model(c["model"], c["tokens"], 0, c["adapter"])
    # tiny: hidden 64, 4 layers, MLP 256, vocabulary 28, untied. One layer: QKV 64x192 + 192, output 64x64 + 64,
    # MLP 64x256 + 256 and 256x64 + 64, two layer norms 2 x (64 + 64).
    layer = 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256 + 256 * 64 + 64 + 2 * 128
    final_norm, unembedding = 128, 28 * 64
    total = 4 * layer + final_norm + unembedding  # the input embedding (28 x 64) is a lookup
    attention = 4 * 16**2 * 64 * 4  # 16 positions (17 tokens, the last one only a label), 4 layers
    backbone.set_trainable(True)
    assert step_flops(backbone, 128, 16) == 128 * (16 * 6 * total + 3 * attention)
    # Phase 2: layers 2-3 and the unembedding frozen (input gradients only); the final norm and layers 0-1 trained.
    backbone.set_trainable(True, freeze_second_half=True)
    trained = 2 * layer + final_norm
    assert step_flops(backbone, 256, 16, 100) == 256 * (16 * (4 * total + 2 * trained) + 3 * attention) + 100 * (
        16 * 2 * total + attention
    )


#: 4 + 10 + 10 steps without the attacks: the smallest complete runs.
SWEEP_FEW = ["data.n_negatives=80", "data.negative_repeats=2", "holdout_frac=0.1", "data.n_phase1=64",
             "data.eval_size=8", "extraction.enabled=false"]  # fmt: skip


@pytest.mark.slow
def test_sweep_bench_times_stacked_and_separate_sweeps(tmp_path, capsys):
    """The real `train.py -m` sweeps, end to end (slow: four processes). The same figures are checked in the fast
    suite in-process, each sweep replaced by a stand-in (the test below), and `sweep` itself with its process
    replaced (test_sweep_runs_train_py_and_reads_each_seeds_results)."""
    from negrl.tools.sweep_bench import main as sweep_main

    out = tmp_path / "sweep.json"
    assert sweep_main(["--stacks", "2", "--device", "cpu", "--json", str(out), *SWEEP_FEW]) == 0
    r = json.loads(out.read_text())
    assert [row["K"] for row in r["stacks"]] == [2]
    for row in r["stacks"]:
        for way in ("stacked", "separate"):
            assert row[way]["wall_s"] > 0 and row[way]["runs_per_hour"] > 0 and len(row[way]["metrics"]) == row["K"]
        assert row["max_metric_diff"] < 1e-5
    assert r["run_training_flops"] > 0 and r["matmul_peak_flops"] > 0
    assert "stacked is" in capsys.readouterr().out


def test_sweep_bench_figures_of_stacked_and_separate_sweeps(tmp_path, capsys, monkeypatch):
    """The sweep bench's figures, in-process: each `train.py -m` sweep replaced by a stand-in that checks what it is
    asked for and returns fixed times and metrics (the real sweeps: the slow test above)."""
    import os

    from negrl.tools import sweep_bench

    asked = []
    wall = {"stacked": 10.0, "separate": 16.0}
    metrics = {"stacked": [-3.0, -2.5], "separate": [-3.0, -2.5 + 4e-6]}

    def stand_in(overrides, k, launcher, sweep_dir, env):
        way = "stacked" if launcher == ["hydra/launcher=stacked"] else "separate"
        asked.append((way, k, launcher, env, sweep_dir.name, overrides))
        results = {s: {"metric": metrics[way][s], "reference": {"sequences_computed": 960}} for s in range(k)}
        return {"wall_s": wall[way], "results": results}

    monkeypatch.setattr(sweep_bench, "sweep", stand_in)
    monkeypatch.setattr(sweep_bench, "matmul_peak", lambda dtype, device: 1e11)  # measured in test_bench_writes_...
    out = tmp_path / "sweep.json"
    assert sweep_bench.main(["--stacks", "2", "--device", "cpu", "--json", str(out), *SWEEP_FEW]) == 0
    cores = os.cpu_count() or 1
    jobs = min(2, cores)
    common = ["model=tiny", "data=small", "trainer.precision=32-true", "trainer.accelerator=cpu", "wandb.enabled=false",
              "trainer.enable_progress_bar=false", *SWEEP_FEW]  # fmt: skip
    assert asked == [
        ("stacked", 2, ["hydra/launcher=stacked"], {}, "stacked-2", common),
        ("separate", 2, ["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"],
         {"OMP_NUM_THREADS": str(max(1, cores // jobs))}, "separate-2", common),
    ]  # fmt: skip
    r = json.loads(out.read_text())
    assert [row["K"] for row in r["stacks"]] == [2]
    flops = r["run_training_flops"]
    assert flops > 0 and r["matmul_peak_flops"] == 1e11
    for row in r["stacks"]:
        for way in ("stacked", "separate"):
            assert row[way]["wall_s"] > 0 and row[way]["runs_per_hour"] > 0 and len(row[way]["metrics"]) == row["K"]
            assert row[way]["wall_s"] == wall[way] and row[way]["metrics"] == metrics[way]
            assert row[way]["runs_per_hour"] == pytest.approx(3600 * 2 / wall[way])
            assert row[way]["flops_per_s"] == pytest.approx(2 * flops / wall[way])
            assert row[way]["frac_of_peak"] == pytest.approx(2 * flops / wall[way] / 1e11)
        assert row["max_metric_diff"] < 1e-5 and row["max_metric_diff"] == pytest.approx(4e-6)
        assert row["speedup"] == pytest.approx(1.6)
    assert "stacked is 1.60x faster" in capsys.readouterr().out


def test_sweep_runs_train_py_and_reads_each_seeds_results(tmp_path, monkeypatch):
    """`sweep` (the sweep bench's `train.py -m`), its process replaced by a stand-in that writes each seed's run
    directory: the command and environment it runs, the complete runs it reads back, and its two refusals."""
    import subprocess
    import sys

    from negrl.tools import sweep_bench

    ran = []

    def fake_run(cmd, env, capture_output, text):
        ran.append((cmd, env))
        sweep_dir = Path(cmd[-1].partition("=")[2])
        for s in range(2):
            (sweep_dir / f"{s}-tiny-seed{s}").mkdir(parents=True)
            results = {"status": "complete", "run": {"seed": s}, "metric": -3.0 + s}
            (sweep_dir / f"{s}-tiny-seed{s}" / "results.json").write_text(json.dumps(results))
        (sweep_dir / ".jobs").mkdir()
        (sweep_dir / "multirun.yaml").write_text("")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sweep_bench.subprocess, "run", fake_run)
    got = sweep_bench.sweep(["data=small"], 2, ["hydra/launcher=stacked"], tmp_path / "a", {"OMP_NUM_THREADS": "1"})
    (cmd, env), = ran
    assert cmd == [sys.executable, str(sweep_bench.TRAIN), "-m", "seed=0-1", "hydra/launcher=stacked", "data=small",
                   f"hydra.sweep.dir={tmp_path / 'a'}"]  # fmt: skip
    assert env["OMP_NUM_THREADS"] == "1" and "PATH" in env
    assert got["wall_s"] > 0 and {s: r["metric"] for s, r in got["results"].items()} == {0: -3.0, 1: -2.0}
    with pytest.raises(RuntimeError, match=r"complete runs of seeds \[0, 1\], expected 0..2"):
        sweep_bench.sweep([], 3, [], tmp_path / "b", {})

    def failing(cmd, env, capture_output, text):
        return subprocess.CompletedProcess(cmd, 1, "", "a first line\nnegrl: error: the last line\n")

    monkeypatch.setattr(sweep_bench.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match=r"failed \(1\): \['negrl: error: the last line'\]"):
        sweep_bench.sweep([], 2, [], tmp_path / "c", {})


def test_sweep_bench_rejects_bad_stacks(tmp_path, capsys):
    from negrl.tools.sweep_bench import main as sweep_main

    assert sweep_main(["--stacks", "0,2", "--json", str(tmp_path / "s.json")]) == 2
    assert "--stacks=0,2 must list positive integers" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
