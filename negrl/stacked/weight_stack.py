"""K seeds' weights of one architecture stacked along a leading dimension, and each seed's views of them: its
weights as a `state_dict` and its part of the stacked AdamW state, both in a separate run's format."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from negrl.model.backbone import Backbone


class WeightStack(nn.Module):
    """K seeds' weights of one architecture: parameter i of `template` becomes `stacked[i]`, shaped [K, ...].

    `template` gives the structure (and holds one seed's weights on demand: `materialize`); a shared input/output
    matrix is one stacked tensor, as it is one parameter."""

    def __init__(self, template: Backbone, stacked: list[torch.Tensor]):
        super().__init__()
        self.template = template
        self.names = [name for name, _ in template.named_parameters()]
        self.stacked = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in stacked])

    @classmethod
    def of(cls, backbones: list[Backbone]) -> WeightStack:
        """The stack of `backbones` (same architecture); the first one becomes the template."""
        per_seed = [list(b.parameters()) for b in backbones]
        return cls(backbones[0], [torch.stack([ps[i].detach() for ps in per_seed]) for i in range(len(per_seed[0]))])

    def frozen_copy(self, template: Backbone) -> WeightStack:
        """A detached copy of the current weights (the stacked phase-1 reference), structured as `template`."""
        return WeightStack(template, [t.detach().clone() for t in self.stacked])

    @property
    def size(self) -> int:
        return self.stacked[0].shape[0]

    def sync_trainable(self) -> None:
        """Train exactly what the template trains now (the phase's choice)."""
        for p, t in zip(self.template.parameters(), self.stacked):
            t.requires_grad_(p.requires_grad)

    def trainable(self) -> list[nn.Parameter]:
        """The stacked parameters the phase trains, in the order of the template's `trainable_parameters()`."""
        return [t for t in self.stacked if t.requires_grad]

    def weights(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The stacked weights by parameter name (with `prefix`), for `functional_call` under `vmap`."""
        return {prefix + name: t for name, t in zip(self.names, self.stacked)}

    def _index(self) -> dict[int, int]:
        return {id(p): i for i, p in enumerate(self.template.parameters())}

    def seed_state(self, k: int) -> dict[str, torch.Tensor]:
        """Seed `k`'s weights as the template's `state_dict` (the same keys a separate run saves)."""
        index, state = self._index(), {}
        for key, value in self.template.state_dict(keep_vars=True).items():
            i = index.get(id(value))
            state[key] = (value if i is None else self.stacked[i][k]).detach().clone()
        return state

    @torch.no_grad()
    def load_seed(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Set seed `k`'s weights from a `state_dict` of the template's keys."""
        index = self._index()
        for key, value in self.template.state_dict(keep_vars=True).items():
            if id(value) in index:
                self.stacked[index[id(value)]][k].copy_(state[key])

    @torch.no_grad()
    def materialize(self, k: int) -> Backbone:
        """The template holding seed `k`'s current weights (for the code that takes one model: the attacks)."""
        for p, t in zip(self.template.parameters(), self.stacked):
            p.copy_(t[k])
        return self.template

    def logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each seed's per-token log-probs of its own sequences: tokens [K, N, T] -> [K, N, T-1]."""
        return vmap(lambda w, x: functional_call(self.template, w, (x,)))(self.weights(), tokens)


class SeedWeights:
    """Seed `k`'s slice of a stack, as what a `PhaseRunner` saves and restores (`state_dict`, `load_state_dict`)."""

    def __init__(self, stack: WeightStack, k: int):
        self.stack, self.k = stack, k

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.stack.seed_state(self.k)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stack.load_seed(self.k, state)


class SeedOptimizer:
    """Seed `k`'s view of the stacked AdamW: its state in a separate run's format (and back)."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int):
        self.optimizer, self.k = optimizer, k

    def state_dict(self) -> dict[str, Any]:
        full = self.optimizer.state_dict()
        state = {i: {key: _seed_slice(v, self.k) for key, v in st.items()} for i, st in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    @torch.no_grad()
    def load_state_dict(self, saved: dict[str, Any]) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # As PyTorch's own load_state_dict: a fused or capturable AdamW keeps its step count in fp32 on the parameter's
        # device (a CUDA kernel reads it there), the others as the checkpoint has it (on the CPU).
        on_device = {id(p) for g in self.optimizer.param_groups if g.get("fused") or g.get("capturable")
                     for p in g["params"]}  # fmt: skip
        for i, st in saved["state"].items():
            mine = self.optimizer.state[params[i]]
            for key, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    mine.setdefault(key, torch.zeros_like(params[i]))[self.k].copy_(v)
                elif torch.is_tensor(v) and id(params[i]) in on_device:
                    mine[key] = v.to(params[i].device, torch.float32, copy=True)
                elif torch.is_tensor(v):
                    mine[key] = v.clone()
                else:
                    mine[key] = v
        for group, saved_group in zip(self.optimizer.param_groups, saved["param_groups"]):
            group.update({key: v for key, v in saved_group.items() if key != "params"})


def _seed_slice(value: Any, k: int) -> Any:
    """Seed `k`'s part of an optimizer state entry (a stacked tensor), or the entry (a shared step count)."""
    if torch.is_tensor(value):
        return value[k].clone() if value.dim() > 0 else value.clone()
    return value
