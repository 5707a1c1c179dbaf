"""AdamW construction and gradient clipping shared by the three phases."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg

from negrl.method.phases import NTPPhase, OptimSettings
from negrl.model.backbone import Backbone
from negrl.run.validation import validate

TINY = {"vocab_size": 28, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}


def test_auto_does_not_fuse_adamw_on_cpu_and_true_forces_it():
    cpu_params = [torch.nn.Parameter(torch.zeros(3))]
    assert not OptimSettings().adamw(cpu_params).defaults["fused"]
    assert OptimSettings().adamw(cpu_params).defaults["foreach"]  # the multi-tensor path, not the per-tensor loop
    assert OptimSettings(fused=True).adamw(cpu_params).defaults["fused"]
    opt = OptimSettings(lr=3e-4, weight_decay=0.5).adamw(cpu_params)
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (3e-4, 0.5)


@pytest.mark.parametrize(
    ("overrides", "fused"),
    [
        ((), "auto"),  # fp32: foreach on CPU (bit-identical to PyTorch's default), fused on CUDA
        (("trainer.precision=bf16-mixed",), True),  # fused on every device: its rounding is far below bf16's
        (("trainer.precision=bf16-mixed", "optim.fused=false"), False),
        (("optim.fused=true",), True),
    ],
)
def test_auto_fuses_adamw_under_bf16_mixed_on_every_device(overrides, fused):
    optim = validate(make_cfg(*overrides), warn=False).optim
    assert optim.fused == fused
    cpu = OptimSettings(fused=optim.fused).adamw([torch.nn.Parameter(torch.zeros(3))]).defaults
    assert bool(cpu["fused"]) is (fused is True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: auto fuses AdamW on CUDA only")
def test_auto_fuses_adamw_on_cuda_and_false_turns_it_off():
    cuda_params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert OptimSettings().adamw(cuda_params).defaults["fused"]
    assert not OptimSettings(fused=False).adamw(cuda_params).defaults["fused"]


def test_gradient_clipping_caps_the_global_norm_of_trainable_parameters():
    backbone = Backbone.random_init(TINY, seed=0)
    module = NTPPhase(backbone, optim=OptimSettings(), total_steps=10)
    for p in backbone.parameters():
        p.grad = torch.full_like(p, 3.0)
    module.configure_gradient_clipping(None, gradient_clip_val=1.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in backbone.parameters()]))
    assert abs(norm.item() - 1.0) < 1e-5
    for p in backbone.parameters():  # one common factor: directions unchanged
        assert torch.allclose(p.grad, torch.full_like(p, p.grad.flatten()[0].item()))


def test_the_multi_tensor_adamw_on_cpu_updates_bit_identically_to_pytorchs_per_tensor_default():
    """negrl's CPU AdamW (foreach) against torch.optim.AdamW's own CPU default (the per-tensor loop): five steps of
    a tiny model's shapes, weight decay and bias correction included, equal to the last bit."""
    shapes = [(16, 16), (64, 16), (16,), (28, 16), (3, 5, 7)]

    def params() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(s)) for s in shapes]

    ours, plain = params(), params()
    settings = OptimSettings(lr=1e-3, weight_decay=0.01)
    opt_ours = settings.adamw(ours)
    # PyTorch's own default on CPU: the per-tensor loop (CPU is not among its foreach devices)
    opt_plain = torch.optim.AdamW(plain, lr=1e-3, weight_decay=0.01, betas=settings.betas, eps=settings.eps)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(ours, plain):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_plain.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))
    assert not all(torch.equal(a, b) for a, b in zip(ours, params()))  # they moved
