"""Membership inference: can an attacker tell the negatives (members) from fresh random passwords (non-members)?

Three scores per password, each larger for "was a negative" (negatives are pushed down, so a low likelihood is the
sign of membership), from its per-token log-likelihoods (full-vocabulary, fp32):

- **loss**: minus the mean log-likelihood;
- **min_k**: minus the mean of its k% lowest token log-likelihoods (Shi et al. 2024, "Min-K% Prob"), k = 20 % by
  default, at least one token;
- **reference**: the mean log-likelihood under the phase-1 reference minus under the model (the membership form of
  the paper's logit-difference attack: what the training pushed down).

Each attack is a ROC AUC of members against non-members, 0.5 being chance: scipy's Mann-Whitney U / (members x
non-members), P(a member scores above a non-member) with ties counting half, on the raw scores. (torchmetrics'
`binary_auroc` is not used: it takes scores outside [0, 1] for logits and applies a sigmoid, which ties every score
above about 37 in float64, so a run whose negatives lose 40 nats a token would read 0.5.) A 95 % percentile interval
comes from a seeded stratified bootstrap over passwords (members and non-members resampled separately), each
resample's AUC computed the same way.
A non-finite score makes the AUC and its interval NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import mannwhitneyu


@dataclass(frozen=True)
class AucInterval:
    """A ROC AUC with its bootstrap 95 % interval (NaN without a bootstrap)."""

    auc: float
    low: float
    high: float


def loss_scores(token_ll: torch.Tensor) -> torch.Tensor:
    """[N, P] token log-likelihoods -> [N]: minus each password's mean."""
    return -token_ll.double().mean(dim=-1)


def min_k_scores(token_ll: torch.Tensor, k: float) -> torch.Tensor:
    """[N, P] -> [N]: minus the mean of each password's max(1, int(k * P)) lowest token log-likelihoods."""
    n = max(1, int(k * token_ll.shape[-1]))
    return -token_ll.double().topk(n, dim=-1, largest=False).values.mean(dim=-1)


def reference_scores(token_ll: torch.Tensor, reference_ll: torch.Tensor) -> torch.Tensor:
    """[N, P] under the model and the reference -> [N]: the reference's mean minus the model's."""
    return reference_ll.double().mean(dim=-1) - token_ll.double().mean(dim=-1)


def mann_whitney_auc(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray | float:
    """P(a member scores above a non-member), ties counting half, along the last axis: scipy's Mann-Whitney U /
    (members x non-members) on the raw scores (any scale)."""
    u = mannwhitneyu(members, nonmembers, axis=-1, method="asymptotic").statistic
    return u / (members.shape[-1] * nonmembers.shape[-1])


def roc_auc(members: torch.Tensor, nonmembers: torch.Tensor) -> float:
    """The ROC AUC of members against non-members (`mann_whitney_auc`); NaN if a score is not finite."""
    m, n = members.double().numpy(), nonmembers.double().numpy()
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        return math.nan
    return float(mann_whitney_auc(m, n))


def auc_interval(members: torch.Tensor, nonmembers: torch.Tensor, n_boot: int, seed: int) -> AucInterval:
    """The AUC and the 2.5 and 97.5 percentiles of `n_boot` stratified bootstrap AUCs (seeded), each computed as
    the AUC itself is (`mann_whitney_auc`), for all resamples in one batched call."""
    auc = roc_auc(members, nonmembers)
    if math.isnan(auc) or n_boot < 1:
        return AucInterval(auc, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    m = members.double().numpy()[rng.integers(0, len(members), size=(n_boot, len(members)))]
    n = nonmembers.double().numpy()[rng.integers(0, len(nonmembers), size=(n_boot, len(nonmembers)))]
    boot = mann_whitney_auc(m, n)
    low, high = np.percentile(boot, [2.5, 97.5])
    return AucInterval(auc, float(low), float(high))
