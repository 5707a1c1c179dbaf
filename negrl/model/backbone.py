"""The backbone of a run: any Hugging Face causal LM (negrl.model.families) with the few operations the three phases
need: the phase-2 freeze, the optional BOS as context, per-token log-probs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from negrl.core.errors import NegrlError
from negrl.model.families import (
    build_config,
    check_finite_weights,
    decoder_layers,
    without_dropout,
)
from negrl.model.head_logprobs import LogitsBuffer, head_label_logprobs
from negrl.model.hub import hub_reachable, hub_unreachable_message
from negrl.model.label_logprobs import label_logprobs, logsumexp_rows

ATTENTIONS = ("eager", "sdpa")  # Hugging Face attn_implementation values negrl accepts
#: Names of the final norm in Hugging Face decoders (GPT-NeoX; Llama, Qwen, OLMo, SmolLM, Gemma; GPT-2).
FINAL_NORMS = ("final_layer_norm", "norm", "ln_f")
#: Families whose causal-LM forward is the decoder's last hidden state through the head and nothing after it (no
#: soft-capping, no logit scale; tested against each family's own forward): on CPU their label log-probs take the
#: head into the fused computation (negrl.model.head_logprobs).
PLAIN_HEAD_FAMILIES = frozenset({"gpt_neox", "gpt2", "llama", "qwen2", "olmo2"})


class Backbone(nn.Module):
    """A Hugging Face causal LM with the few operations the three phases need.

    `bos_id`: a token put before every sequence as context only (the families whose tokenizer starts text with
    one): every output keeps the shape and positions of the sequence without it, so it is never a label.
    `tied`: with input and output embeddings one matrix, whether phase 2 freezes it ("freeze") or leaves it
    trainable ("train"). Training updates `tunable` parameters only: all of them, or an adapter's."""

    def __init__(self, model: nn.Module, bos_id: int | None = None, tied: str = "freeze"):
        super().__init__()
        self.model = model
        self.bos_id, self.tied = bos_id, tied
        self.shared_at_load: bool | None = None  # whether the loaded model tied its embeddings (negrl.model.loading)
        self.mark_tunable()
        self.logits_buffer = LogitsBuffer()  # the fused head's logits, kept between steps (negrl.model.head_logprobs)
        self.set_compute(fused_logprobs=True, attention="eager")

    def set_compute(self, fused_logprobs: bool, attention: str) -> None:
        """How the math is computed (`compute.*`): the chunked label log-probs or the plain autograd
        ones, and the attention kernel. Results agree up to float rounding (fused: bit-identical)."""
        self.fused_logprobs = fused_logprobs
        self.model.set_attn_implementation(attention)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def random_init(cls, architecture: dict, seed: int, model_type: str = "gpt_neox") -> Backbone:
        """A freshly initialised model of the family `model_type` and the given architecture (no dropout), seeded."""
        config = build_config(model_type, architecture)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
        return cls(model.float())

    @classmethod
    def from_checkpoint(cls, path: str) -> Backbone:
        """Load a saved checkpoint directory (`save_pretrained` layout; loading.check_model checks it first)."""
        config = without_dropout(AutoConfig.from_pretrained(path))
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32)
        check_finite_weights(model, f"model.path={path}")
        return cls(model)

    @classmethod
    def from_hub(cls, hub_id: str, revision: str | None = None, model_type: str = "gpt_neox",
                 model_name: str = "?") -> Backbone:  # fmt: skip
        """Load pretrained weights of the family `model_type` from the Hugging Face hub or its local cache (the
        family is checked on the config, before any weights are read)."""
        local = not hub_reachable()
        try:
            config = without_dropout(AutoConfig.from_pretrained(hub_id, revision=revision, local_files_only=local))
            if config.model_type != model_type:
                raise NegrlError(
                    f"{hub_id} is a {config.model_type!r} model, but model={model_name} is {model_type!r}; "
                    "fix model.hub_id or model.model_type"
                )
            model = AutoModelForCausalLM.from_pretrained(
                hub_id, config=config, revision=revision, dtype=torch.float32, local_files_only=local
            )
        except OSError as err:
            raise NegrlError(hub_unreachable_message(hub_id, err)) from None
        check_finite_weights(model, hub_id)
        return cls(model)

    # ---- structure ----------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return decoder_layers(self.model)

    @property
    def unembedding(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def shares_embeddings(self) -> bool:
        """Whether the unembedding is the input embedding (tied weights)."""
        return self.unembedding.weight is self.model.get_input_embeddings().weight

    def untie_embeddings(self) -> None:
        """Give the unembedding its own copy of a shared input/output matrix (equal values, trained apart)."""
        if self.shares_embeddings:
            self.unembedding.weight = nn.Parameter(self.unembedding.weight.detach().clone())
            self.model.config.tie_word_embeddings = False
            self.mark_tunable()

    @property
    def final_norm(self) -> nn.Module:
        """The norm between the last decoder layer and the unembedding (the logit lens reads every layer through it)."""
        decoder = self.model.get_decoder()
        for name in FINAL_NORMS:
            if isinstance(getattr(decoder, name, None), nn.Module):
                return getattr(decoder, name)
        raise NegrlError(
            f"{type(decoder).__name__} has none of the final norms {FINAL_NORMS}; the logit lens needs one"
        )

    def mark_tunable(self) -> None:
        """Record the parameters training may update: those requiring gradients now (all of a plain model;
        an adapter's after negrl.model.adapters wraps it)."""
        self.tunable = frozenset(name for name, p in self.model.named_parameters() if p.requires_grad)

    def frozen_by_phase2(self) -> Iterator[nn.Parameter]:
        """Parameters the phase-2 freeze holds fixed: `layers[n // 2:]` and the unembedding (a shared input/output
        matrix only with `tied="freeze"`)."""
        for layer in self.layers[len(self.layers) // 2 :]:
            yield from layer.parameters()
        if not (self.shares_embeddings and self.tied == "train"):
            yield from self.unembedding.parameters()

    def set_trainable(self, all_trainable: bool = True, freeze_second_half: bool = False) -> None:
        """Make every tunable parameter trainable (or none), then optionally apply the phase-2 freeze."""
        for name, p in self.model.named_parameters():
            p.requires_grad_(all_trainable and name in self.tunable)
        if freeze_second_half:
            for p in self.frozen_by_phase2():
                p.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_count(self, freeze_second_half: bool = False) -> int:
        """How many weights a phase trains (each shared matrix once), without changing what is trainable."""
        frozen = {id(p) for p in self.frozen_by_phase2()} if freeze_second_half else set()
        return sum(
            p.numel() for name, p in self.model.named_parameters() if name in self.tunable and id(p) not in frozen
        )

    def frozen_copy(self) -> Backbone:
        """A detached, frozen copy (the DPO reference model)."""
        ref = copy.deepcopy(self)
        ref.requires_grad_(False)
        return ref.eval()

    # ---- computation --------------------------------------------------------------
    def lm(self, inputs: torch.Tensor, **kwargs):
        """The model's output over `inputs` [B, t] (the BOS, if any, put before them as context)."""
        return self.model(input_ids=self.with_context(inputs), **kwargs)

    def with_context(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` [B, t] with the BOS, if any, put before them."""
        if self.bos_id is None:
            return inputs
        return torch.cat([inputs.new_full((inputs.shape[0], 1), self.bos_id), inputs], dim=1)

    @property
    def context_tokens(self) -> int:
        """Positions the backbone puts before a sequence (the BOS): outputs drop them."""
        return 0 if self.bos_id is None else 1

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits [B, t, V] over `inputs` [B, t], in the model's dtype, the BOS position dropped."""
        logits = self.lm(inputs).logits
        return logits[:, self.context_tokens :] if self.context_tokens else logits

    def hidden_states(self, inputs: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states [B, t, d] over `inputs` [B, t] (after its final norm: what the head
        reads), the BOS position dropped."""
        hidden = self.model.get_decoder()(input_ids=self.with_context(inputs)).last_hidden_state
        return hidden[:, self.context_tokens :] if self.context_tokens else hidden

    def fuses_head(self, tokens: torch.Tensor) -> bool:
        """Whether `token_logprobs` computes the head inside the fused log-probs (negrl.model.head_logprobs): fused
        log-probs, on CPU (a GPU's caching allocator already reuses memory), outside torch.func transforms (stacked
        seeds: their logits are batched), for a family whose logits are the head's output as it is (a bias-free
        linear head, no adapter on it), without a BOS (its family's head runs over the BOS position too, and the
        gradients' sums over rows are grouped, so rounded, by their count)."""
        head = self.unembedding
        return (
            self.fused_logprobs
            and self.bos_id is None
            and tokens.device.type == "cpu"
            and not torch._C._are_functorch_transforms_active()  # as torch.autograd.Function itself checks
            and self.model.config.model_type in PLAIN_HEAD_FAMILIES
            and type(head) is nn.Linear
            and head.bias is None
        )

    def token_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-prob of every label under next-token prediction: tokens [B, T] -> [B, T-1], in fp32.

        Full-vocabulary log-softmax in fp32 from the logits in whatever dtype the model produced them.
        Fused (default): chunked over rows with a hand-written backward (`negrl.model.label_logprobs`), no
        [B, T, V] fp32 tensor is kept, and on CPU the head's logits written into a buffer reused from step to step
        (`negrl.model.head_logprobs`); plain: gather minus logsumexp of the fp32 logits under autograd.
        """
        labels = tokens[:, 1:]
        if self.fuses_head(tokens):
            hidden = self.hidden_states(tokens[:, :-1])
            return head_label_logprobs(hidden, self.unembedding.weight, labels, self.logits_buffer)
        logits = self.logits(tokens[:, :-1])
        if self.fused_logprobs:
            return label_logprobs(logits, labels)
        return plain_label_logprobs(logits.float(), labels)

    def token_outputs(self, tokens: torch.Tensor, logits: bool = False, layer: int | None = None) -> dict:
        """One forward over tokens [B, T] giving what an objective asks for beyond `token_logprobs`:
        "logprobs" [B, T-1] (fp32), with `logits` also "logits" [B, T-1, V] (fp32, under autograd), with `layer`
        also "hidden" [B, T-1, d]: the residual stream leaving decoder layer `layer` (0-based) at the positions
        that predict the labels. The label log-probs are the plain autograd ones when the logits are returned
        (the fused backward reuses the logits' storage)."""
        captured: list[torch.Tensor] = []

        def keep(module: nn.Module, inputs: tuple, output: torch.Tensor | tuple) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = self.layers[layer].register_forward_hook(keep) if layer is not None else None
        try:
            out = self.logits(tokens[:, :-1])
        finally:
            if handle is not None:
                handle.remove()
        labels = tokens[:, 1:]
        if logits or not self.fused_logprobs:
            full = out.float()
            result = {"logprobs": plain_label_logprobs(full, labels)}
            if logits:
                result["logits"] = full
        else:
            result = {"logprobs": label_logprobs(out, labels)}
        if layer is not None:
            result["hidden"] = captured[0][:, self.context_tokens :]
        return result

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`token_logprobs`, as the module's call (what `torch.func.functional_call` runs over stacked weights)."""
        return self.token_logprobs(tokens)

    def candidate_logprobs(self, tokens: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-prob of each candidate token (e.g. the 26 letters) at every label
        position: tokens [B, T], candidate_ids [K] -> [B, T-1, K], in fp32."""
        logits = self.next_token_logits(tokens)
        lse = logsumexp_rows(logits) if self.fused_logprobs else torch.logsumexp(logits, dim=-1)
        return logits[..., candidate_ids.to(logits.device)] - lse.unsqueeze(-1)

    def next_token_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T-1, V] in fp32 predicting tokens[:, 1:] from the tokens before each."""
        return self.logits(tokens[:, :-1]).float()


@contextmanager
def fp32_inference(backbone: nn.Module) -> Iterator[None]:
    """No-grad inference in eval mode with autocast off (evaluation is fp32 whatever the training
    precision); the training mode is restored afterwards."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        backbone.train(was_training)


def plain_label_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Label log-probs under autograd: gather minus logsumexp of fp32 logits [..., V] at labels [...]."""
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
