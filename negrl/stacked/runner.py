"""Seeds of one configuration trained together, through one set of kernels.

K copies of the weights are stacked along a leading dimension (`WeightStack`, the layout of
`torch.func.stack_module_state`) and each phase's own loss code runs over them under `torch.func.vmap` of
`functional_call`, for any Hugging Face model: one forward and one backward per step for all seeds. Each seed keeps
everything of its own: its passwords and batch order, reference cache, optimizer state (AdamW is elementwise, so one
AdamW over the stack is K independent ones), gradient-norm clip (per seed, never across seeds), evaluation,
extraction attacks, checkpoints, run directory, metrics.csv and W&B run (each through its own `PhaseRunner`, with
the single run's callbacks). A seed whose loss goes non-finite is recorded `failed`; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.func import functional_call, vmap
from torch.utils.data import DataLoader, Dataset

from negrl.core.errors import NegrlError, RunFailed
from negrl.method.data import PhaseData
from negrl.method.evaluation import Evaluator
from negrl.method.objectives import NEEDS, sequence_logprob
from negrl.method.phases import PhaseModule
from negrl.method.reference import ReferenceLogprobs
from negrl.model.backbone import Backbone, fp32_inference
from negrl.run.progress import progress_callbacks
from negrl.run.runner import PhaseRunner, disk_full, make_trainer
from negrl.stacked.weight_stack import SeedOptimizer, SeedWeights, WeightStack

StackHook = Callable[[int, "WeightStack"], None]


class StackedPhase(L.LightningModule):
    """One phase for K seeds: the phase's own `compute_loss` under `vmap` over the stacked weights, the reference's
    per-seed caches filled by one batched forward, a per-seed gradient-norm clip."""

    def __init__(self, phase: PhaseModule, stack: WeightStack, group: StackedRunner):
        super().__init__()
        self.phase_module, self.stack = phase, stack
        self.group = group  # a plain attribute: the runners' bookkeeping, not a module
        # The stacked reference (phases 2-3) as a submodule: it moves with the module to the phase's device, as the
        # reference's template does (a plain attribute stayed on the CPU while the tokens went to the GPU).
        self.ref_stack = group.ref_stack if phase.phase > 1 else None
        self.rows: list[dict[str, torch.Tensor]] = [{} for _ in range(stack.size)]
        self.eval_logprobs: torch.Tensor | None = None

    @property
    def start_step(self) -> int:
        return self.phase_module.start_step

    @property
    def total_steps(self) -> int:
        return self.phase_module.total_steps

    def setup(self, stage: str) -> None:
        self.phase_module.apply_trainable()
        self.stack.sync_trainable()

    def configure_optimizers(self):
        return self.phase_module.optimizer_and_schedule(self.stack.trainable())

    def on_before_optimizer_step(self, optimizer) -> None:
        """A failed seed's gradients are set to zero (its weights are no longer read): written, not multiplied, as
        they are NaN (NaN x 0 is NaN)."""
        if self.group.failed:
            failed = ~self.group.alive_mask(self.stack.stacked[0].device)
            for g in (t.grad for t in self.stack.trainable() if t.grad is not None):
                g.masked_fill_(failed.view(-1, *[1] * (g.dim() - 1)), 0.0)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Each seed's global gradient norm clipped to `gradient_clip_val` on its own (as `clip_grad_norm_` does
        for one run)."""
        if gradient_clip_val:
            grads = [t.grad for t in self.stack.trainable() if t.grad is not None]
            norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
            self._scale_grads((gradient_clip_val / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0))

    def _scale_grads(self, coef: torch.Tensor) -> None:
        """Multiply seed k's gradients by coef[k]."""
        for g in (t.grad for t in self.stack.trainable() if t.grad is not None):
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        reference = self.group.reference_values(batch) if self.phase_module.phase > 1 else None
        weights = self.stack.weights("backbone.")

        def one_seed(w, b, r):
            return functional_call(self.phase_module, w, (b, r))

        losses, parts = vmap(one_seed, in_dims=(0, 0, None if reference is None else 0))(weights, batch, reference)
        step, lr = self.phase_module.step_of(batch_idx), self.trainer.optimizers[0].param_groups[0]["lr"]
        finite = torch.isfinite(losses).tolist()
        for k in self.group.alive():
            seed_parts = {name: v[k] for name, v in parts.items()}
            if not finite[k]:
                message = self.phase_module.non_finite_message(losses[k], seed_parts, step, str(self.trainer.precision))
                self.group.fail(k, RunFailed(message))
                continue
            self.rows[k] = PhaseModule.step_row(losses[k], seed_parts, lr)
        alive = self.group.alive_mask(losses.device)
        if not alive.any():
            raise RunFailed(f"every seed of the stack failed in {self.phase_module.name} at step {step}")
        self.log("loss", losses[alive].mean().detach(), prog_bar=True, logger=False)
        return torch.where(alive, losses, 0.0).sum()  # seeds are independent: each one's gradient is its own

    @torch.no_grad()
    def evaluate_all(self, evaluators: list[Evaluator]) -> None:
        """Every seed's evaluation sets through one batched forward (fp32, eval mode): kept for the seeds' views."""
        tokens = torch.stack([e.tokens for e in evaluators]).to(self.stack.stacked[0].device)
        with fp32_inference(self.stack.template):
            self.eval_logprobs = self.stack.logprobs(tokens)


class SeedPhase:
    """Seed `k`'s view of a stacked phase: what the single run's callbacks read from their `pl_module`."""

    def __init__(self, stacked: StackedPhase, k: int):
        self.stacked, self.k = stacked, k
        module = stacked.phase_module
        self.phase, self.name, self.total_steps = module.phase, module.name, module.total_steps
        self.step_of = module.step_of

    @property
    def metrics_row(self) -> dict[str, torch.Tensor | float]:
        return self.stacked.rows[self.k]

    def log(self, *args: Any, **kwargs: Any) -> None:
        """Progress-bar values: the stack shows one bar for all seeds."""

    def evaluate(self, evaluator: Evaluator) -> dict[str, float]:
        assert self.stacked.eval_logprobs is not None
        return evaluator.record(self.stacked.eval_logprobs[self.k])

    @property
    def backbone(self) -> Backbone:
        return self.stacked.stack.materialize(self.k)

    @property
    def attack_reference(self) -> Backbone | None:
        group = self.stacked.group
        return None if self.phase == 1 or group.ref_stack is None else group.ref_stack.materialize(self.k)


class SeedTrainer:
    """Seed `k`'s view of the stack's Trainer: its optimizer state; the schedule is the same for every seed."""

    def __init__(self, trainer: L.Trainer, k: int):
        self.optimizers = [SeedOptimizer(trainer.optimizers[0], k)]
        self.lr_scheduler_configs = trainer.lr_scheduler_configs


class SeedCallbacks(Callback):
    """Each live seed's own callbacks (evaluation, extraction, logging, checkpoints) with its views; evaluation due
    at a step runs for all seeds at once first."""

    def __init__(self, per_seed: list[list[Callback]], group: StackedRunner):
        self.per_seed, self.group = per_seed, group

    def _each(self, hook: str, trainer: L.Trainer, module: StackedPhase, *args: Any) -> None:
        for k in self.group.alive():
            views = SeedTrainer(trainer, k), SeedPhase(module, k)
            for cb in self.per_seed[k]:
                getattr(cb, hook)(*views, *args)

    def on_train_start(self, trainer, pl_module) -> None:
        self._each("on_train_start", trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = pl_module.phase_module.step_of(batch_idx)
        alive = self.group.alive()
        if alive and self.group.runners[alive[0]].evaluator.due(step):
            pl_module.evaluate_all([r.evaluator for r in self.group.runners])
        self._each("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        self._each("on_train_end", trainer, pl_module)


class StackedBatches(Dataset):
    """Item i: batch i of every seed's loader, stacked along a leading seed dimension."""

    def __init__(self, datasets: list[Dataset]):
        self.datasets = datasets

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batches = [d[i] for d in self.datasets]
        return {key: torch.stack([b[key] for b in batches]) for key in batches[0]}


class StackedPhaseData(L.LightningDataModule):
    """The seeds' `PhaseData` of one phase as one LightningDataModule: each step, every seed's batch stacked."""

    def __init__(self, seeds: list[PhaseData]):
        super().__init__()
        self.seeds = seeds

    def setup(self, stage: str) -> None:
        self.batches = StackedBatches([d.dataset() for d in self.seeds])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, shuffle=False)

    def state_dict(self) -> dict[str, int]:
        """Where the seeds' streams stand (all at one step): the phase, the next step and the number of seeds."""
        return {**self.seeds[0].position(self.trainer), "seeds": len(self.seeds)}


class StackFailed(RunFailed):
    """An interrupted stack (Ctrl-C, a full disk): each live seed's one-line reason, in order."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def check_stackable_objective(name: str) -> None:
    """Stacked seeds give each seed's objective the policy's and the reference's label log-probs only: an objective
    that reads logits or hidden states (`Needs`: undial, rmu) runs one seed at a time (checked with the other
    conditions of a stack, `negrl.pipeline.check_stackable`, before any job of a stacked sweep starts)."""
    if NEEDS[name]:
        raise NegrlError(
            f"objective={name} reads the models' logits or hidden states, which stacked seeds do not compute; "
            "run it without hydra/launcher=stacked"
        )


def check_same_position(states: list[dict[str, Any] | None], dirs: list[Path]) -> None:
    """Stacked seeds train in step: their checkpoints (None: a fresh seed) must stand at the same phase and step."""
    at = [None if st is None else (st["phase"], st["step"], st["phase_done"]) for st in states]
    if len(set(at)) > 1:
        where = ", ".join(f"{d} at {a or 'the start'}" for d, a in zip(dirs, at))
        raise NegrlError(
            f"resume: the seeds' checkpoints stand at different steps ({where}); resume them one by one "
            "(without hydra/launcher=stacked)"
        )


class StackedRunner:
    """The seeds' `PhaseRunner`s driven as one: the same calls as a `PhaseRunner` (`fit`, `attach_reference`,
    `recording_failure`, `finish`), one Trainer per phase for all seeds. `backbone`: the template the phases are
    built on. `on_phase_end(phase, stack)` is called after each phase."""

    def __init__(self, runners: list[PhaseRunner], backbones: list[Backbone], on_phase_end: StackHook | None = None):
        """`runners`: the seeds' runners, resumed from checkpoints at one position (`check_same_position`)."""
        self.runners, self.on_phase_end = runners, on_phase_end
        self.stack = WeightStack.of(backbones)
        self.backbone = self.stack.template
        self.ref_stack: WeightStack | None = None
        self.references: list[ReferenceLogprobs] = []
        self.failed: dict[int, str] = {}
        self.completed: set[int] = set()  # seeds whose results are recorded (`finish`)
        for k, r in enumerate(runners):
            r.weights, r.backbone = SeedWeights(self.stack, k), self.backbone  # one copy of the weights: the stack's
        self.s = runners[0].s

    def alive(self) -> list[int]:
        return [k for k in range(len(self.runners)) if k not in self.failed]

    def alive_mask(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([k not in self.failed for k in range(len(self.runners))], device=device)

    def fail(self, k: int, err: BaseException) -> None:
        """Seed `k` stops: its results.json says `failed` with the reason; the other seeds go on."""
        self.failed[k] = self.runners[k].record_failure(err)

    def fit(self, module: PhaseModule) -> None:
        """Train one phase for every live seed (skipped where a resumed group has finished it)."""
        p, alive = module.phase, self.alive()
        if not alive or self.runners[alive[0]].finished(p):
            return
        inside = {k: self.runners[k].start_phase(module) for k in alive}
        stacked = StackedPhase(module, self.stack, self)
        per_seed = [[] for _ in self.runners]
        for k in alive:
            per_seed[k] = self.runners[k].callbacks(SeedPhase(stacked, k), inside[k], progress=False)
        show = self.s.trainer.get("enable_progress_bar", True)
        callbacks = [SeedCallbacks(per_seed, self), *progress_callbacks(f"{module.name} ({len(alive)} seeds)", show)]
        max_steps = self.s.steps[p] - module.start_step
        trainer = make_trainer(self.s.trainer, self.s.optim.grad_clip, max_steps, callbacks, self.runners[0].owner.path)
        data = StackedPhaseData([r.data.for_phase(p, start=module.start_step) for r in self.runners])
        trainer.fit(stacked, datamodule=data)
        for k in self.alive():
            self.runners[k].end_phase(p)
        if self.on_phase_end is not None:
            self.on_phase_end(p, self.stack)

    def attach_reference(self, reference: ReferenceLogprobs) -> ReferenceLogprobs:
        """Each seed's reference: its frozen phase-1 weights (a stacked copy; a resumed seed's restored) and cache.
        Returns `reference`, whose model is the stacked reference's template."""
        self.ref_stack = self.stack.frozen_copy(reference.model)
        self.references = [
            r.attach_reference(reference.for_model(SeedWeights(self.ref_stack, k))) for k, r in enumerate(self.runners)
        ]
        return reference

    @torch.no_grad()
    def reference_values(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each seed's reference log-probs (chosen [K, B], rejected [K, B]); the sequences its cache lacks go
        through one batched forward of the stacked reference (padded to the longest seed's list)."""
        seeds = [{key: v[k] for key, v in batch.items()} for k in range(len(self.runners))]
        todo = [ref.pending(b) for ref, b in zip(self.references, seeds)]
        n = max(len(t.tokens) for t in todo)
        if n:
            pad = todo[0].tokens.new_zeros((n, batch["chosen"].shape[-1]))
            tokens = torch.stack([torch.cat([t.tokens, pad[len(t.tokens) :]]) for t in todo])
            values = sequence_logprob(self.ref_stack.logprobs(tokens))
            for ref, t, v in zip(self.references, todo, values):
                if len(t.tokens):
                    ref.store(t, v[: len(t.tokens)])
        looked_up = [ref.lookup(b, t) for ref, b, t in zip(self.references, seeds, todo)]
        return torch.stack([c for c, _ in looked_up]), torch.stack([r for _, r in looked_up])

    @contextmanager
    def recording_failure(self) -> Iterator[None]:
        """A stack that stops early records every live seed `failed` with the reason."""
        try:
            yield
        except BaseException as err:
            alive = [k for k in self.alive() if k not in self.completed]
            for k in alive:
                self.fail(k, err)
            if isinstance(err, (KeyboardInterrupt, SystemExit)) or disk_full(err):  # as a single run: one line each
                raise StackFailed([self.failed[k] for k in alive]) from None
            raise

    def finish(self) -> list[dict[str, Any] | RunFailed]:
        """Each seed's results (as a separate run's `finish`), or the failure that stopped it. A seed recorded
        complete is no longer live: a stop while a later seed finishes leaves it complete."""
        out: list[dict[str, Any] | RunFailed] = []
        for k, r in enumerate(self.runners):
            out.append(RunFailed(self.failed[k]) if k in self.failed else r.finish())
            self.completed.add(k)
        return out
