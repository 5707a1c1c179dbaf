"""Parameter-efficient fine-tuning through peft: `adapter=lora` trains low-rank adapters on the family's attention
and MLP projections (`model.lora_targets`, or `adapter.target_modules`) while every base weight stays fixed.

The phases' semantics carry over unchanged through `Backbone.tunable`: phase 1 and phase 3 train every adapter;
phase 2's freeze holds the adapters of `layers[n // 2:]` (and any on the unembedding) fixed; the reference is the
phase-1 model, base plus phase-1 adapters. Adapter dropout is 0, so train and eval steps compute the same function.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from negrl.core.errors import NegrlError
from negrl.model.backbone import Backbone


def target_modules(adapter_cfg: dict[str, Any], model_cfg: dict[str, Any]) -> list[str]:
    """The module names adapters go on: `adapter.target_modules`, else the family's `model.lora_targets`."""
    targets = adapter_cfg.get("target_modules") or model_cfg.get("lora_targets")
    if not targets:
        raise NegrlError(
            f"adapter=lora: model={model_cfg.get('name', '?')} names no model.lora_targets; "
            "set adapter.target_modules=[...] (module names of its projections)"
        )
    return list(targets)


def check_targets(model: nn.Module, adapter_cfg: dict[str, Any], model_cfg: dict[str, Any]) -> tuple[list[str], bool]:
    """The adapter's targets in `model` (the real one, or its meta-device twin before any work): each a linear
    module of the model, and `adapter.rank` no larger than the smallest side of any of them. Returns the targets and
    whether they store their weight transposed (GPT-2's Conv1D projections)."""
    targets = target_modules(adapter_cfg, model_cfg)
    found = {name.rsplit(".", 1)[-1]: module for name, module in model.named_modules()}
    missing = [t for t in targets if t not in found]
    if missing:
        raise NegrlError(
            f"adapter target {missing[0]!r} is not a module of model={model_cfg.get('name', '?')} "
            f"({type(model).__name__}); fix adapter.target_modules or model.lora_targets"
        )
    kinds = {type(found[t]) for t in targets}
    if not kinds <= {nn.Linear, Conv1D}:
        raise NegrlError(f"adapter targets {targets} include non-linear modules {sorted(k.__name__ for k in kinds)}; "
                         "target only linear projections")  # fmt: skip
    smallest = min(min(found[t].weight.shape) for t in targets)
    if adapter_cfg["rank"] > smallest:
        raise NegrlError(
            f"adapter.rank={adapter_cfg['rank']} is larger than the smallest adapted layer of "
            f"model={model_cfg.get('name', '?')} ({smallest}); use adapter.rank <= {smallest}"
        )
    return targets, Conv1D in kinds


def apply_adapter(backbone: Backbone, adapter_cfg: dict[str, Any], model_cfg: dict[str, Any]) -> None:
    """Wrap `backbone.model` in LoRA adapters (rank `adapter.rank`, scale `adapter.alpha / rank`); afterwards only
    the adapters are tunable."""
    from peft import LoraConfig, get_peft_model

    targets, transposed = check_targets(backbone.model, adapter_cfg, model_cfg)
    config = LoraConfig(
        r=adapter_cfg["rank"],
        lora_alpha=adapter_cfg["alpha"],
        lora_dropout=0.0,
        target_modules=targets,
        bias="none",
        fan_in_fan_out=transposed,
    )
    backbone.model = get_peft_model(backbone.model, config)
    backbone.mark_tunable()
