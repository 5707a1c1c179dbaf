"""Where the knowledge sits: the logit lens (nostalgebraist 2020), per layer, over the K letters.

The residual stream entering layer 0 (the embeddings; index 0) and after each decoder layer (index i) is read
through the model's final norm and its unembedding, as if the network stopped there. Per layer and set: the mean
log-likelihood of the true letters, renormalised over the K letters, so chance is log(1/K) at every layer; the
last index is the model's own output (renormalised over the letters). Captured with forward hooks on the decoder
layers, so it holds for any decoder-only model whose final norm `Backbone.final_norm` finds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from negrl.model.backbone import Backbone, fp32_inference


def _hidden(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def residual_streams(backbone: Backbone, tokens: torch.Tensor) -> list[torch.Tensor]:
    """[n_layers + 1] residual streams [B, T-1, H] over `tokens[:, :-1]`: entering layer 0, then after each layer."""
    captured: list[torch.Tensor] = []
    layers = backbone.layers

    def before_first(module, args, kwargs):
        captured.append(_hidden(args[0] if args else kwargs["hidden_states"]))

    hooks = [layers[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    hooks += [layer.register_forward_hook(lambda m, args, out: captured.append(_hidden(out))) for layer in layers]
    try:
        backbone.lm(tokens[:, :-1])
    finally:
        for hook in hooks:
            hook.remove()
    return [h[:, backbone.context_tokens :] for h in captured]


def letter_lens(backbone: Backbone, sets: dict[str, torch.Tensor], letter_ids: Sequence[int],
                labels: dict[str, torch.Tensor], chunk: int = 512) -> dict[str, list[float]]:  # fmt: skip
    """Per set: the mean letter-renormalised log-likelihood of its labels [N, T-1] (letter indices) at each of the
    n_layers + 1 read-out points, in fp32 no-grad passes of `chunk` sequences."""
    device = next(backbone.parameters()).device
    ids = torch.tensor(list(letter_ids), device=device)
    unembed = backbone.unembedding
    weight = unembed.weight[ids].float()
    bias = None if getattr(unembed, "bias", None) is None else unembed.bias[ids].float()
    out = {}
    with fp32_inference(backbone):
        for name, tokens in sets.items():
            total = torch.zeros(len(backbone.layers) + 1, dtype=torch.float64)
            for part, part_labels in zip(tokens.split(chunk), labels[name].split(chunk)):
                for i, h in enumerate(residual_streams(backbone, part.to(device))):
                    lp = torch.log_softmax(F.linear(backbone.final_norm(h.float()), weight, bias), dim=-1)
                    total[i] += lp.gather(-1, part_labels.to(device).unsqueeze(-1)).double().sum().cpu()
            out[name] = (total / labels[name].numel()).tolist()
    return out
