"""AdamW construction and gradient clipping shared by the three phases."""

from __future__ import annotations

import pytest
import torch

from negrl.method.phases import NTPPhase, OptimSettings
from negrl.model.backbone import Backbone

TINY = {"vocab_size": 28, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}


def test_auto_does_not_fuse_adamw_on_cpu_and_true_forces_it():
    cpu_params = [torch.nn.Parameter(torch.zeros(3))]
    assert not OptimSettings().adamw(cpu_params).defaults["fused"]
    assert OptimSettings(fused=True).adamw(cpu_params).defaults["fused"]
    opt = OptimSettings(lr=3e-4, weight_decay=0.5).adamw(cpu_params)
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (3e-4, 0.5)


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
