"""The fused label log-probs equal the plain autograd ones exactly, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_cfg_dict

from negrl.model.label_logprobs import chunk_rows, label_logprobs, logsumexp_rows
from negrl.model.loading import load_model


def plain(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = logits.float()
    return x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_values_and_gradients_are_bit_identical_to_plain_autograd(dtype, chunk):
    g = torch.Generator().manual_seed(0)
    base = (3 * torch.randn(5, 9, 301, generator=g)).to(dtype)
    labels = torch.randint(0, 301, (5, 9), generator=g)
    weight = torch.randn(5, 9, generator=g)
    results = []
    for fn in (plain, lambda x, y: label_logprobs(x, y, chunk)):
        logits = base.clone().requires_grad_()
        out = fn(logits, labels)
        (out * weight).sum().backward()
        results.append((out.detach(), logits.grad))
    (v_plain, g_plain), (v_fused, g_fused) = results
    assert v_fused.dtype == torch.float32 and g_fused.dtype == dtype and v_fused.shape == (5, 9)
    assert torch.equal(v_fused, v_plain) and torch.equal(g_fused, g_plain)


def test_a_gradient_row_is_onehot_minus_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    label_logprobs(logits, torch.tensor([2])).sum().backward()
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    assert torch.allclose(logits.grad[0], torch.tensor([0.0, 0.0, 1.0]) - p, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [3, 5, 1000])
def test_logsumexp_rows_equals_torch_logsumexp(dtype, chunk):
    """Bit for bit, in chunks that divide the rows or not, with rows of -inf (log 0), a +inf and a NaN, as
    torch.logsumexp gives them (its ±inf max taken as 0)."""
    x = torch.randn(4, 6, 50, dtype=torch.float64).to(dtype)
    x[0, 0] = -math.inf
    x[0, 1, 7] = math.inf
    x[1, 2, 3] = math.nan
    got, want = logsumexp_rows(x, chunk=chunk), torch.logsumexp(x.float(), dim=-1)
    assert got.dtype == torch.float32 and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num()) and got[0, 0] == -math.inf and got[0, 1] == math.inf
    assert x.isinf().sum() == 51  # the input untouched


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_backbone_compute_settings_agree(attention):
    """Fused or plain log-probs, eager or sdpa attention: the same log-probs and gradients (float rounding)."""
    c = make_cfg_dict()
    backbone, _ = load_model(c["model"], c["tokens"], seed=0)
    tokens = torch.randint(0, 28, (6, 17), generator=torch.Generator().manual_seed(1))
    outs = []
    for fused in (False, True):
        backbone.set_compute(fused_logprobs=fused, attention=attention)
        backbone.zero_grad()
        lp = backbone.token_logprobs(tokens)
        lp.sum().backward()
        grads = [p.grad.clone() for p in backbone.parameters()]
        cand = backbone.candidate_logprobs(tokens, torch.arange(26)).detach()
        outs.append((lp.detach(), grads, cand))
    assert backbone.model.config._attn_implementation == attention
    (lp0, g0, c0), (lp1, g1, c1) = outs
    assert torch.equal(lp0, lp1) and all(torch.equal(a, b) for a, b in zip(g0, g1)) and torch.equal(c0, c1)
    backbone.set_compute(fused_logprobs=True, attention="sdpa" if attention == "eager" else "eager")
    assert torch.allclose(backbone.token_logprobs(tokens), lp0, atol=1e-5)


def test_a_second_backward_through_the_same_graph_fails_loudly():
    """The gradient reuses the logits' storage: autograd must refuse to read them again."""
    logits = torch.randn(4, 10).requires_grad_()
    out = label_logprobs(logits * 1.0, torch.tensor([0, 1, 2, 3]))
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_chunks_are_about_three_megabytes_of_fp32_whatever_the_vocabulary():
    assert chunk_rows(50304) == 16 and chunk_rows(28) == 28745 and chunk_rows(10**7) == 1
