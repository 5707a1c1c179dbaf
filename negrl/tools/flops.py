"""The floating-point operations a training step executes, counted from what autograd runs (a multiply-add is 2).

Per position of a sequence, a weight matrix of W entries costs 2W in the forward pass, 2W for the gradient of its
input (the backward pass goes through every layer: the input embedding, below them all, is trained in every phase)
and 2W for the gradient of the weight itself, only where it is trained. So a fully trained step costs 6 per weight
and position, and phase 2's frozen second half and unembedding cost 4 of those 6. The input embedding is a lookup
(no multiply) unless it is also the unembedding. Attention scores add 4 t^2 d per layer and sequence of t positions
forward (Q K^T and the weighted sum of V, d the attention width; eager attention computes the full square), twice
that backward. The reference model (phases 2-3) runs forward only, on the sequences its cache lacks.
"""

from __future__ import annotations

from negrl.model.backbone import Backbone


def matmul_weights(backbone: Backbone) -> tuple[int, int]:
    """(weights every position is multiplied through, those of them trained now): all parameters (a shared matrix
    once) but the input embedding, a lookup unless it is the unembedding too."""
    embedding = backbone.model.get_input_embeddings().weight
    lookup = 0 if backbone.shares_embeddings else embedding.numel()
    params = list(backbone.parameters())
    total = sum(p.numel() for p in params) - lookup
    trained = sum(p.numel() for p in params if p.requires_grad) - (lookup if embedding.requires_grad else 0)
    return total, trained


def attention_flops(backbone: Backbone, positions: int) -> int:
    """Forward FLOPs of the attention scores of one sequence of `positions` positions, over all layers."""
    config = backbone.model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 4 * positions**2 * heads * head_dim * config.num_hidden_layers


def step_flops(backbone: Backbone, sequences: int, positions: int, reference_sequences: int = 0) -> int:
    """FLOPs of one step that trains what `backbone` trains now on `sequences` sequences of `positions` positions
    (the labels' inputs and any BOS), with `reference_sequences` through the frozen reference's forward pass."""
    total, trained = matmul_weights(backbone)
    attention = attention_flops(backbone, positions)
    policy = sequences * (positions * (4 * total + 2 * trained) + 3 * attention)
    return policy + reference_sequences * (positions * 2 * total + attention)
