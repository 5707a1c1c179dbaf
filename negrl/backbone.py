"""The GPT-NeoX (Pythia) backbone: loading, the phase-2 freeze, per-token log-probs."""

from __future__ import annotations

import copy
import difflib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from negrl.errors import NegrlError
from negrl.label_logprobs import label_logprobs, logsumexp_rows

ATTENTIONS = ("eager", "sdpa")  # Hugging Face attn_implementation values negrl accepts
#: Names of the final norm in Hugging Face decoders (GPT-NeoX; Llama, Qwen, OLMo, SmolLM, Gemma; GPT-2).
FINAL_NORMS = ("final_layer_norm", "norm", "ln_f")


class PythiaBackbone(nn.Module):
    """A GPT-NeoX causal LM with the few operations the three phases need."""

    def __init__(self, model: GPTNeoXForCausalLM):
        super().__init__()
        self.model = model
        self.set_compute(fused_logprobs=True, attention="eager")

    def set_compute(self, fused_logprobs: bool, attention: str) -> None:
        """How the math is computed (`compute.*`): the chunked label log-probs or the plain autograd
        ones, and the attention kernel. Results agree up to float rounding (fused: bit-identical)."""
        self.fused_logprobs = fused_logprobs
        self.model.set_attn_implementation(attention)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def random_init(cls, architecture: dict[str, Any], seed: int) -> PythiaBackbone:
        """A freshly initialised GPT-NeoX of the given architecture (no dropout), seeded."""
        config = GPTNeoXConfig(**{"hidden_dropout": 0.0, "attention_dropout": 0.0, **architecture})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPTNeoXForCausalLM(config)
        return cls(model.float())

    @classmethod
    def from_checkpoint(cls, path: str) -> PythiaBackbone:
        """Load a saved GPT-NeoX checkpoint directory (`save_pretrained` layout)."""
        check_checkpoint_dir(path)
        model = GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32)
        check_finite_weights(model, f"model.path={path}")
        return cls(model)

    @classmethod
    def from_hub(cls, hub_id: str, revision: str | None = None) -> PythiaBackbone:
        """Load pretrained weights from the Hugging Face hub or its local cache."""
        try:
            model = GPTNeoXForCausalLM.from_pretrained(
                hub_id, revision=revision, dtype=torch.float32, local_files_only=not hub_reachable()
            )
        except OSError as err:
            raise NegrlError(hub_unreachable_message(hub_id, err)) from None
        check_finite_weights(model, hub_id)
        return cls(model)

    # ---- structure ----------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_decoder().layers

    @property
    def unembedding(self) -> nn.Module:
        return self.model.get_output_embeddings()

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

    def frozen_by_phase2(self) -> Iterator[nn.Parameter]:
        """Parameters the phase-2 freeze holds fixed: `layers[n // 2:]` and the unembedding."""
        for layer in self.layers[len(self.layers) // 2 :]:
            yield from layer.parameters()
        yield from self.unembedding.parameters()

    def set_trainable(self, all_trainable: bool = True, freeze_second_half: bool = False) -> None:
        """Make everything trainable, then optionally apply the phase-2 freeze."""
        self.model.requires_grad_(all_trainable)
        if freeze_second_half:
            for p in self.frozen_by_phase2():
                p.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def frozen_copy(self) -> PythiaBackbone:
        """A detached, frozen copy (the DPO reference model)."""
        ref = copy.deepcopy(self)
        ref.requires_grad_(False)
        return ref.eval()

    # ---- computation --------------------------------------------------------------
    def token_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Log-prob of every label under next-token prediction: tokens [B, T] -> [B, T-1], in fp32.

        Full-vocabulary log-softmax in fp32 from the logits in whatever dtype the model produced them.
        Fused (default): chunked over rows with a hand-written backward (`negrl.label_logprobs`), no
        [B, T, V] fp32 tensor is kept; plain: gather minus logsumexp of the fp32 logits under autograd.
        """
        logits, labels = self.model(input_ids=tokens[:, :-1]).logits, tokens[:, 1:]
        if self.fused_logprobs:
            return label_logprobs(logits, labels)
        logits = logits.float()
        return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def candidate_logprobs(self, tokens: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-prob of each candidate token (e.g. the 26 letters) at every label
        position: tokens [B, T], candidate_ids [K] -> [B, T-1, K], in fp32."""
        logits = self.next_token_logits(tokens)
        lse = logsumexp_rows(logits) if self.fused_logprobs else torch.logsumexp(logits, dim=-1)
        return logits[..., candidate_ids.to(logits.device)] - lse.unsqueeze(-1)

    def next_token_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, T-1, V] in fp32 predicting tokens[:, 1:] from the tokens before each."""
        return self.model(input_ids=tokens[:, :-1]).logits.float()


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


#: Files of a save_pretrained() directory that hold the weights (one of them must exist).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Architecture keys that fix the shapes of the weights: a checkpoint must agree with `model=` on each.
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def check_checkpoint_dir(path: str, architecture: dict[str, Any] | None = None, model_name: str = "?") -> None:
    """`path` must be a save_pretrained() directory of a GPT-NeoX model with weights, of the architecture
    that `model=` records (each of SHAPE_KEYS it gives)."""
    if not Path(path).is_dir():
        raise NegrlError(f"model.path={path} is not a directory; give a save_pretrained() checkpoint directory")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise NegrlError(f"model.path={path} has no config.json; point it at a save_pretrained() directory")
    try:
        saved = json.loads(config_file.read_text())
        model_type = saved.get("model_type")
    except (ValueError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NegrlError(f"model.path={path}: config.json is not a valid JSON object ({reason}); re-save it") from None
    if model_type != "gpt_neox":
        raise NegrlError(f"model.path={path} holds a {model_type!r} model, not GPT-NeoX; negrl needs a Pythia model")
    if not any((Path(path) / f).is_file() for f in WEIGHT_FILES):
        raise NegrlError(
            f"model.path={path} has no weights ({' or '.join(WEIGHT_FILES[::2])}); re-save it with save_pretrained()"
        )
    differ = [f"{k} {saved[k]} vs {architecture[k]}" for k in SHAPE_KEYS if k in (architecture or {}) and k in saved
              and saved[k] != architecture[k]]  # fmt: skip
    if differ:
        raise NegrlError(
            f"model.path={path} does not match model={model_name} ({', '.join(differ)}: checkpoint vs model=); "
            "choose the model= of the checkpoint's architecture"
        )


#: Older GPT-NeoX config keys that transformers still reads (into `rope_parameters`), as Pythia's config.json has.
LEGACY_ARCHITECTURE_KEYS = ("rotary_pct", "rotary_emb_base")


def check_architecture_keys(architecture: dict[str, Any], model_name: str) -> None:
    """Every `model.architecture` key must be a GPT-NeoX config key (a typo would be silently ignored)."""
    known = set(GPTNeoXConfig().to_dict()) | set(LEGACY_ARCHITECTURE_KEYS)
    for key in architecture:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean model.architecture.{near[0]}?" if near else "see transformers' GPTNeoXConfig"
            raise NegrlError(f"model.architecture.{key} (model={model_name}) is not a GPT-NeoX setting; {hint}")


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse loaded weights with NaN or infinite values (they would fail, or mislead, hours later)."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise NegrlError(f"{source}: weight {name} holds non-finite values; use another checkpoint")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: not HF_HUB_OFFLINE, and a TCP connection to its endpoint
    opens within `timeout_s`. When it cannot, loading reads only the local cache (one quick error, not a
    minute of retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def hub_unreachable_message(hub_id: str, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else " (unreachable: cache only)"
    return (
        f"cannot load {hub_id} from the Hugging Face hub or its cache{offline}: {reason[:160]}; "
        "connect once to cache it, or pass model.path=DIR (a saved checkpoint), or model.init=random"
    )
