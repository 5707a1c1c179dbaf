"""`run(cfg, run_dir)`: the whole experiment of docs/experiment.md, top to bottom."""

from __future__ import annotations

import errno
import logging
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from negrl import checkpoint
from negrl.backbone import PythiaBackbone
from negrl.data import PHASES, PasswordDataModule
from negrl.distributed import is_rank_zero, sum_over_ranks
from negrl.errors import RunFailed
from negrl.evaluation import Evaluator
from negrl.extraction import Extraction
from negrl.loading import load_model
from negrl.phases import DPOPhase, JointPhase, PhaseModule, SFTPhase
from negrl.progress import PhaseProgressBar, progress_callbacks
from negrl.reference import ReferenceLogprobs
from negrl.results import summarize, verdict
from negrl.rundir import RunDir
from negrl.tracking import RunLogger, build_loggers
from negrl.validation import validate, warn_degenerate

PhaseEndHook = Callable[[int, PythiaBackbone], None]


def run(
    cfg: DictConfig, run_dir: Path, on_phase_end: PhaseEndHook | None = None, search: str | None = None
) -> dict[str, Any]:
    """Run the three phases; returns the results, also in `run_dir/results.json`.

    Bad input raises `NegrlError` before anything is written. Once training starts,
    `results.json` says `running`, then `complete` or `failed` (with the reason).
    `on_phase_end(phase, backbone)` is called after each phase (e.g. to save or inspect weights).
    `search`: where `resume=true` looks for the run to continue (a glob; default: beside `run_dir`).
    """
    settings = validate(cfg, warn=False)
    c = settings.config
    why = None
    if c["resume"]:
        run_dir, why = checkpoint.resume_dir(c["resume"], search or str(Path(run_dir).parent / "*"), c)
    owner = RunDir(run_dir)
    writer = is_rank_zero()  # under DDP only the first process writes, logs and checkpoints
    if writer:
        owner.check_usable()
        owner.lock()
    try:
        return _run(c, settings, owner, why, writer, on_phase_end)
    finally:
        owner.unlock()


def _run(c, settings, owner, why, writer, on_phase_end):
    run_dir = owner.path
    sizes, optim, weights = settings.sizes, settings.optim, settings.weights
    objective, n_candidates = settings.objective, settings.candidates
    saved = checkpoint.load(run_dir) if c["resume"] else None
    quiet_lightning()
    L.seed_everything(c["seed"], workers=True, verbose=False)

    # The password vocabulary, the backbone and every password of the run, from one seed.
    backbone, vocab = load_model(c["model"], c["tokens"], c["seed"])
    backbone.set_compute(**c["compute"])
    data = PasswordDataModule(vocab, sizes, c["holdout_frac"], c["prefix"], c["seed"])
    data.setup()
    warn_degenerate(c, sizes)  # after the last check that can refuse the run

    steps = {p: sizes.steps(p) for p in PHASES}
    offsets = {p: sum(steps[q] for q in PHASES if q < p) for p in PHASES}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    identity = {"dir": str(run_dir), "seed": c["seed"], "model": c["model"]["name"], "started": started}
    resume_step = None if saved is None else offsets[saved["phase"]] + saved["step"]
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(c), run_dir / "config.yaml")
        owner.write_results({"status": "running", "run": identity})
    wandb_id = saved and saved["wandb_id"]
    run_logger = RunLogger(build_loggers(run_dir, c["wandb"], run_dir.name, resume_step, wandb_id) if writer else [])
    run_logger.log_config(c)
    evaluator = Evaluator(c["eval"]["every"], Extraction(vocab.letter_ids) if n_candidates else None)
    ckpt = checkpoint.Checkpointer(run_dir, c["checkpoint"]["every"], c, backbone, evaluator, write=writer)
    ckpt.wandb_id, ckpt.run_logger = run_logger.wandb_id, run_logger
    common = dict(optim=optim, evaluator=evaluator, run_logger=run_logger, checkpointer=ckpt)
    negative = dict(beta=c["dpo"]["beta"], objective=objective)  # phases 2-3: DPO or another objective

    # Where to start: phase 1 step 0, or right after the checkpoint of a resumed run.
    first, inside = 1, None
    if saved is not None:
        print(f"negrl: resuming {run_dir} after phase {saved['phase']} step {saved['step']} ({why})")
        backbone.load_state_dict(saved["backbone"])
        checkpoint.set_rng_states(saved["rng"])
        ckpt.summaries, ckpt.wall = saved["summaries"], saved["wall"]
        ckpt.extraction = saved.get("extraction", {})
        ckpt.last_saved = (saved["phase"], saved["step"])
        first = saved["phase"] + 1 if saved["phase_done"] else saved["phase"]
        inside = None if saved["phase_done"] else saved

    def fit(module: PhaseModule) -> None:
        p = module.phase
        evaluator.start_phase(data.eval_sets(p), data.candidates(p, n_candidates) if n_candidates else None)
        if module.resume is not None:
            evaluator.load_state_dict(module.resume["evaluator"])
        run_logger.start_phase(p, offset=offsets[p])
        trainer = make_trainer(c, steps[p] - module.start_step, module.name, run_dir)
        trainer.fit(module, train_dataloaders=data.for_phase(p, start=module.start_step))
        ckpt.wall[p], ckpt.summaries[p] = module.elapsed, evaluator.summary()
        if evaluator.extracted is not None:
            ckpt.extraction[p] = evaluator.extracted
        run_logger.flush()
        ckpt.save(p, steps[p] - 1, phase_done=True)
        if on_phase_end is not None:
            on_phase_end(p, backbone)

    def resume_in(p: int) -> dict[str, Any] | None:
        return inside if inside is not None and inside["phase"] == p else None

    try:
        # Phase 1: next-token prediction on random passwords (regular prefix).
        if first <= 1:
            backbone.set_trainable(True)
            fit(SFTPhase(backbone, total_steps=steps[1], resume=resume_in(1), **common))
        # The DPO reference: a frozen copy of the model at the end of phase 1 (log-probs cached).
        reference = ckpt.reference = ReferenceLogprobs(
            backbone.frozen_copy(), sizes.dpo_size, sizes.n_negatives, enabled=c["dpo"]["reference_cache"]
        )
        if saved is not None and saved["reference"] is not None:
            reference.reference.load_state_dict(saved["reference"]["model"])
            reference.load_state_dict(saved["reference"]["cache"])
        # Phase 2: DPO (or `objective`), random over negative passwords; second half and unembedding frozen.
        if first <= 2:
            backbone.set_trainable(True, freeze_second_half=c["freeze"])
            fit(DPOPhase(backbone, reference, **negative, total_steps=steps[2], resume=resume_in(2), **common))
        # Phase 3: DPO + NTP(random, regular) + NTP(useful negatives, reverse), all trainable.
        if first <= 3:
            backbone.set_trainable(True)
            fit(
                JointPhase(
                    backbone, reference, **negative, weights=weights,
                    total_steps=steps[3], resume=resume_in(3), **common,
                )
            )  # fmt: skip
    except BaseException as err:
        reason = failure_reason(err, run_dir, ckpt.last_saved)
        if writer:
            try:
                owner.write_results({"status": "failed", "reason": reason, "run": identity})
                run_logger.finish("failed")
            except OSError as again:  # e.g. the disk is still full: the reason is printed, the checkpoint stays
                reason += f" (results.json could not be updated: {again.strerror})"
        if isinstance(err, (KeyboardInterrupt, SystemExit)) or _disk_full(err):
            raise RunFailed(reason) from None
        raise

    results = summarize(ckpt.summaries, ckpt.wall, steps, vocab.n_letters, ckpt.extraction)
    results["run"] = identity
    results["reference"] = {"cache": reference.enabled, "sequences_computed": sum_over_ranks(reference.computed)}
    wandb_dir = run_logger.wandb_dir
    run_logger.finish("success", {"metric": results["metric"], "delta": results["delta"]})
    if writer:
        owner.write_results(results)
    results["verdict"] = verdict(results, run_dir, wandb_dir)
    return results


def failure_reason(err: BaseException, run_dir: Path, last_saved: tuple[int, int] | None) -> str:
    """One line for results.json and the terminal: what stopped the run, and how to continue it."""
    kept = (
        "no checkpoint yet"
        if last_saved is None
        else f"the checkpoint after phase {last_saved[0]} step {last_saved[1]}"
    )
    again = f"continue with the same overrides and resume={run_dir} ({kept})"
    if isinstance(err, (KeyboardInterrupt, SystemExit)):  # Lightning turns Ctrl-C into SystemExit
        return f"interrupted; {again}"
    if _disk_full(err):
        return f"disk full ({err.filename or run_dir}): free some space, then {again}"
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners and warnings that do not apply to negrl's phases."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*Experiment logs directory .* exists and is not empty.*",  # metrics.csv lives beside config.yaml
        ".*module\\(s\\) in eval mode.*",  # the frozen DPO reference is in eval mode on purpose
        ".*LeafSpec.*",
        ".*litlogger.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def make_trainer(c: dict[str, Any], max_steps: int, title: str, run_dir: Path) -> L.Trainer:
    """A fresh Trainer for one phase; `trainer.*` settings pass through to Lightning."""
    trainer_cfg = dict(c["trainer"])
    callbacks = progress_callbacks(title, trainer_cfg.pop("enable_progress_bar", True))
    return L.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=c["optim"]["grad_clip"],
        gradient_clip_algorithm="norm",
        enable_progress_bar=bool(callbacks) and isinstance(callbacks[0], PhaseProgressBar),
        use_distributed_sampler=False,  # under DDP each process takes its share of every batch (RankShard)
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        **trainer_cfg,
    )
