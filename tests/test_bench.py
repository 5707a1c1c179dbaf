"""`make bench` runs end to end on tiny and writes its figures (timings are printed, never asserted)."""

from __future__ import annotations

import json

from negrl.bench import main


def test_bench_writes_every_figure_for_each_phase(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--model", "tiny", "--steps", "1", "--device", "cpu", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["phases"]) == {"1", "2", "3"}
    for row in r["phases"].values():
        for name in ("optimized", "baseline"):
            assert set(row[name]) == {"s_per_step", "tokens_per_s", "flops_per_s", "frac_of_peak", "peak_memory_mb"}
            assert row[name]["s_per_step"] > 0 and row[name]["tokens_per_s"] > 0
        assert row["speedup"] > 0
    assert r["projected_full_run_s_optimized"] > 0 and r["projected_speedup"] > 0
    assert set(r["matmul_peak_flops"]) == {"fp32", "bf16"}
    assert r["extraction"]["candidates"] == 4095
    for name in ("optimized", "baseline"):
        assert r["eval_s"][name] > 0 and r["extraction"]["s_with_logit_diff"][name] > 0
    out = capsys.readouterr().out
    assert "projected full paper run" in out and "extraction at a phase end (4095 candidates)" in out


def test_bench_rejects_zero_steps(tmp_path, capsys):
    assert main(["--steps", "0", "--json", str(tmp_path / "b.json")]) == 2
    assert "--steps=0" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
