"""Every check that can be made on a resolved config before any work starts."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from negrl.backbone import ATTENTIONS, INITS, check_checkpoint_dir
from negrl.data import DataSizes, PasswordSplits, heldout_count
from negrl.errors import NegrlError
from negrl.objectives import DEFAULTS, OBJECTIVES
from negrl.phases import OptimSettings

GPU_ACCELERATORS = ("gpu", "cuda")


Objective = tuple[str, dict[str, float]]


class Settings(NamedTuple):
    """What a checked config defines, beyond its plain values."""

    sizes: DataSizes
    optim: OptimSettings
    weights: dict[str, float]  # phase-3 loss weights
    objective: Objective  # phases 2-3
    candidates: int  # exposure candidates of the extraction attacks; 0: no extraction


def validate(c: dict[str, Any]) -> Settings:
    """Check the config; return the settings it defines."""
    sizes = DataSizes(**c["data"])
    n_held = heldout_count(c["holdout_frac"], sizes.n_negatives)
    PasswordSplits.check_counts(sizes, n_held)
    _check_flags(c)
    _check_tokens(c["tokens"])
    _check_model(c["model"])
    _check_trainer(c["trainer"], sizes.batch_size)
    _check_wandb(c["wandb"])
    _check_compute(c["compute"])
    every = c["checkpoint"]["every"]
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise NegrlError(f"checkpoint.every={every!r} must be a non-negative number of steps (0: phase ends only)")
    optim = optim_settings(c)  # checks dpo.beta first: objective=dpo's beta refers to it
    candidates = extraction_candidates(c["extraction"], len(c["tokens"]["letters"]), sizes.password_length)
    return Settings(sizes, optim, phase3_weights(c["joint"]), objective_settings(c), candidates)


def _check_compute(compute: dict[str, Any]) -> None:
    if not isinstance(compute["fused_logprobs"], bool):
        raise NegrlError(f"compute.fused_logprobs={compute['fused_logprobs']!r} must be true or false")
    if compute["attention"] not in ATTENTIONS:
        raise NegrlError(f"compute.attention={compute['attention']!r} must be one of {', '.join(ATTENTIONS)}")


def _check_flags(c: dict[str, Any]) -> None:
    for key in ("prefix", "freeze"):
        if not isinstance(c[key], bool):
            raise NegrlError(f"{key}={c[key]!r} must be true or false")
    if not isinstance(c["seed"], int) or isinstance(c["seed"], bool) or c["seed"] < 0:
        raise NegrlError(f"seed={c['seed']!r} must be a non-negative integer (sweep several with -m seed=0-7)")


def _check_tokens(t: dict[str, Any]) -> None:
    letters = t["letters"]
    if not letters or len(set(letters)) != len(letters):
        raise NegrlError(f"tokens.letters={letters!r} must be non-empty with no repeated letter")
    if t["regular_prefix"] == t["reverse_prefix"]:
        raise NegrlError(
            f"tokens.regular_prefix and tokens.reverse_prefix are both {t['regular_prefix']!r}; "
            "they must differ (the paper uses ' regular' and ' reverse')"
        )
    if "{}" not in t["letter_format"]:
        raise NegrlError(f"tokens.letter_format={t['letter_format']!r} must contain {{}} where the letter goes")


def _check_model(m: dict[str, Any]) -> None:
    if m.get("init", "pretrained") not in INITS:
        raise NegrlError(f"model.init={m.get('init')!r} must be one of {', '.join(INITS)}")
    if m.get("path"):
        check_checkpoint_dir(m["path"])


def _check_trainer(t: dict[str, Any], batch_size: int) -> None:
    devices = t.get("devices", 1)
    n = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else None
    if n is None or n < 1:
        raise NegrlError(f"trainer.devices={devices!r} must be a number of devices (1, 2, ...) or a list of device ids")
    if batch_size % n:
        raise NegrlError(
            f"trainer.devices={devices} does not divide data.batch_size={batch_size}: each device takes "
            f"batch_size / devices sequences; use a divisor of {batch_size}"
        )
    accelerator = str(t.get("accelerator", "auto"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise NegrlError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer.accelerator=cpu")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise NegrlError("trainer.accelerator=mps but MPS is not available; use trainer.accelerator=cpu")


def _check_wandb(w: dict[str, Any]) -> None:
    if w.get("enabled", True) and w.get("mode", "offline") not in ("offline", "online"):
        raise NegrlError(f"wandb.mode={w.get('mode')!r} must be 'offline' or 'online' (or set wandb.enabled=false)")


def optim_settings(c: dict[str, Any]) -> OptimSettings:
    """AdamW and schedule settings, checked."""
    o, s = c["optim"], c["schedule"]
    for key in ("lr", "grad_clip", "eps"):
        if not o[key] > 0:
            raise NegrlError(f"optim.{key}={o[key]} must be positive")
    if o["weight_decay"] < 0:
        raise NegrlError(f"optim.weight_decay={o['weight_decay']} must be non-negative")
    if not all(0 <= b < 1 for b in o["betas"]) or len(o["betas"]) != 2:
        raise NegrlError(f"optim.betas={o['betas']} must be two numbers in [0, 1)")
    fused = o.get("fused", "auto")
    if fused not in ("auto", True, False):
        raise NegrlError(f"optim.fused={fused!r} must be auto, true or false")
    if str(c["trainer"].get("precision")) in ("16-mixed", "16"):  # fp16 loss scaling: clipping needs unfused AdamW
        if fused is True:
            raise NegrlError(
                "optim.fused=true cannot clip gradients under trainer.precision=16-mixed; use optim.fused=auto"
            )
        fused = False
    if not isinstance(s["warmup_steps"], int) or s["warmup_steps"] < 0:
        raise NegrlError(f"schedule.warmup_steps={s['warmup_steps']} must be a non-negative integer")
    if s["cosine_over"] not in ("phase", "decay"):
        raise NegrlError(f"schedule.cosine_over={s['cosine_over']!r} must be 'phase' (the paper's) or 'decay'")
    if not c["dpo"]["beta"] > 0:
        raise NegrlError(f"dpo.beta={c['dpo']['beta']} must be positive (the paper uses 0.1)")
    if not isinstance(c["eval"]["every"], int) or c["eval"]["every"] <= 0:
        raise NegrlError(f"eval.every={c['eval']['every']} must be a positive number of steps")
    return OptimSettings(
        lr=o["lr"],
        weight_decay=o["weight_decay"],
        betas=tuple(o["betas"]),
        eps=o["eps"],
        warmup_steps=s["warmup_steps"],
        cosine_over=s["cosine_over"],
        fused=fused,
    )


def objective_settings(c: dict[str, Any]) -> Objective:
    """The phase-2/3 objective (`objective=NAME`) and its hyper-parameters, checked."""
    o = dict(c["objective"])
    name = o.pop("name", None)
    if name not in OBJECTIVES:
        raise NegrlError(f"objective={name} is unknown; choose one of: {', '.join(OBJECTIVES)}")
    if set(o) != set(DEFAULTS[name]):
        expected = ", ".join(f"objective.{k}" for k in DEFAULTS[name]) or "none"
        raise NegrlError(f"objective={name} takes {expected}, got {', '.join(sorted(o)) or 'none'}; fix objective.*")
    for key in ("beta", "tau"):
        if key in o and not o[key] > 0:
            raise NegrlError(f"objective.{key}={o[key]} must be positive for objective={name}")
    for key in ("delta", "alpha"):
        if key in o and not o[key] >= 0:
            raise NegrlError(f"objective.{key}={o[key]} must be non-negative for objective={name}")
    return name, {k: float(v) for k, v in o.items()}


def phase3_weights(joint: dict[str, float]) -> dict[str, float]:
    """Phase-3 loss weights {dpo, random, useful}: non-negative, not all zero."""
    weights = {k: float(joint[f"{k}_weight"]) for k in ("dpo", "random", "useful")}
    if any(v < 0 for v in weights.values()) or not any(weights.values()):
        raise NegrlError(f"phase-3 weights {weights} must be non-negative and not all zero; fix joint.*_weight")
    return weights


def extraction_candidates(e: dict[str, Any], n_letters: int, length: int) -> int:
    """Number of exposure candidates (0: `extraction.enabled=false`); they must be drawable as distinct passwords."""
    if not isinstance(e["enabled"], bool):
        raise NegrlError(f"extraction.enabled={e['enabled']!r} must be true or false")
    n = e["candidates"]
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise NegrlError(f"extraction.candidates={n!r} must be a positive integer (e.g. 4095: exposure up to 12 bits)")
    if n > n_letters**length // 4:
        raise NegrlError(
            f"extraction.candidates={n} is too many distinct {length}-letter passwords over {n_letters} letters; "
            f"use at most {n_letters**length // 4}"
        )
    return n if e["enabled"] else 0
