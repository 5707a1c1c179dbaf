"""The three training phases as LightningModules sharing one backbone, evaluation and logging.

Phase 1 (`SFTPhase`): next-token prediction on random passwords.
Phase 2 (`DPOPhase`): DPO of random (chosen) over negative (rejected) passwords, with the freeze.
Phase 3 (`JointPhase`): DPO + NTP on random passwords + NTP on useful negatives under reverse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from negrl.backbone import PythiaBackbone
from negrl.checkpoint import Checkpointer
from negrl.errors import RunFailed
from negrl.evaluation import Evaluator
from negrl.objectives import PreferenceBatch, ntp_loss, objective_loss, preference_stats
from negrl.reference import ReferenceLogprobs
from negrl.schedule import warmup_cosine
from negrl.tracking import RunLogger


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

    def adamw(self, params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
        """A fresh AdamW over `params`. `fused`: one kernel for all parameters; "auto" fuses on CUDA
        only (PyTorch's fused CPU AdamW measured slower here than its default foreach one)."""
        fused = params[0].is_cuda if self.fused == "auto" else bool(self.fused)
        return torch.optim.AdamW(
            params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps, fused=fused or None
        )


class PhaseModule(L.LightningModule):
    """One phase: a fresh AdamW over the trainable parameters, the warm-up/cosine schedule,
    evaluation after every `evaluator.every`-th step, and one metrics row per step."""

    phase: int = 0
    name: str = ""

    def __init__(
        self,
        backbone: PythiaBackbone,
        *,
        optim: OptimSettings,
        total_steps: int,
        evaluator: Evaluator,
        run_logger: RunLogger,
        checkpointer: Checkpointer | None = None,
        resume: dict[str, Any] | None = None,
    ):
        """`resume`: a checkpoint taken inside this phase; training continues after its step."""
        super().__init__()
        self.backbone = backbone
        self.optim, self.total_steps = optim, total_steps
        self.evaluator, self.run_logger, self.checkpointer = evaluator, run_logger, checkpointer
        self.resume = resume
        self.start_step = 0 if resume is None else resume["step"] + 1
        self._row: dict[str, torch.Tensor] = {}
        self._started = time.perf_counter() - (0.0 if resume is None else resume["elapsed"])

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The phase's loss on a batch and the parts worth logging."""
        raise NotImplementedError

    def configure_optimizers(self):
        opt = self.optim.adamw(self.backbone.trainable_parameters())
        factor = warmup_cosine(self.optim.warmup_steps, self.total_steps, self.optim.cosine_over)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": LambdaLR(opt, factor), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient norm (`optim.grad_clip`) directly: same as Lightning's "norm" clipping, which
        refuses fused AdamW under bf16-mixed although no loss scaling is involved there."""
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.backbone.trainable_parameters(), gradient_clip_val)

    def on_train_start(self) -> None:
        """On resume: the optimizer and schedule as they were after the checkpoint's step."""
        if self.resume is not None:
            self.trainer.optimizers[0].load_state_dict(self.resume["optimizer"])
            # Lightning steps the schedule before on_train_batch_end, so the saved one is already at the next step.
            self.trainer.lr_scheduler_configs[0].scheduler.load_state_dict(self.resume["scheduler"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.compute_loss(batch)
        if not torch.isfinite(loss):
            raise RunFailed(self.non_finite_message(loss, parts, self.start_step + batch_idx))
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        row = {"train/loss": loss.detach(), **{f"train/{k}": v for k, v in parts.items()}}
        # Under DDP each process saw 1/N of the batch: log the mean over processes (= the global batch's).
        row = {k: self.trainer.strategy.reduce(v, reduce_op="mean") for k, v in row.items()}
        self._row = {**row, "lr": torch.tensor(lr)}
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def non_finite_message(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], step: int) -> str:
        """Which part of the loss went non-finite, and a remedy that fits this run's precision."""
        bad = [f"{k}={v.item():g}" for k, v in parts.items() if v.numel() == 1 and not torch.isfinite(v)]
        where = f" ({', '.join(bad)})" if bad else ""
        hint = f"lower optim.lr (now {self.optim.lr:g})"
        if str(self.trainer.precision) != "32-true":
            hint += " or try trainer.precision=32-true"
        return f"non-finite loss {loss.item()} in {self.name} at step {step}{where}; {hint}"

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Right after the update of a step: evaluate if due, log the row, checkpoint if due."""
        step = self.start_step + batch_idx
        row = {k: float(v) for k, v in self._row.items()}
        if self.evaluator.due(step):
            row.update(self.evaluator.evaluate(self.backbone))
            self.log("heldout_ll", row["eval/heldout_ll"], prog_bar=True, logger=False)
        if step == self.total_steps - 1:  # the phase's final model: extraction attacks, on its device
            row.update(self.evaluator.extract(self.backbone, self.attack_reference))
        self.run_logger.log(row, step)
        if self.checkpointer is not None:
            self.checkpointer.on_step(self, step)

    @property
    def attack_reference(self) -> PythiaBackbone | None:
        """The reference of the logit-difference attack after this phase (only phase 2 has one)."""
        return None

    @property
    def elapsed(self) -> float:
        """Seconds spent in this phase, including before a resume."""
        return time.perf_counter() - self._started


class SFTPhase(PhaseModule):
    """Phase 1: NTP on fresh random passwords with the regular prefix."""

    phase, name = 1, "phase 1: NTP"

    def compute_loss(self, batch):
        loss = ntp_loss(self.backbone.token_logprobs(batch["random"]))
        return loss, {"ntp_random": loss.detach()}


class DPOPhase(PhaseModule):
    """Phase 2: DPO (or `objective`) against the frozen phase-1 reference; the pipeline applies the freeze."""

    phase, name = 2, "phase 2: dpo"

    def __init__(
        self,
        backbone: PythiaBackbone,
        reference: ReferenceLogprobs,
        *,
        beta: float,
        objective: tuple[str, dict[str, float]] = ("dpo", {"beta": 0.1}),
        **kwargs,
    ):
        """`objective`: (name, hyper-parameters) from the registry of `negrl.objectives` (DPO by default);
        `beta` scales the logged TRL-style rewards, whatever the objective."""
        super().__init__(backbone, **kwargs)
        if self.phase == 2:
            self.name = f"phase 2: {objective[0]}"  # the objective that runs, DPO or another
        self.reference_logprobs = reference
        self.reference = reference.reference  # a submodule, so Lightning moves it with the policy
        self.beta = beta
        self.objective, self.objective_params = objective

    def _forward(self, batch: dict[str, torch.Tensor], extra: tuple[str, ...] = ()):
        """One forward pass over chosen, rejected and `extra` sequences; the objective's loss, reward
        stats, and the extra sequences' per-token log-probs."""
        chosen, rejected = batch["chosen"], batch["rejected"]
        parts = [chosen, rejected, *(batch[k] for k in extra)]
        logprobs = self.backbone.token_logprobs(torch.cat(parts)).split([len(p) for p in parts])
        pref = PreferenceBatch(logprobs[0], logprobs[1], *self.reference_logprobs(batch))
        loss = objective_loss(self.objective, pref, self.objective_params)
        return loss, preference_stats(pref, self.beta), dict(zip(extra, logprobs[2:]))

    def compute_loss(self, batch):
        loss, stats, _ = self._forward(batch)
        return loss, {self.objective: loss.detach(), **stats}

    @property
    def attack_reference(self) -> PythiaBackbone | None:
        """Phase 2's model against its reference (the phase-1 model): the paper's logit-difference attack."""
        return self.reference if self.phase == 2 else None


class JointPhase(DPOPhase):
    """Phase 3, all trainable: w_dpo * DPO + w_random * NTP(random, regular) + w_useful * NTP(useful, reverse)."""

    phase, name = 3, "phase 3: joint"

    def __init__(self, backbone, reference, *, weights: dict[str, float], **kwargs):
        super().__init__(backbone, reference, **kwargs)
        self.weights = weights

    def compute_loss(self, batch):
        dpo, stats, logprobs = self._forward(batch, extra=("random", "useful"))
        ntp_random, ntp_useful = ntp_loss(logprobs["random"]), ntp_loss(logprobs["useful"])
        w = self.weights
        loss = w["dpo"] * dpo + w["random"] * ntp_random + w["useful"] * ntp_useful
        parts = {self.objective: dpo, "ntp_random": ntp_random, "ntp_useful": ntp_useful}
        return loss, {**{k: v.detach() for k, v in parts.items()}, **stats}
