"""Hugging Face causal-LM families through the Auto classes: a config built offline from `model.model_type` and
`model.architecture`, checkpoints and their family checked, the decoder layers found."""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from negrl.core.errors import NegrlError

#: Files of a save_pretrained() directory that hold the weights (one of them must exist).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Config attributes that fix the shapes of the weights (every family's config answers to these names, through
#: its attribute_map where it calls them otherwise): a checkpoint must agree with `model=` on each.
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
#: The sizes of attention heads, by their names in the families' configs (with SHAPE_KEYS: a refused architecture's
#: values, in its message).
HEAD_KEYS = ("num_key_value_heads", "head_dim", "n_embd", "n_head", "n_layer", "n_inner")
#: Older config keys that transformers still reads (GPT-NeoX's rotary settings, the rope_* of Llama-like models,
#: into `rope_parameters`), as published config.json files have them.
LEGACY_ARCHITECTURE_KEYS = ("rotary_pct", "rotary_emb_base", "rope_theta", "rope_scaling", "rope_local_base_freq")


def config_class(model_type: str, model_name: str = "?") -> type[PretrainedConfig]:
    """The transformers config class of `model_type` (a config.json's `model_type`, e.g. gpt_neox, llama)."""
    if model_type not in CONFIG_MAPPING:
        near = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=1)
        hint = f"did you mean {near[0]}?" if near else "give the model_type of its config.json"
        raise NegrlError(f"model.model_type={model_type} (model={model_name}) is not a transformers model type; {hint}")
    return CONFIG_MAPPING[model_type]


def without_dropout(config: PretrainedConfig) -> PretrainedConfig:
    """`config` with every dropout probability at 0 (the phases' train and eval steps compute the same function,
    as the paper's Pythia does: GPT-2's published config has 0.1)."""
    for key, value in config.to_dict().items():
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def build_config(model_type: str, architecture: dict[str, Any]) -> PretrainedConfig:
    """The config of a random-init model: `architecture` over the family's defaults, without dropout."""
    return without_dropout(AutoConfig.for_model(model_type, **architecture))


def check_architecture_keys(model_type: str, architecture: dict[str, Any], model_name: str) -> None:
    """Every `model.architecture` key must be a setting of the family's config class (a typo would be ignored)."""
    cls = config_class(model_type, model_name)
    known = set(cls().to_dict()) | set(cls.attribute_map) | set(LEGACY_ARCHITECTURE_KEYS)
    for key in architecture:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean model.architecture.{near[0]}?" if near else f"see transformers' {cls.__name__}"
            raise NegrlError(f"model.architecture.{key} (model={model_name}) is not a {cls.__name__} setting; {hint}")


def check_architecture_builds(model_type: str, architecture: dict[str, Any], model_name: str) -> None:
    """The family's model must build from `architecture` and run one forward pass, both on the meta device (no
    memory, no weights, milliseconds), so that a value only transformers checks (a hidden size the heads do not
    divide, key-value heads that do not divide the heads, ...) is refused before any work."""
    meta_model(model_type, architecture, model_name)


def meta_model(model_type: str, architecture: dict[str, Any], model_name: str) -> nn.Module:
    """The family's model of `architecture` on the meta device (shapes only), checked by one forward pass."""
    return _meta_model(model_type, json.dumps(architecture, sort_keys=True), model_name)


@functools.lru_cache(maxsize=64)
def _meta_model(model_type: str, architecture_json: str, model_name: str) -> nn.Module:
    architecture = json.loads(architecture_json)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(build_config(model_type, architecture))
            model(torch.zeros(1, 4, dtype=torch.long))
    except Exception as err:  # transformers and torch raise ValueError, RuntimeError, ... for bad values
        reason = " ".join(str(err).split()) or type(err).__name__
        reason = reason.removeprefix("Class validation error for validator 'validate_architecture': ")
        shape = ", ".join(f"{k}={architecture[k]}" for k in (*SHAPE_KEYS, *HEAD_KEYS) if k in architecture)
        raise NegrlError(
            f"model.architecture of model={model_name} does not build ({shape}): {reason[:300]}; fix those values"
        ) from None
    return model


def check_checkpoint_dir(path: str, model_type: str, architecture: dict[str, Any], model_name: str = "?") -> None:
    """`path` must be a save_pretrained() directory with weights, of `model=`'s family (`model_type`) and of the
    architecture it records (each of SHAPE_KEYS)."""
    if not Path(path).is_dir():
        raise NegrlError(f"model.path={path} is not a directory; give a save_pretrained() checkpoint directory")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise NegrlError(f"model.path={path} has no config.json; point it at a save_pretrained() directory")
    try:
        saved = json.loads(config_file.read_text())
        saved_type = saved.get("model_type")
    except (ValueError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NegrlError(f"model.path={path}: config.json is not a valid JSON object ({reason}); re-save it") from None
    if saved_type != model_type:
        raise NegrlError(
            f"model.path={path} holds a {saved_type!r} model, but model={model_name} is {model_type!r}; "
            "choose the model= of the checkpoint's family"
        )
    if not any((Path(path) / f).is_file() for f in WEIGHT_FILES):
        raise NegrlError(
            f"model.path={path} has no weights ({' or '.join(WEIGHT_FILES[::2])}); re-save it with save_pretrained()"
        )
    have = config_class(model_type).from_dict({k: v for k, v in saved.items() if k != "model_type"})
    want = build_config(model_type, architecture)
    pairs = {k: (getattr(have, k, None), getattr(want, k, None)) for k in SHAPE_KEYS}
    differ = [f"{k} {a} vs {b}" for k, (a, b) in pairs.items() if None not in (a, b) and a != b]
    if differ:
        raise NegrlError(
            f"model.path={path} does not match model={model_name} ({', '.join(differ)}: checkpoint vs model=); "
            "choose the model= of the checkpoint's architecture"
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's stack of layers, found through the model's own accessors: the ModuleList of its decoder
    (`get_decoder()`) whose modules are the family's layer class (`_no_split_modules`), whatever it is called."""
    decoder = model.get_decoder()
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in decoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(type(m).__name__ in layer_classes for m in module):
            return module
    raise NegrlError(f"{type(model).__name__}: no stack of {sorted(layer_classes)} layers in its decoder")


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse loaded weights with NaN or infinite values (they would fail, or mislead, hours later)."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise NegrlError(f"{source}: weight {name} holds non-finite values; use another checkpoint")
