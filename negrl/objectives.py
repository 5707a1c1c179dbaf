"""Pure loss functions on per-token log-probs of the policy (and of the reference)."""

from __future__ import annotations

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
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "rewards/chosen": chosen_reward.mean().detach(),
        "rewards/rejected": rejected_reward.mean().detach(),
        "rewards/margins": margin.mean().detach(),
        "rewards/accuracies": (margin > 0).float().mean().detach(),
    }
    return loss, stats
