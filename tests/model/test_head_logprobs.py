"""The head taken into the fused label log-probs (CPU): the same values and gradients, bit for bit, as the family's own
forward followed by the fused log-probs, with the logits written into one buffer reused from step to step."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg_dict
from test_families import TWINS

from negrl.model.backbone import PLAIN_HEAD_FAMILIES, Backbone
from negrl.model.head_logprobs import LogitsBuffer
from negrl.model.loading import load_model


def backbone_of(*overrides: str) -> Backbone:
    c = make_cfg_dict(*overrides)
    return load_model(c["model"], c["tokens"], 0, c["adapter"])[0]


def small(model: str, *arch: str, bos: str = "auto") -> Backbone:
    """A 2-layer, 16-wide random model of `model`'s family with its real vocabulary (several 16-row chunks)."""
    return backbone_of(f"model={model}", "model.init=random", f"tokens.bos={bos}",
                       *[f"model.architecture.{a}" for a in arch])  # fmt: skip


PYTHIA = ("hidden_size=16", "num_hidden_layers=2", "num_attention_heads=2", "intermediate_size=32")
LLAMA = ("hidden_size=16", "num_hidden_layers=2", "num_attention_heads=2", "num_key_value_heads=1", "head_dim=8",
         "intermediate_size=32")  # fmt: skip


def step(backbone: Backbone, tokens: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """One forward and backward of the label log-probs (weighted, so every row's gradient differs)."""
    backbone.zero_grad(set_to_none=True)
    weight = torch.linspace(-1, 2, tokens[:, 1:].numel()).view(tokens.shape[0], -1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        lp = backbone.token_logprobs(tokens)
    (lp * weight).sum().backward()
    return lp.detach(), [None if p.grad is None else p.grad.clone() for p in backbone.parameters()]


def assert_same_as_the_family_forward(backbone: Backbone, tokens: torch.Tensor, bf16: bool, monkeypatch) -> None:
    assert backbone.fuses_head(tokens)
    lp, grads = step(backbone, tokens, bf16)
    with monkeypatch.context() as m:
        m.setattr(Backbone, "fuses_head", lambda self, t: False)
        lp_plain, grads_plain = step(backbone, tokens, bf16)
    assert lp.dtype == torch.float32 and torch.equal(lp, lp_plain)
    assert len(grads) == len(grads_plain) and any(g is not None for g in grads)
    for g, g_plain in zip(grads, grads_plain):
        assert (g is None) == (g_plain is None) and (g is None or torch.equal(g, g_plain))


def tokens_of(vocab: int, shape=(6, 17), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("model", sorted(TWINS))
def test_each_family_twin_gives_its_own_forward_bit_for_bit(model, bf16, monkeypatch):
    backbone = backbone_of(f"model={model}")
    tokens = tokens_of(28)
    plain_head = backbone.model.config.model_type in PLAIN_HEAD_FAMILIES
    assert backbone.fuses_head(tokens) == plain_head
    if plain_head:
        hidden = backbone.hidden_states(tokens)
        assert torch.equal(backbone.unembedding(hidden), backbone.logits(tokens))  # the forward is decoder -> head
        assert_same_as_the_family_forward(backbone, tokens, bf16, monkeypatch)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("frozen_head", [False, True])
def test_a_real_vocabulary_in_chunks_with_the_head_trained_or_frozen(bf16, frozen_head, monkeypatch):
    """Pythia's 50,304 tokens (16-row chunks, a last partial one); the phase-2 freeze leaves the head without a
    gradient, as autograd does."""
    backbone = small("pythia-70m", *PYTHIA)
    backbone.set_trainable(True, freeze_second_half=frozen_head)
    assert_same_as_the_family_forward(backbone, tokens_of(50304, (3, 12)), bf16, monkeypatch)
    assert (backbone.unembedding.weight.grad is None) == frozen_head


@pytest.mark.parametrize("bf16", [False, True])
def test_llama_without_its_bos_in_longer_rows_and_with_it_unfused(bf16, monkeypatch):
    """Llama 3.2's vocabulary (128,256) at 8 x 64 labels. With its BOS as context the head is not fused: the family's
    head runs over the BOS position too, and the gradients' row sums, grouped by the row count, would round apart."""
    assert not small("llama-3.2-1b", *LLAMA).fuses_head(tokens_of(128256, (8, 65)))
    backbone = small("llama-3.2-1b", *LLAMA, bos="false")
    assert backbone.bos_id is None
    assert_same_as_the_family_forward(backbone, tokens_of(128256, (8, 65)), bf16, monkeypatch)


def test_the_logits_buffer_is_reused_from_step_to_step_and_given_back():
    backbone, tokens = small("pythia-70m", *PYTHIA), tokens_of(50304, (3, 12))
    buffer = backbone.logits_buffer
    step(backbone, tokens, False)
    (kept,) = buffer.free.values()
    assert kept.shape == (33, 50304)
    address = kept.data_ptr()
    lp = backbone.token_logprobs(tokens)
    assert not buffer.free  # taken by the graph until its backward
    lp.sum().backward()
    assert [t.data_ptr() for t in buffer.free.values()] == [address]
    with torch.no_grad():
        backbone.token_logprobs(tokens)  # no graph: given back at once
    assert [t.data_ptr() for t in buffer.free.values()] == [address]
    with torch.inference_mode():
        backbone.token_logprobs(tokens[:2])  # an evaluation's logits are not kept: an inference tensor ...
    assert [t.data_ptr() for t in buffer.free.values()] == [address]
    step(backbone, tokens[:2], False)  # ... could not be written by a training step; one shape kept, the latest
    (kept,) = buffer.free.values()
    assert kept.shape == (22, 50304) and kept.data_ptr() != address
    with torch.inference_mode():
        backbone.token_logprobs(tokens[:2])  # a kept tensor can be written in inference mode, and is kept after
    assert [t.data_ptr() for t in buffer.free.values()] == [kept.data_ptr()]
    assert backbone.frozen_copy().logits_buffer.free == {}  # a copy computes into its own


def test_the_buffer_keeps_its_most_recent_shapes_only():
    buffer = LogitsBuffer(capacity=2)
    for rows in (1, 2, 3):
        buffer.give(torch.empty(rows, 5))
    assert [k[0] for k in buffer.free] == [(2, 5), (3, 5)]
    assert buffer.take((2, 5), torch.float32, torch.device("cpu")).shape == (2, 5) and len(buffer.free) == 1


def test_a_second_backward_through_the_same_graph_fails_loudly():
    """Its logits buffer went back after the first backward: reading it again would be silently wrong."""
    backbone, tokens = small("pythia-70m", *PYTHIA), tokens_of(50304, (2, 5))
    lp = backbone.token_logprobs(tokens)
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="a second time: its logits buffer was handed back"):
        lp.sum().backward()


def test_the_head_is_not_fused_where_its_logits_are_not_the_heads_output_as_is():
    backbone, tokens = backbone_of("model=tiny"), tokens_of(28)
    backbone.set_compute(fused_logprobs=False, attention="eager")
    assert not backbone.fuses_head(tokens)  # plain log-probs asked for
    backbone.set_compute(fused_logprobs=True, attention="eager")
    seen = []
    torch.func.vmap(lambda t: seen.append(backbone.fuses_head(t)) or t)(tokens[None])
    assert seen == [False]  # stacked seeds: the logits are batched
    lora = backbone_of("model=tiny", "adapter=lora", "adapter.target_modules=[query_key_value,lm_head]")
    assert not lora.fuses_head(tokens)  # an adapter on the head
    lora = backbone_of("model=tiny", "adapter=lora")
    assert lora.fuses_head(tokens)  # adapters elsewhere
