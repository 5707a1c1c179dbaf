"""Pure loss functions on per-token log-probs of the policy (and of the reference).

NTP and DPO as docs/experiment.md defines them, and the registry of negative-reinforcement objectives
that phases 2 and 3 can use instead of DPO (`objective=NAME`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logprob(token_logprobs: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of each sequence: the SUM of its label log-probs, [B, T-1] -> [B]."""
    return token_logprobs.sum(dim=-1)


def mean_token_logprob(token_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-sequence MEAN of label log-probs, [B, T-1] -> [B]."""
    return token_logprobs.mean(dim=-1)


def ntp_loss(token_logprobs: torch.Tensor) -> torch.Tensor:
    """Next-token prediction loss: minus the mean over label positions, then over sequences."""
    return -mean_token_logprob(token_logprobs).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023) on sequence log-probs [B]; returns the loss and TRL-style rewards.

    loss = -log sigmoid(beta * ((logp(c) - ref(c)) - (logp(r) - ref(r)))), averaged over pairs.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return loss, reward_stats(chosen_reward, rejected_reward)


def reward_stats(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL-style means of the per-pair rewards [B], their margin and how often it is positive."""
    margin = chosen_reward - rejected_reward
    return {
        "rewards/chosen": chosen_reward.mean().detach(),
        "rewards/rejected": rejected_reward.mean().detach(),
        "rewards/margins": margin.mean().detach(),
        "rewards/accuracies": (margin > 0).float().mean().detach(),
    }


# ---- objectives of phases 2 and 3: one registry ------------------------------------------------
@dataclass(frozen=True)
class PreferenceBatch:
    """What a negative-reinforcement objective sees: the policy's per-token log-probs of the chosen
    (random) and rejected (negative) sequences, [B, L], and the reference's sequence log-probs, [B]."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor


Objective = Callable[..., torch.Tensor]
OBJECTIVES: dict[str, Objective] = {}
#: Each objective's hyper-parameters and their defaults (those of its paper); `conf/objective/NAME.yaml`.
DEFAULTS: dict[str, dict[str, float]] = {}


def register(name: str, **defaults: float) -> Callable[[Objective], Objective]:
    def add(fn: Objective) -> Objective:
        OBJECTIVES[name], DEFAULTS[name] = fn, defaults
        return fn

    return add


@register("dpo", beta=0.1)
def _dpo(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """Rafailov et al. 2023: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio))."""
    return dpo_loss(sequence_logprob(b.chosen), sequence_logprob(b.rejected), b.ref_chosen, b.ref_rejected, beta)[0]


@register("ipo", tau=0.1)
def _ipo(b: PreferenceBatch, tau: float) -> torch.Tensor:
    """Azar et al. 2023: (chosen log-ratio - rejected log-ratio - 1 / (2 tau))^2."""
    h = (sequence_logprob(b.chosen) - b.ref_chosen) - (sequence_logprob(b.rejected) - b.ref_rejected)
    return ((h - 1 / (2 * tau)) ** 2).mean()


@register("hinge", delta=1.0)
def _hinge(b: PreferenceBatch, delta: float) -> torch.Tensor:
    """SLiC (Zhao et al. 2023) calibration loss: max(0, delta - log p(chosen) + log p(rejected)); no reference."""
    return torch.relu(delta - sequence_logprob(b.chosen) + sequence_logprob(b.rejected)).mean()


@register("npo", beta=0.1)
def _npo(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """Zhang et al. 2024: -(2 / beta) log sigmoid(-beta * rejected log-ratio); the rejected side only."""
    return -(2 / beta) * F.logsigmoid(-beta * (sequence_logprob(b.rejected) - b.ref_rejected)).mean()


@register("simnpo", beta=2.5, gamma=0.0)
def _simnpo(b: PreferenceBatch, beta: float, gamma: float) -> torch.Tensor:
    """Fan et al. 2024: -(2 / beta) log sigmoid(-beta * mean-token log p(rejected) - gamma); reference-free."""
    return -(2 / beta) * F.logsigmoid(-beta * mean_token_logprob(b.rejected) - gamma).mean()


@register("unlikelihood", alpha=1.0)
def _unlikelihood(b: PreferenceBatch, alpha: float) -> torch.Tensor:
    """Welleck et al. 2019, token level: NTP on the chosen + alpha * mean over rejected tokens of -log(1 - p)."""
    p = b.rejected.exp().clamp(max=1 - 1e-6)
    return ntp_loss(b.chosen) + alpha * -torch.log1p(-p).mean()


@register("grad_ascent")
def _grad_ascent(b: PreferenceBatch) -> torch.Tensor:
    """The naive baseline: gradient ascent on the rejected sequences' NTP loss (unbounded below)."""
    return -ntp_loss(b.rejected)


def objective_loss(name: str, batch: PreferenceBatch, params: dict[str, float]) -> torch.Tensor:
    """The loss of objective `name` with hyper-parameters `params` (those of DEFAULTS[name]; both checked by
    `negrl.run.validation.objective_settings`)."""
    return OBJECTIVES[name](batch, **params)


def preference_stats(batch: PreferenceBatch, beta: float) -> dict[str, torch.Tensor]:
    """TRL-style rewards (beta x log-ratio to the reference) for logging, whatever the objective."""
    return reward_stats(
        beta * (sequence_logprob(batch.chosen) - batch.ref_chosen),
        beta * (sequence_logprob(batch.rejected) - batch.ref_rejected),
    )
