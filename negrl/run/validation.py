"""Every check that can be made on a config before any work starts.

Types, ranges and unknown keys of single values are declared in `negrl.run.config`; this module adds
what depends on several values (sizes that must divide, draws that must be possible, memory that
must fit, devices that must exist) and returns the settings the config defines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from negrl.attacks.extraction import AttackSettings
from negrl.core.errors import NegrlError
from negrl.core.machine import NATIVE_BF16_NAMES, native_cpu_bf16
from negrl.method.data import DataSizes, PasswordSplits, heldout_count
from negrl.method.objectives import DEFAULTS, NEEDS, OBJECTIVES
from negrl.method.phases import OptimSettings
from negrl.model.adapters import check_targets
from negrl.model.families import decoder_layers, meta_model
from negrl.model.loading import check_model
from negrl.run.config import check_config, check_seed
from negrl.run.overrides import compose_job, override_parser
from negrl.run.tracking import wandb_login_found

GPU_ACCELERATORS = ("gpu", "cuda")
#: Bytes per password held during the draw: letters (uint8), Python set entries for the exclusions.
BYTES_PER_DRAWN = 200
#: Bytes per exposure candidate: int64 tokens, [T-1, K] fp32 letter log-probs (K = 26), its set entry.
BYTES_PER_CANDIDATE_TOKEN = 8 + 26 * 4


Objective = tuple[str, dict[str, float]]


@dataclass(frozen=True)
class Settings:
    """A checked config: its plain values (`config`, as saved in config.yaml) and, by name, everything the
    run reads from it."""

    config: dict[str, Any]
    seed: int
    model: dict[str, Any]  # model.*, read by negrl.model.loading
    adapter: dict[str, Any]  # adapter.*: none (full fine-tuning) or lora (negrl.model.adapters)
    tokens: dict[str, Any]
    sizes: DataSizes
    holdout_frac: float
    prefix: bool
    freeze: bool  # phase 2 freezes the second half of the layers and the unembedding
    compute: dict[str, Any]
    optim: OptimSettings
    objective: Objective  # phases 2-3
    beta: float  # scale of the logged rewards
    weights: dict[str, float]  # phase-3 loss weights
    reference_cache: bool
    eval_every: int
    attacks: AttackSettings | None  # the attacks at each phase end (extraction.*); None: extraction.enabled=false
    checkpoint_every: int
    resume: bool | str
    trainer: dict[str, Any]
    wandb: dict[str, Any]

    @property
    def steps(self) -> dict[int, int]:
        """Optimizer steps of each phase."""
        return {p: self.sizes.steps(p) for p in (1, 2, 3)}

    def with_seed(self, seed: int) -> Settings:
        """These settings for another (checked) seed: what `validate` returns for the config with that seed, since
        no check depends on the seed (tests/run/test_validation.py compares the two on a sweep)."""
        attacks = replace(self.attacks, seed=seed) if self.attacks else None
        return replace(self, config={**self.config, "seed": seed}, seed=seed, attacks=attacks)


def validate(cfg: DictConfig | dict[str, Any], warn: bool = True) -> Settings:
    """Check the config (refusing it with one line); return the settings it defines.

    `warn`: print `warn_degenerate`'s lines now (the pipeline prints them itself once the model is loaded,
    so that a refused run prints only its error)."""
    c = check_config(cfg)
    sizes = DataSizes(**c["data"])
    n_held = heldout_count(c["holdout_frac"], sizes.n_negatives)
    PasswordSplits.check_counts(sizes, n_held)
    n_letters = len(c["tokens"]["letters"])
    _check_tokens(c["tokens"])
    check_model(c["model"], c["tokens"])
    if c["adapter"]["name"] != "none":  # its targets and rank, on the model's meta-device twin
        model = c["model"]
        check_targets(meta_model(model["model_type"], dict(model.get("architecture") or {}), model["name"]),
                      c["adapter"], model)  # fmt: skip
    _check_draw(sizes, n_letters)
    _check_trainer(c["trainer"], sizes.batch_size)
    _check_wandb(c["wandb"])
    optim = optim_settings(c)
    attacks = attack_settings(c["extraction"], c["seed"], n_letters, sizes.password_length)
    _check_memory(sizes, attacks.candidates if attacks else 0)
    check_work(sizes, c["eval"]["every"], attacks, c["model"])
    settings = Settings(
        config=c, seed=c["seed"], model=c["model"], adapter=c["adapter"], tokens=c["tokens"], sizes=sizes,
        holdout_frac=c["holdout_frac"], prefix=c["prefix"], freeze=c["freeze"], compute=c["compute"],
        optim=optim, objective=objective_settings(c), beta=c["dpo"]["beta"], weights=phase3_weights(c["joint"]),
        reference_cache=c["reference"]["cache"], eval_every=c["eval"]["every"], attacks=attacks,
        checkpoint_every=c["checkpoint"]["every"], resume=c["resume"], trainer=c["trainer"], wandb=c["wandb"],
    )  # fmt: skip
    if warn:
        warn_degenerate(settings)
    return settings


def validate_sweep(jobs: list[list[str]], swept: set[str], conf_dir: Path,
                   each: Callable[[Settings], None] | None = None) -> list[Settings]:  # fmt: skip
    """The settings of every job of a sweep (each job's override list), checked as `validate` checks a run, in order;
    `each(settings)`: a further check of each job. A refusal names its job: "job 2 of the sweep (seed=x): ...". A job
    that differs from one checked before only in `seed` is not composed again: its seed alone is checked
    (`Settings.with_seed`), which makes a sweep of many seeds start in seconds, not minutes."""
    parser, checked, out = override_parser(conf_dir), {}, []
    for i, job in enumerate(jobs):
        seeds = [o for o in job if o.partition("=")[0] == "seed"]
        rest = tuple(o for o in job if o not in seeds)
        try:
            if seeds and rest in checked:
                s = checked[rest].with_seed(check_seed(parser.parse_overrides(seeds[-1:])[0].value()))
            else:
                s = checked[rest] = validate(compose_job(job, conf_dir), warn=False)
            if each is not None:
                each(s)
        except NegrlError as err:
            knobs = " ".join(o for o in job if o.partition("=")[0] in swept)
            raise NegrlError(f"job {i} of the sweep{f' ({knobs})' if knobs else ''}: {err}") from None
        out.append(s)
    return out


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


def _check_draw(sizes: DataSizes, n_letters: int) -> None:
    """Every password is drawn by rejection (distinct, avoiding the negatives): the space of passwords must be
    at least twice what the run draws, or the draw may never finish."""
    space = n_letters**sizes.password_length
    drawn = sizes.n_negatives + sizes.n_phase1 + 2 * sizes.dpo_size + sizes.eval_size
    if drawn * 2 > space:
        raise NegrlError(
            f"data.password_length={sizes.password_length} over {n_letters} letters gives {space:,} distinct "
            f"passwords, fewer than twice the {drawn:,} the run draws; use longer passwords or more tokens.letters"
        )


def _check_memory(sizes: DataSizes, candidates: int) -> None:
    """Refuse sizes whose passwords (and exposure candidates) cannot fit in this machine's memory."""
    drawn = sizes.n_negatives + sizes.n_phase1 + 4 * sizes.dpo_size + sizes.eval_size
    data_bytes = drawn * (sizes.password_length + BYTES_PER_DRAWN)
    candidate_bytes = candidates * (BYTES_PER_DRAWN + (sizes.password_length + 1) * BYTES_PER_CANDIDATE_TOKEN)
    available = available_memory()
    for need, what in ((data_bytes, "the passwords of data.*"), (candidate_bytes, "extraction.candidates")):
        if need > available:
            raise NegrlError(
                f"{what} need about {need / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of memory "
                "available here; lower data.n_negatives, data.negative_repeats, data.n_phase1 or extraction.candidates"
            )


#: The most token passes (one token of one sequence through the model, a training pass counted 3 times for its
#: backward) a run may make: about 780 times the paper's run (8.8e7: 8.3e7 training, 4.6e6 evaluations, 3.7e5
#: attacks), so that a mistyped size (an extra zero or three) is refused before any work, a scaled-up study not.
MAX_TOKEN_PASSES = 2**36
#: Evaluation sets scored at each evaluation (held-out, useful, random and the phase's own), and sequences in a
#: training example of each phase (phase 2: chosen and rejected, and the reference's two; phase 3: the pair, the
#: reference's, a random and a useful sequence).
EVAL_SETS, SEQUENCES_PER_EXAMPLE = 4, {1: 1, 2: 4, 3: 6}


def check_work(sizes: DataSizes, eval_every: int, attacks: AttackSettings | None, model: dict[str, Any]) -> None:
    """Every size's cost is bounded before any work: the memory of the attacks' decoding (extraction.samples: each
    candidate's key-value cache and scores) and of the bootstrap (extraction.bootstrap), and the run's time (its
    token passes: training, evaluations and attacks, at most `MAX_TOKEN_PASSES`). data.* sizes are bounded by
    `_check_memory` (their draw) and the time; data.batch_size by data.n_negatives and data.n_phase1."""
    length = sizes.password_length + 2  # a prefix and a BOS at most
    architecture = model.get("architecture") or {}
    positions = architecture.get("max_position_embeddings") or architecture.get("n_positions")
    if isinstance(positions, int) and length > positions:
        raise NegrlError(
            f"data.password_length={sizes.password_length} needs up to {length} positions (a prefix and a BOS "
            f"before the letters), more than model={model.get('name')}'s {positions}; use "
            f"data.password_length={positions - 2} or less"
        )
    steps = {p: sizes.steps(p) for p in (1, 2, 3)}
    training = 3 * sum(steps[p] * sizes.batch_size * SEQUENCES_PER_EXAMPLE[p] for p in steps) * length
    evaluations = sum(steps[p] // eval_every + 1 for p in steps) * EVAL_SETS * sizes.eval_size * length
    attacks_passes = 0
    if attacks is not None:
        decoded = 2 * attacks.samples * sizes.password_length  # beam search and sampling, one token per step
        attacks_passes = 3 * ((attacks.candidates + 2 * EVAL_SETS * sizes.eval_size) * length + decoded)
        available = available_memory()
        per_row = _decode_bytes_per_row(model, length)
        needs = (
            (attacks.samples * per_row, f"extraction.samples={attacks.samples}", "its decoding (each candidate's "
             "key-value cache and scores)"),
            (attacks.bootstrap * 2 * sizes.eval_size * 8 * 4, f"extraction.bootstrap={attacks.bootstrap}",
             "its resamples"),
        )  # fmt: skip
        for need, what, why in needs:
            if need > available:
                raise NegrlError(
                    f"{what} needs about {need / 2**30:,.1f} GiB for {why}, more than the {available / 2**30:,.1f} "
                    f"GiB of memory available here; lower {what.partition('=')[0]}"
                )
    total = training + evaluations + attacks_passes
    if total > MAX_TOKEN_PASSES:
        parts = {"training (data.*)": training, "evaluations (eval.every, data.eval_size)": evaluations,
                 "attacks (extraction.*)": attacks_passes}  # fmt: skip
        largest = max(parts, key=parts.__getitem__)
        raise NegrlError(
            f"this run would make about {total:.2g} token passes, {total / MAX_TOKEN_PASSES:,.0f} times the most a run "
            f"may make ({MAX_TOKEN_PASSES:.2g}, about 780 paper runs), {parts[largest] / total:.0%} of them in "
            f"{largest}; lower those sizes"
        )


def _decode_bytes_per_row(model: dict[str, Any], length: int) -> int:
    """Bytes each decoded candidate holds: its fp32 key-value cache over `length` positions in every layer (from the
    model's architecture), its letters' scores (float64, over 26 letters, with the beam search's sort) and tokens."""
    architecture = model.get("architecture") or {}
    layers = architecture.get("num_hidden_layers") or architecture.get("n_layer") or 12
    hidden = architecture.get("hidden_size") or architecture.get("n_embd") or 768
    heads = architecture.get("num_attention_heads") or architecture.get("n_head") or 1
    kv_heads = architecture.get("num_key_value_heads") or heads
    kv_width = kv_heads * (architecture.get("head_dim") or hidden // heads)
    return 2 * layers * kv_width * length * 4 + 26 * 8 * 3 + length * 8 * 2


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else the physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_trainer(t: dict[str, Any], batch_size: int) -> None:
    devices = t.get("devices", 1)
    n = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else None
    if n is None or n < 1 or isinstance(devices, bool):
        raise NegrlError(f"trainer.devices={devices!r} must be a number of devices (1, 2, ...) or a list of device ids")
    if batch_size % n:
        raise NegrlError(
            f"trainer.devices={devices} does not divide data.batch_size={batch_size}: each device takes "
            f"batch_size / devices sequences; use a divisor of {batch_size}"
        )
    accelerator = t.get("accelerator", "auto")
    cuda = torch.cuda.is_available()
    if accelerator in GPU_ACCELERATORS and not cuda:
        raise NegrlError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer.accelerator=cpu")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise NegrlError("trainer.accelerator=mps but MPS is not available; use trainer.accelerator=cpu")
    if str(t.get("precision")) == "16-mixed" and runs_on_cpu(t):
        raise NegrlError(
            "trainer.precision=16-mixed needs a GPU (on CPU Lightning would silently run bf16-mixed); "
            "use trainer.precision=bf16-mixed or 32-true"
        )


def runs_on_cpu(t: dict[str, Any]) -> bool:
    """Whether the trainer settings `t` put the run on the CPU (explicitly, or `auto` with no GPU visible)."""
    accelerator = t.get("accelerator", "auto")
    return accelerator == "cpu" or (
        accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )


def _check_wandb(w: dict[str, Any]) -> None:
    if w["enabled"] and w["mode"] == "online" and not wandb_login_found():
        raise NegrlError(
            "wandb.mode=online but no W&B login was found (WANDB_API_KEY or `wandb login`); "
            "log in first, or use wandb.mode=offline (sync later with `wandb sync`)"
        )


def optim_settings(c: dict[str, Any]) -> OptimSettings:
    """AdamW and schedule settings (their single values are checked by `negrl.run.config`)."""
    o, s = c["optim"], c["schedule"]
    if len(o["betas"]) != 2 or not all(0 <= b < 1 for b in o["betas"]):
        raise NegrlError(f"optim.betas={o['betas']} must be two numbers in [0, 1)")
    fused, precision = o["fused"], str(c["trainer"].get("precision"))
    if precision == "16-mixed":  # fp16 loss scaling: clipping needs unfused AdamW
        if fused is True:
            raise NegrlError(
                "optim.fused=true cannot clip gradients under trainer.precision=16-mixed; use optim.fused=auto"
            )
        fused = False
    elif precision == "bf16-mixed" and fused == "auto":
        # The fused kernel's rounding (about 1e-7 after a step) is far below bf16's (4e-3), and on CPU it is about
        # 4x faster than the multi-tensor path; fp32 runs keep the path bit-identical to PyTorch's default.
        fused = True
    return OptimSettings(
        lr=o["lr"],
        weight_decay=o["weight_decay"],
        betas=tuple(o["betas"]),
        eps=o["eps"],
        warmup_steps=s["warmup_steps"],
        cosine_over=s["cosine_over"],
        fused=fused,
        grad_clip=o["grad_clip"],
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
    for key, value in o.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NegrlError(f"objective.{key}={value!r} must be a number for objective={name}")
    for key in ("beta", "tau", "steering_coeff"):
        if key in o and not o[key] > 0:
            raise NegrlError(f"objective.{key}={o[key]} must be positive for objective={name}")
    for key in ("delta", "alpha", "gamma", "desirable_weight", "undesirable_weight"):
        if key in o and not o[key] >= 0:
            raise NegrlError(f"objective.{key}={o[key]} must be non-negative for objective={name}")
    if "label_smoothing" in o:
        _check_label_smoothing(name, o["label_smoothing"])
    if NEEDS[name].layer:
        _check_layer(name, o["layer"], c["model"], c["freeze"])
    return name, {k: float(v) for k, v in o.items()}


def _check_label_smoothing(name: str, eps: float) -> None:
    """The label-flip rate: below 1/2 for rDPO (it divides by 1 - 2 eps), above 0 for EXO (log eps), at most 1/2
    elsewhere (cDPO, AOT)."""
    ok, words = {"robust": (0 <= eps < 0.5, "[0, 0.5)"), "exo_pair": (0 < eps < 1, "(0, 1)")}.get(
        name, (0 <= eps <= 0.5, "[0, 0.5]")
    )
    if not ok:
        raise NegrlError(
            f"objective.label_smoothing={eps} must be in {words} for objective={name} "
            "(the probability that a pair's preference is flipped)"
        )


def _check_layer(name: str, layer: float, model: dict[str, Any], freeze: bool) -> None:
    """The decoder layer an objective reads (RMU's): a layer of the model; with the phase-2 freeze, one of the
    first half, which phase 2 trains (RMU updates the layers that produce its layer's activations)."""
    n = len(decoder_layers(meta_model(model["model_type"], dict(model.get("architecture") or {}), model["name"])))
    if not float(layer).is_integer() or not 0 <= layer < n:
        raise NegrlError(f"objective.layer={layer} must be a layer index 0 ... {n - 1} of model={model['name']}")
    if freeze and layer >= n // 2:
        raise NegrlError(
            f"objective.layer={layer:g} is in the half phase 2 freezes (layers {n // 2} ... {n - 1} of "
            f"model={model['name']}), so {name} could not train it there; use objective.layer<{n // 2} or freeze=false"
        )


def phase3_weights(joint: dict[str, float]) -> dict[str, float]:
    """Phase-3 loss weights {objective, random, useful}: non-negative (checked by `negrl.run.config`), not all zero."""
    weights = {k: float(joint[f"{k}_weight"]) for k in ("objective", "random", "useful")}
    if not any(weights.values()):
        raise NegrlError(f"phase-3 weights {weights} are all zero; set at least one of joint.*_weight above 0")
    return weights


def attack_settings(e: dict[str, Any], seed: int, n_letters: int, length: int) -> AttackSettings | None:
    """The attacks' settings (None: `extraction.enabled=false`); the candidates must be drawable as distinct
    passwords."""
    n = e["candidates"]
    if n > n_letters**length // 4:
        raise NegrlError(
            f"extraction.candidates={n} is too many distinct {length}-letter passwords over {n_letters} letters; "
            f"use at most {n_letters**length // 4}"
        )
    if not e["enabled"]:
        return None
    return AttackSettings(candidates=n, samples=e["samples"], min_k=e["min_k"], bootstrap=e["bootstrap"], seed=seed)


def warn_degenerate(s: Settings) -> None:
    """One line each for an evaluation interval or a warm-up longer than phases (legal, rarely intended), and for
    bf16-mixed on a CPU that emulates bf16 matmuls (legal, and much slower than fp32 there)."""
    steps = s.steps
    every, warmup = s.eval_every, s.optim.warmup_steps
    short = [f"phase {p} ({n} steps)" for p, n in steps.items() if every >= n]
    if short:
        print(
            f"negrl: warning: eval.every={every} is as long as {', '.join(short)}: evaluated only after step 0 there",
            file=sys.stderr,
        )
    if warmup >= max(steps.values()):
        lengths = ", ".join(map(str, steps.values()))
        print(
            f"negrl: warning: schedule.warmup_steps={warmup} is longer than every phase ({lengths} steps): "
            "the learning rate never reaches optim.lr",
            file=sys.stderr,
        )
    if str(s.trainer.get("precision")) == "bf16-mixed" and runs_on_cpu(s.trainer) and not native_cpu_bf16():
        print(
            "negrl: warning: trainer.precision=bf16-mixed on a CPU without native bf16 matrix multiplication "
            f"(capability {torch.backends.cpu.get_cpu_capability()}, no {NATIVE_BF16_NAMES}): PyTorch "
            "emulates bf16 matmuls here, 4-50x slower than fp32; use trainer.precision=32-true on this CPU",
            file=sys.stderr,
        )
