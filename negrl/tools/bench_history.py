"""The bench's memory: the last figures of each kind of machine, kept in the repository, and the change against them.

`make bench` compares each phase's seconds per step with the last figures measured on the same kind of machine
(CPU model, its core count and the instruction sets that decide matmul speed: AVX-512, AVX-512 bf16, AMX; or the
GPU's name) for the same bench configuration (model, precision, overrides), flags any phase more than
`SLOWER_FLAG` slower, then stores the new figures as that kind's last ones: `benchmarks/<kind>.json`, one file per
kind, one entry per configuration, each with its date.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from negrl.core.machine import cpu_flags, cpu_name

#: Where the last figures of each kind of machine live (in the repository, committed with the code they measured).
HISTORY_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
#: A phase this much slower (in s/step) than the last figures of the same kind is flagged.
SLOWER_FLAG = 0.10
#: CPU flags that change matmul throughput by large factors: two CPUs of one model name differ in them.
ISA_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "avx_ne_convert")


def machine_kind(device: str) -> str:
    """A file-name-safe name of this kind of machine: the GPU's name, or the CPU model, cores and ISA flags."""
    if device.startswith("cuda"):
        return _slug(f"gpu {device_name(device)}")
    flags = cpu_flags()
    isa = [f for f in ISA_FLAGS if f in flags] or ["no-avx512"]
    return _slug(f"{device_name(device)} {' '.join(isa)}")


def device_name(device: str) -> str:
    """The machine in words: the GPU's name, or the CPU model and its core count."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return cpu_name()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def config_key(result: dict[str, Any]) -> str:
    """The bench configuration a figure belongs to: figures compare only within one. Besides the model, precision
    and overrides, what the process ran under where it is not the default: threads other than the cores' count,
    and PyTorch's huge pages for large tensors (`THP_MEM_ALLOC_ENABLE`)."""
    parts = [f"model={result['model']}", f"precision={result['precision']}", *result.get("overrides", [])]
    threads = result.get("threads")
    if threads is not None and threads != os.cpu_count():
        parts.append(f"threads={threads}")
    if result.get("thp"):
        parts.append(f"THP_MEM_ALLOC_ENABLE={result['thp']}")
    return " ".join(parts)


def load_last(kind: str, key: str, root: Path = HISTORY_DIR) -> dict[str, Any] | None:
    """The last figures stored for this kind of machine and configuration, or None."""
    path = root / f"{kind}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(key)


def store(kind: str, key: str, result: dict[str, Any], root: Path = HISTORY_DIR) -> Path:
    """Keep `result`'s per-phase figures as this kind's last ones for `key` (other configurations kept)."""
    path = root / f"{kind}.json"
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries[key] = {
        "date": dt.date.today().isoformat(),
        "machine": device_name(result["device"]),
        "phases": {
            p: {"s_per_step": row["optimized"]["s_per_step"], "frac_of_peak": row["optimized"]["frac_of_peak"]}
            for p, row in result["phases"].items()
        },  # fmt: skip
        "projected_full_run_s": result["projected_full_run_s_optimized"],
    }
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return path


def compare(result: dict[str, Any], last: dict[str, Any] | None) -> dict[str, dict[str, float | bool]]:
    """Per phase: the relative change of s/step against `last` (+0.12 = 12% slower) and whether it is flagged."""
    if last is None:
        return {}
    out = {}
    for p, row in result["phases"].items():
        before = last["phases"].get(p)
        if before:
            change = row["optimized"]["s_per_step"] / before["s_per_step"] - 1
            out[p] = {"change": change, "slower": change > SLOWER_FLAG}
    return out


def format_comparison(kind: str, last: dict[str, Any] | None, changes: dict[str, dict[str, Any]]) -> str:
    """The lines the bench prints under its table: the change of each phase against the last figures."""
    if last is None:
        return f"against the last figures of this machine kind ({kind}): none yet for this configuration"
    head = f"against the last figures of this machine kind ({kind}, {last['date']}):"
    parts = []
    for p, c in changes.items():
        flag = f"  SLOWER by more than {SLOWER_FLAG:.0%}" if c["slower"] else ""
        parts.append(f"  phase {p}: s/step {c['change']:+.1%}{flag}")
    return "\n".join([head, *parts])


def compare_with_history(result: dict[str, Any], root: Path = HISTORY_DIR) -> None:
    """Print each phase's change against the last figures of this machine kind, then keep these as the last."""
    kind = machine_kind(result["device"])
    key = config_key(result)
    last = load_last(kind, key, root)
    print(format_comparison(kind, last, compare(result, last)))
    print(f"kept as this kind's last figures: {store(kind, key, result, root)}")
