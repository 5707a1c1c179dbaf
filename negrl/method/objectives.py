"""Pure loss functions on per-token log-probs of the policy (and of the reference).

NTP and DPO as docs/experiment.md defines them, and the registry of negative-reinforcement objectives
that phases 2 and 3 can use instead of DPO (`objective=NAME`; docs/objectives.md): each a function of a
`PreferenceBatch`, its paper's hyper-parameters (`DEFAULTS`) and what it reads beyond label log-probs (`NEEDS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
# Notation: c = the chosen (random) password, r = the rejected (negative) one; log p(.) the policy's log-prob summed
# over the sequence's labels, ref(.) the frozen phase-1 reference's; the log-ratios lc = log p(c) - ref(c),
# lr = log p(r) - ref(r), h = lc - lr; mean-token log-probs ac, ar. Every loss is averaged over the batch's pairs.
SIDES = ("chosen", "rejected")


@dataclass(frozen=True)
class Needs:
    """What an objective reads beyond the policy's label log-probs and the reference's sequence log-probs, each
    a tuple of sides ("chosen", "rejected"): the policy's (`logits`) or the reference's (`ref_logits`)
    full-vocabulary logits [B, L, V], the residual stream leaving decoder layer `objective.layer` of the policy
    (`hidden`) or of the reference (`ref_hidden`) [B, L, d]. They come in `PreferenceBatch.extra` under
    "KIND/SIDE" ("ref_logits/rejected"; with `logits` also the side's labels, "labels/SIDE" [B, L]); the
    phases compute only what is asked (nothing for most objectives)."""

    logits: tuple[str, ...] = ()
    ref_logits: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    ref_hidden: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.logits or self.ref_logits or self.hidden or self.ref_hidden)

    @property
    def layer(self) -> bool:
        """Whether a layer's hidden states are read (the objective then has a `layer` hyper-parameter)."""
        return bool(self.hidden or self.ref_hidden)


@dataclass(frozen=True)
class PreferenceBatch:
    """What a negative-reinforcement objective sees: the policy's per-token log-probs of the chosen
    (random) and rejected (negative) sequences, [B, L], the reference's sequence log-probs, [B], and
    `extra`, what the objective's `Needs` ask for ("logits/rejected", "ref_hidden/chosen", ...)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def logratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lc, lr): each side's sequence log-prob minus the reference's, [B] each."""
        return sequence_logprob(self.chosen) - self.ref_chosen, sequence_logprob(self.rejected) - self.ref_rejected


Objective = Callable[..., torch.Tensor]
OBJECTIVES: dict[str, Objective] = {}
#: Each objective's hyper-parameters and their defaults (those of its paper); `conf/objective/NAME.yaml`.
DEFAULTS: dict[str, dict[str, float]] = {}
#: What each objective reads beyond label log-probs (`Needs()`: nothing).
NEEDS: dict[str, Needs] = {}


def register(name: str, needs: Needs = Needs(), **defaults: float) -> Callable[[Objective], Objective]:
    def add(fn: Objective) -> Objective:
        OBJECTIVES[name], DEFAULTS[name], NEEDS[name] = fn, defaults, needs
        return fn

    return add


def smoothed_logistic(x: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(x) - eps log sigmoid(-x): the logistic loss with labels flipped with probability eps
    (cDPO, AOT); exactly -log sigmoid(x) at eps = 0."""
    if not eps:
        return -F.logsigmoid(x)
    return -(1 - eps) * F.logsigmoid(x) - eps * F.logsigmoid(-x)


# ---- the paper's DPO and the first six alternatives ---------------------------------------------------
@register("dpo", beta=0.1, label_smoothing=0.0)
def _dpo(b: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """Rafailov et al. 2023: -log sigmoid(beta h); with label_smoothing eps > 0 conservative DPO (cDPO, Mitchell
    2023; TRL's sigmoid loss before its 2026 refactor): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)."""
    if not label_smoothing:  # the paper's loss, computed exactly as before cDPO existed
        return dpo_loss(sequence_logprob(b.chosen), sequence_logprob(b.rejected), b.ref_chosen, b.ref_rejected, beta)[0]
    lc, lr = b.logratios
    return smoothed_logistic(beta * (lc - lr), label_smoothing).mean()


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


# ---- the other loss types of TRL's DPOTrainer (pairwise, with the reference) -------------------------
@register("robust", beta=0.1, label_smoothing=0.1)
def _robust(b: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """rDPO (Chowdhury et al. 2024), labels flipped with probability eps = label_smoothing < 1/2:
    [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)."""
    lc, lr = b.logratios
    x, eps = beta * (lc - lr), label_smoothing
    return ((-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)).mean()


@register("exo_pair", beta=0.1, label_smoothing=1e-3)
def _exo_pair(b: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """EXO (Ji et al. 2024, eq. 16): KL of q = (sigmoid(beta h), sigmoid(-beta h)) from (1 - eps, eps)."""
    lc, lr = b.logratios
    x, eps = beta * (lc - lr), label_smoothing
    return (
        torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps)) + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps))
    ).mean()


@register("nca_pair", beta=0.1)
def _nca_pair(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """NCA (Chen et al. 2024), pairs: -log sigmoid(beta lc) - (log sigmoid(-beta lc) + log sigmoid(-beta lr)) / 2."""
    lc, lr = b.logratios
    return (-F.logsigmoid(beta * lc) - 0.5 * F.logsigmoid(-beta * lc) - 0.5 * F.logsigmoid(-beta * lr)).mean()


@register("bco_pair", beta=0.1)
def _bco_pair(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """BCO (Jung et al. 2024) on pairs, as TRL's DPOTrainer: -log sigmoid(beta lc) - log sigmoid(-beta lr)."""
    lc, lr = b.logratios
    return (-F.logsigmoid(beta * lc) - F.logsigmoid(-beta * lr)).mean()


@register("sppo_hard", beta=0.1)
def _sppo_hard(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """SPPO (Wu et al. 2024) with hard win probabilities: (lc - 1/(2 beta))^2 + (lr + 1/(2 beta))^2."""
    lc, lr = b.logratios
    return ((lc - 0.5 / beta) ** 2 + (lr + 0.5 / beta) ** 2).mean()


@register("aot", beta=0.1, label_smoothing=0.0)
def _aot(b: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """AOT (Melnyk et al. 2024), paired: d = sort(log p(c) - log p(r)) - sort(ref(c) - ref(r)) over the batch;
    the (label-smoothed) logistic loss of beta d."""
    policy = torch.sort(sequence_logprob(b.chosen) - sequence_logprob(b.rejected), dim=-1).values
    ref = torch.sort(b.ref_chosen - b.ref_rejected, dim=-1).values
    return smoothed_logistic(beta * (policy - ref), label_smoothing).mean()


@register("aot_pair", beta=0.1, label_smoothing=0.0)
def _aot_pair(b: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """AOT, unpaired (TRL's `aot_pair`, renamed `aot_unpaired` in 2026): d = sort(lc) - sort(lr) over the batch."""
    lc, lr = b.logratios
    d = torch.sort(lc, dim=-1).values - torch.sort(lr, dim=-1).values
    return smoothed_logistic(beta * d, label_smoothing).mean()


@register("apo_zero", beta=0.1)
def _apo_zero(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): 1 - sigmoid(beta lc) + sigmoid(beta lr)."""
    lc, lr = b.logratios
    return (1 - torch.sigmoid(beta * lc) + torch.sigmoid(beta * lr)).mean()


@register("apo_down", beta=0.1)
def _apo_down(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """APO-down (eq. 8): sigmoid(beta lc) + 1 - sigmoid(beta h)."""
    lc, lr = b.logratios
    return (torch.sigmoid(beta * lc) + 1 - torch.sigmoid(beta * (lc - lr))).mean()


@register("discopop", beta=0.1, tau=0.05)
def _discopop(b: PreferenceBatch, beta: float, tau: float) -> torch.Tensor:
    """DiscoPOP (Lu et al. 2024, eq. 5), x = beta h, m = sigmoid(x / tau): (1 - m) (-log sigmoid(x)) + m exp(-x)."""
    lc, lr = b.logratios
    x = beta * (lc - lr)
    m = torch.sigmoid(x / tau)
    return ((1 - m) * -F.logsigmoid(x) + m * torch.exp(-x)).mean()


# ---- unpaired (KTO) and reference-free (ORPO, CPO, SimPO) ------------------------------------------
def kto_reference_point(*logratios: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z: the batch mean of the log-ratios of mismatched completions (TRL), clamped at 0,
    without gradient. Every sequence of a batch shares its prompt (the prefix), so the mismatched pairs are the
    batch's own completions: z = max(0, mean of the given log-ratios)."""
    return torch.cat(logratios, dim=-1).mean(dim=-1, keepdim=True).detach().clamp(min=0)


@register("kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)
def _kto(b: PreferenceBatch, beta: float, desirable_weight: float, undesirable_weight: float) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024): chosen desirable, rejected undesirable, z = `kto_reference_point`; the mean
    over the 2B sequences of w_d (1 - sigmoid(beta (lc - z))) and w_u (1 - sigmoid(beta (z - lr)))."""
    lc, lr = b.logratios
    z = kto_reference_point(lc, lr)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (lc - z)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z - lr)))
    return torch.cat([desirable, undesirable], dim=-1).mean()


@register("kto_undesirable", beta=0.1, undesirable_weight=1.0)
def _kto_undesirable(b: PreferenceBatch, beta: float, undesirable_weight: float) -> torch.Tensor:
    """KTO with undesirable examples only (no positive example at all): z from the rejected log-ratios alone;
    the mean of w_u (1 - sigmoid(beta (z - lr)))."""
    _, lr = b.logratios
    z = kto_reference_point(lr)
    return (undesirable_weight * (1 - torch.sigmoid(beta * (z - lr)))).mean()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register("orpo", beta=0.1)
def _orpo(b: PreferenceBatch, beta: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024; lambda = beta as TRL names it): NTP(c) - beta log sigmoid(log odds(c) - log odds(r)),
    odds = p / (1 - p) of the mean-token probabilities exp(ac), exp(ar); no reference."""
    ac, ar = mean_token_logprob(b.chosen), mean_token_logprob(b.rejected)
    log_odds = (ac - ar) - (log1mexp(ac) - log1mexp(ar))
    return ntp_loss(b.chosen) - beta * F.logsigmoid(log_odds).mean()


@register("cpo", beta=0.1, alpha=1.0)
def _cpo(b: PreferenceBatch, beta: float, alpha: float) -> torch.Tensor:
    """CPO (Xu et al. 2024): -log sigmoid(beta (log p(c) - log p(r))) + alpha NTP(c); no reference."""
    margin = sequence_logprob(b.chosen) - sequence_logprob(b.rejected)
    return -F.logsigmoid(beta * margin).mean() + alpha * ntp_loss(b.chosen)


@register("simpo", beta=2.0, gamma=1.0)
def _simpo(b: PreferenceBatch, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024): -log sigmoid(beta (ac - ar) - gamma), gamma the target margin in the paper's
    units (TRL's simpo_gamma; SimPO's code sets gamma_beta_ratio = gamma / beta); no reference."""
    ac, ar = mean_token_logprob(b.chosen), mean_token_logprob(b.rejected)
    return -F.logsigmoid(beta * (ac - ar) - gamma).mean()


# ---- unlearning (open-unlearning's): forget = the rejected negatives, retain = the chosen random passwords ----
@register("grad_diff", gamma=1.0, alpha=1.0)
def _grad_diff(b: PreferenceBatch, gamma: float, alpha: float) -> torch.Tensor:
    """GradDiff (Liu et al. 2022; open-unlearning): gamma (-NTP(r)) + alpha NTP(c)."""
    return -gamma * ntp_loss(b.rejected) + alpha * ntp_loss(b.chosen)


@register("wga", beta=1.0, gamma=1.0, alpha=1.0)
def _wga(b: PreferenceBatch, beta: float, gamma: float, alpha: float) -> torch.Tensor:
    """WGA (Wang et al. 2025; open-unlearning): gamma * mean over r's tokens of sg(p^beta) log p + alpha NTP(c);
    the weight p^beta carries no gradient."""
    weight = (beta * b.rejected).exp().detach()
    return gamma * (weight * b.rejected).mean() + alpha * ntp_loss(b.chosen)


@register("undial", Needs(logits=("rejected",), ref_logits=("rejected",)), beta=10.0, gamma=1.0, alpha=0.0)
def _undial(b: PreferenceBatch, beta: float, gamma: float, alpha: float) -> torch.Tensor:
    """UNDIAL (Dong et al. 2025; open-unlearning): on r, cross-entropy of the policy's next-token distribution to
    softmax(reference logits - beta onehot(label)), mean over r's tokens; gamma times it + alpha NTP(c)."""
    logits, teacher = b.extra["logits/rejected"], b.extra["ref_logits/rejected"]
    lowered = torch.zeros_like(teacher).scatter_(-1, b.extra["labels/rejected"].unsqueeze(-1), beta)
    target = torch.softmax(teacher - lowered, dim=-1)
    forget = -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    return gamma * forget + alpha * ntp_loss(b.chosen)


#: RMU's direction: uniform [0, 1) entries, seeded once (the same direction for every run of a width).
RMU_DIRECTION_SEED = 0


def rmu_direction(width: int, norm: float, like: torch.Tensor) -> torch.Tensor:
    """RMU's fixed random direction u of norm `norm` [width]: torch.rand as WMDP and open-unlearning draw it
    (uniform entries, normalised), from a generator seeded with RMU_DIRECTION_SEED."""
    u = torch.rand(width, generator=torch.Generator().manual_seed(RMU_DIRECTION_SEED), dtype=torch.float64)
    return (u / u.norm() * norm).to(device=like.device, dtype=like.dtype)


@register(
    "rmu", Needs(hidden=("chosen", "rejected"), ref_hidden=("chosen",)), steering_coeff=2.0, gamma=1.0, alpha=1.0,
    layer=1,
)  # fmt: skip
def _rmu(b: PreferenceBatch, steering_coeff: float, gamma: float, alpha: float, layer: float) -> torch.Tensor:
    """RMU (Li et al. 2024, WMDP; open-unlearning), h the residual stream leaving decoder layer `layer`:
    gamma mean (h(r) - c u)^2 + alpha mean (h(c) - h_ref(c))^2, means over positions and width."""
    forget, retain = b.extra["hidden/rejected"], b.extra["hidden/chosen"]
    u = rmu_direction(forget.shape[-1], steering_coeff, forget)
    return gamma * ((forget - u) ** 2).mean() + alpha * ((retain - b.extra["ref_hidden/chosen"]) ** 2).mean()


def objective_loss(name: str, batch: PreferenceBatch, params: dict[str, float]) -> torch.Tensor:
    """The loss of objective `name` with hyper-parameters `params` (those of DEFAULTS[name]; both checked by
    `negrl.run.validation.objective_settings`)."""
    return OBJECTIVES[name](batch, **params)


def preference_stats(batch: PreferenceBatch, beta: float) -> dict[str, torch.Tensor]:
    """TRL-style rewards (beta x log-ratio to the frozen phase-1 reference) for logging, whatever the objective:
    for a reference-free objective (hinge, simnpo, orpo, cpo, simpo, the unlearning ones) a measurement of how far
    training moved each side, not the objective's own reward (TRL's CPO and ORPO log beta log p instead)."""
    return reward_stats(
        beta * (sequence_logprob(batch.chosen) - batch.ref_chosen),
        beta * (sequence_logprob(batch.rejected) - batch.ref_rejected),
    )
