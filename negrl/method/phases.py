"""The three training phases as LightningModules sharing one backbone: each computes its loss and owns its
trainable set. Evaluation, extraction, logging and checkpoints are Lightning callbacks (negrl.run.callbacks).

Phase 1 (`NTPPhase`): next-token prediction on random passwords.
Phase 2 (`ObjectivePhase`): DPO (or another objective) of random (chosen) over negative (rejected) passwords,
with the second half of the layers and the unembedding frozen.
Phase 3 (`JointPhase`): the objective + NTP on random passwords + NTP on useful negatives under reverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from negrl.core.errors import RunFailed
from negrl.method.evaluation import Evaluator
from negrl.method.objectives import NEEDS, SIDES, PreferenceBatch, ntp_loss, objective_loss, preference_stats
from negrl.method.reference import ReferenceLogprobs
from negrl.method.schedule import warmup_cosine
from negrl.model.backbone import Backbone


@dataclass(frozen=True)
class OptimSettings:
    """AdamW and the per-phase schedule (docs/experiment.md defaults)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    cosine_over: str = "phase"
    fused: bool | str = "auto"
    grad_clip: float = 1.0  # the global gradient-norm clip

    def adamw(self, params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
        """A fresh AdamW over `params`. `fused`: one kernel for all parameters; "auto" fuses on CUDA only (and
        under bf16-mixed, where negrl.run.validation turns it into true). Unfused, it takes PyTorch's multi-tensor
        (foreach) path on every device: on CPU, where PyTorch's default is the per-tensor loop, its updates are
        bit-identical to that loop's (tested) in about half the time; PyTorch's fused CPU kernel is faster still
        but rounds differently (about 1e-7), so an fp32 run takes it only with `fused: true`."""
        fused = params[0].is_cuda if self.fused == "auto" else bool(self.fused)
        return torch.optim.AdamW(
            params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps, fused=fused or None,
            foreach=None if fused else True,
        )  # fmt: skip


class PhaseModule(L.LightningModule):
    """One phase: its loss, its trainable parameters (under a fresh AdamW and the warm-up/cosine schedule), and
    `metrics_row`, the step's losses and learning rate, to which callbacks add their metrics."""

    phase: int = 0
    name: str = ""

    def __init__(self, backbone: Backbone, *, optim: OptimSettings, total_steps: int):
        super().__init__()
        self.backbone = backbone
        self.optim, self.total_steps = optim, total_steps
        self.start_step = 0  # > 0: a resumed run continues the phase after a checkpoint's step
        self.metrics_row: dict[str, torch.Tensor | float] = {}

    def compute_loss(
        self, batch: dict[str, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The phase's loss on a batch and the parts worth logging. `reference`: the batch's reference log-probs
        (chosen, rejected) where the caller has them (stacked seeds); else the phase looks them up."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor] | None = None):
        """`compute_loss`, as the module's call (what `torch.func.functional_call` runs over stacked weights)."""
        return self.compute_loss(batch, reference)

    def apply_trainable(self) -> None:
        """Set which backbone parameters this phase trains (all, unless the phase says otherwise)."""
        self.backbone.set_trainable(True)

    def setup(self, stage: str) -> None:
        self.apply_trainable()  # before Lightning wraps the model (DDP registers the trainable parameters)

    def step_of(self, batch_idx: int) -> int:
        """The 0-based step of the phase that `batch_idx` of this fit is."""
        return self.start_step + batch_idx

    def configure_optimizers(self):
        return self.optimizer_and_schedule(self.backbone.trainable_parameters())

    def optimizer_and_schedule(self, params: list[torch.nn.Parameter]) -> dict:
        """A fresh AdamW over `params` under the phase's warm-up/cosine schedule, stepped every step."""
        opt = self.optim.adamw(params)
        factor = warmup_cosine(self.optim.warmup_steps, self.total_steps, self.optim.cosine_over)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": LambdaLR(opt, factor), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient norm (`optim.grad_clip`) directly: same as Lightning's "norm" clipping, which
        refuses fused AdamW under bf16-mixed although no loss scaling is involved there."""
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.backbone.trainable_parameters(), gradient_clip_val)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise RunFailed(self.non_finite_message(loss, parts, self.step_of(batch_idx), str(self.trainer.precision)))
        row = self.step_row(loss, parts, self.trainer.optimizers[0].param_groups[0]["lr"])
        # Under DDP each process saw 1/N of the batch: log the mean over processes (= the global batch's).
        self.metrics_row = {k: self.trainer.strategy.reduce(v, reduce_op="mean") for k, v in row.items()}
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    @staticmethod
    def step_row(loss: torch.Tensor, parts: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
        """The step's metrics row before the callbacks add theirs: the loss, its parts, the learning rate."""
        return {"train/loss": loss.detach(), **{f"train/{k}": v for k, v in parts.items()}, "lr": torch.tensor(lr)}

    def non_finite_message(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], step: int, precision: str) -> str:
        """Which part of the loss went non-finite, and a remedy that fits this run's precision."""
        bad = [f"{k}={v.item():g}" for k, v in parts.items() if v.numel() == 1 and not torch.isfinite(v)]
        where = f" ({', '.join(bad)})" if bad else ""
        hint = f"lower optim.lr (now {self.optim.lr:g})"
        if precision != "32-true":
            hint += " or try trainer.precision=32-true"
        return f"non-finite loss {loss.item()} in {self.name} at step {step}{where}; {hint}"

    def evaluate(self, evaluator: Evaluator) -> dict[str, float]:
        """The evaluation sets' log-likelihoods under the current weights (the Evaluation callback's call)."""
        return evaluator.evaluate(self.backbone)

    @property
    def attack_reference(self) -> Backbone | None:
        """The phase-1 model the attacks compare this phase's model with (phases 2 and 3; None in phase 1)."""
        return None


class NTPPhase(PhaseModule):
    """Phase 1: NTP on fresh random passwords with the regular prefix."""

    phase, name = 1, "phase 1: NTP"

    def compute_loss(self, batch, reference=None):
        loss = ntp_loss(self.backbone.token_logprobs(batch["random"]))
        return loss, {"ntp_random": loss.detach()}


class ObjectivePhase(PhaseModule):
    """Phase 2: the objective (DPO by default) against the frozen phase-1 reference; with `freeze`, the second
    half of the layers and the unembedding get no updates."""

    phase = 2

    def __init__(
        self,
        backbone: Backbone,
        reference: ReferenceLogprobs,
        *,
        objective: tuple[str, dict[str, float]],
        beta: float,
        freeze: bool = False,
        **kwargs,
    ):
        """`objective`: (name, hyper-parameters) from the registry of `negrl.method.objectives`; `beta` scales the
        logged TRL-style rewards, whatever the objective."""
        super().__init__(backbone, **kwargs)
        self.objective, self.objective_params = objective
        self.name = f"phase {self.phase}: {self.objective}" if self.phase == 2 else self.name
        self.reference_logprobs = reference
        self.reference = reference.model  # a submodule, so Lightning moves it with the policy
        self.beta, self.freeze = beta, freeze
        self.needs = NEEDS[self.objective]  # what the objective reads beyond label log-probs (mostly nothing)
        self.layer = int(self.objective_params["layer"]) if self.needs.layer else None

    def apply_trainable(self) -> None:
        self.backbone.set_trainable(True, freeze_second_half=self.freeze)

    def _forward(self, batch: dict[str, torch.Tensor], reference=None, extra: tuple[str, ...] = ()):
        """One forward pass over chosen, rejected and `extra` sequences; the objective's loss, reward
        stats, and the extra sequences' per-token log-probs. `reference`: as in `compute_loss`. Logits and
        hidden states are computed only where the objective's `Needs` ask for them."""
        chosen, rejected = batch["chosen"], batch["rejected"]
        parts = [chosen, rejected, *(batch[k] for k in extra)]
        sizes = [len(p) for p in parts]
        seen: dict[str, torch.Tensor] = {}
        if self.needs:
            out = self.backbone.token_outputs(torch.cat(parts), logits=bool(self.needs.logits), layer=self.layer)
            logprobs = out["logprobs"].split(sizes)
            seen = self._policy_outputs(batch, out, sizes)
            seen.update(self.reference_logprobs.outputs(batch, self.needs, self.layer))
        else:
            logprobs = self.backbone.token_logprobs(torch.cat(parts)).split(sizes)
        reference = self.reference_logprobs(batch) if reference is None else reference
        pref = PreferenceBatch(logprobs[0], logprobs[1], *reference, extra=seen)
        loss = objective_loss(self.objective, pref, self.objective_params)
        return loss, preference_stats(pref, self.beta), dict(zip(extra, logprobs[2:]))

    def _policy_outputs(self, batch: dict[str, torch.Tensor], out: dict, sizes: list[int]) -> dict[str, torch.Tensor]:
        """The policy's logits (with the labels) and hidden states of the sides the objective asks for."""
        seen = {}
        for kind, sides in (("logits", self.needs.logits), ("hidden", self.needs.hidden)):
            values = out[kind].split(sizes) if sides else ()
            for side in sides:
                seen[f"{kind}/{side}"] = values[SIDES.index(side)]
                if kind == "logits":
                    seen[f"labels/{side}"] = batch[side][:, 1:]
        return seen

    def compute_loss(self, batch, reference=None):
        loss, stats, _ = self._forward(batch, reference)
        return loss, {self.objective: loss.detach(), **stats}

    @property
    def attack_reference(self) -> Backbone | None:
        """The frozen phase-1 model (the logit-difference and reference-membership attacks)."""
        return self.reference


class JointPhase(ObjectivePhase):
    """Phase 3, all trainable: w_objective * objective + w_random * NTP(random, regular)
    + w_useful * NTP(useful, reverse)."""

    phase, name = 3, "phase 3: joint"

    def __init__(self, backbone, reference, *, weights: dict[str, float], **kwargs):
        super().__init__(backbone, reference, freeze=False, **kwargs)
        self.weights = weights

    def compute_loss(self, batch, reference=None):
        objective, stats, logprobs = self._forward(batch, reference, extra=("random", "useful"))
        ntp_random, ntp_useful = ntp_loss(logprobs["random"]), ntp_loss(logprobs["useful"])
        w = self.weights
        loss = w["objective"] * objective + w["random"] * ntp_random + w["useful"] * ntp_useful
        parts = {self.objective: objective, "ntp_random": ntp_random, "ntp_useful": ntp_useful}
        return loss, {**{k: v.detach() for k, v in parts.items()}, **stats}
