"""Which CPUs multiply bf16 matrices natively: the check behind the warning on emulated bf16."""

import pytest
import torch

from negrl.core import machine

ICE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}  # oneDNN "supports" bf16 here


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        (set(), None),  # no /proc/cpuinfo: PyTorch's own probe decides
        ({"avx2", "fma"}, False),  # AVX2 EPYC: 1.5 against 69 GFLOP/s fp32
        (ICE_LAKE, False),  # AVX-512 Xeon without bf16: 59 against 242 GFLOP/s fp32
        (ICE_LAKE | {"avx512_bf16"}, True),  # Zen 4, Cooper Lake
        (ICE_LAKE | {"amx_tile", "amx_bf16", "avx512_bf16"}, True),  # Sapphire Rapids
        ({"avx2", "avx_vnni", "avx_ne_convert"}, True),  # Sierra Forest, Arrow Lake
    ],
)
def test_native_bf16_on_x86_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(machine, "is_x86", lambda: True)
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # what AVX-512 alone reports
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert machine.native_cpu_bf16() is bool(native)
    if native is None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
        assert machine.native_cpu_bf16() is True


@pytest.mark.parametrize("onednn", [False, True])
def test_native_bf16_elsewhere_is_onednns_check(monkeypatch, onednn):
    monkeypatch.setattr(machine, "is_x86", lambda: False)
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"fp", "asimd"}))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert machine.native_cpu_bf16() is onednn


def test_cpu_facts_read_the_first_processor_of_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.80GHz\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")  # fmt: skip
    monkeypatch.setattr(machine, "Path", lambda _: info)
    assert machine.cpu_flags() == {"fpu", "avx512f", "avx512_bf16"}
    assert machine.cpu_name().startswith("Some CPU @ 2.80GHz (")
