"""The declared shape of negrl's config: every key, its type and its range, checked once before any work.

`conf/*.yaml` holds the values (the paper's defaults); the dataclasses below, a Hydra/OmegaConf
structured config, hold what each key may be. `check_config` merges the two: an unknown key, a
wrongly typed, non-finite or out-of-range value of any key is a one-line `NegrlError` naming
the key and the fix.
"""

import copy
import difflib
import functools
import inspect
import math
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from negrl.core.errors import NegrlError
from negrl.method.schedule import COSINE_SPAN

#: conf/ of the repository: the YAML values of the schema below.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SEED_MAX = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both take seeds below 2**32
#: Lightning Trainer settings that do not change negrl's procedure; every other `trainer.*` key is refused.
TRAINER_KEYS = (
    "accelerator", "devices", "num_nodes", "strategy", "precision", "enable_progress_bar",
    "deterministic", "benchmark", "detect_anomaly", "profiler",
)  # fmt: skip
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
#: Keys renamed when phases 2-3 learned other objectives than DPO: old name -> new name (the old one still works,
#: with a one-line notice).
RENAMED = {"dpo.reference_cache": "reference.cache", "joint.dpo_weight": "joint.objective_weight"}
#: Keys an objective gained later, with the value that computes what it computed before (a config.yaml written
#: before them reads as if it had them): objective name -> {key: value}.
ADDED_OBJECTIVE_KEYS = {"dpo": {"label_smoothing": 0.0}}
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")


def spec(default: Any = "???", **rules: Any) -> Any:
    """A field with range rules (`gt`, `ge`, `lt`, `le`, `choices`) checked by `check_config`; "???" is
    OmegaConf's missing value: the YAML gives it."""
    return field(default=default, metadata=rules)


@dataclass
class DataConfig:
    password_length: int = spec(ge=1)
    n_negatives: int = spec(ge=1)
    negative_repeats: int = spec(ge=1)
    n_phase1: int = spec(ge=1)
    useful_repeats: int = spec(ge=1)
    batch_size: int = spec(ge=1)
    eval_size: int = spec(ge=1)


@dataclass
class ModelConfig:
    name: str = spec()
    model_type: str = spec()  # the transformers model type (config.json's), e.g. gpt_neox, llama (negrl.model.families)
    init: str = spec(choices=("pretrained", "random"))
    vocab: str = spec(choices=("builtin", "tokenizer"))
    path: str | None = spec(None)
    hub_id: str | None = spec(None)
    revision: str | None = spec(None)
    tokenizer: str | None = spec(None)
    architecture: dict[str, Any] = spec()  # keys checked against the model's config class (negrl.model.backbone)
    token_ids: dict[str, Any] | None = spec(None)
    tied: str = spec("untie", choices=("untie", "freeze", "train"))  # a shared input/output embedding in phase 2
    lora_targets: list[str] | None = spec(None)  # the family's projections that adapter=lora adapts


@dataclass
class TokensConfig:
    letters: str = spec()
    letter_format: str = spec()
    regular_prefix: str = spec()
    reverse_prefix: str = spec()
    bos: Any = spec("auto", choices=("auto", True, False))


@dataclass
class AdapterConfig:
    name: str = spec(choices=("none", "lora"))
    rank: int = spec(ge=1)
    alpha: float = spec(gt=0)
    target_modules: list[str] | None = spec(None)


@dataclass
class OptimConfig:
    lr: float = spec(gt=0)
    weight_decay: float = spec(ge=0)
    betas: list[float] = spec()
    eps: float = spec(gt=0)
    grad_clip: float = spec(gt=0)
    fused: Any = spec(choices=("auto", True, False))


@dataclass
class ScheduleConfig:
    warmup_steps: int = spec(ge=0)
    cosine_over: str = spec(choices=tuple(COSINE_SPAN))


@dataclass
class DPOConfig:
    beta: float = spec(gt=0)


@dataclass
class ReferenceConfig:
    cache: bool = spec()


@dataclass
class JointConfig:
    objective_weight: float = spec(ge=0)
    random_weight: float = spec(ge=0)
    useful_weight: float = spec(ge=0)


@dataclass
class ComputeConfig:
    fused_logprobs: bool = spec()
    attention: str = spec(choices=("eager", "sdpa"))


@dataclass
class EvalConfig:
    every: int = spec(ge=1)


@dataclass
class ExtractionConfig:
    enabled: bool = spec()
    candidates: int = spec(ge=1)
    samples: int = spec(ge=1)
    min_k: float = spec(gt=0, le=1)
    bootstrap: int = spec(ge=0)


@dataclass
class CheckpointConfig:
    every: int = spec(ge=0)


@dataclass
class TrainerConfig:
    accelerator: str = spec(choices=ACCELERATORS)
    devices: Any = spec()
    num_nodes: int = spec(ge=1)
    strategy: str = spec()
    precision: str = spec(choices=PRECISIONS)
    enable_progress_bar: bool = spec()
    deterministic: Any = spec()
    benchmark: bool | None = spec()
    detect_anomaly: bool = spec()
    profiler: str | None = spec()


@dataclass
class WandbConfig:
    enabled: bool = spec()
    mode: str = spec(choices=("offline", "online"))
    project: str = spec()
    entity: str | None = spec(None)
    group: str | None = spec(None)
    name: str | None = spec(None)
    tags: list[str] = spec()


@dataclass
class Config:
    """`conf/config.yaml`, typed. `objective` is checked against its registry (negrl.method.objectives)."""

    seed: int = spec(ge=0, le=SEED_MAX)
    holdout_frac: float = spec(gt=0, lt=1)
    prefix: bool = spec()
    freeze: bool = spec()
    model: ModelConfig = spec()
    adapter: AdapterConfig = spec()
    data: DataConfig = spec()
    objective: dict[str, Any] = spec()
    tokens: TokensConfig = spec()
    optim: OptimConfig = spec()
    schedule: ScheduleConfig = spec()
    dpo: DPOConfig = spec()
    reference: ReferenceConfig = spec()
    joint: JointConfig = spec()
    compute: ComputeConfig = spec()
    eval: EvalConfig = spec()
    extraction: ExtractionConfig = spec()
    checkpoint: CheckpointConfig = spec()
    resume: Any = spec()  # false, true, or a run directory
    trainer: TrainerConfig = spec()
    gpu_per_job: bool = spec()
    wandb: WandbConfig = spec()


def renamed_key(key: str) -> "str | None":
    """The new name of a renamed dotted key (or of a key under it), None if it was not renamed."""
    for old, new in RENAMED.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def deprecation_notice(old: str, new: str) -> str:
    return f"negrl: warning: {old} is now {new}; the old name still works for now, please use {new}"


def upgrade_renamed(c: "dict[str, Any]", notice: bool = False) -> "dict[str, Any]":
    """A copy of the plain config `c` with each renamed key under its new name (e.g. a config.yaml written before
    the rename) and the objective's later keys (`ADDED_OBJECTIVE_KEYS`) at their old behaviour where absent;
    `notice`: print a deprecation line for each renamed key."""
    out = copy.deepcopy(c)
    for old, new in RENAMED.items():
        *parent, leaf = old.split(".")
        node = out
        for part in parent:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *new_parent, new_leaf = new.split(".")
        target = out
        for part in new_parent:
            target = target.setdefault(part, {})
        target[new_leaf] = value
        if notice:
            print(deprecation_notice(old, new), file=sys.stderr)
    objective = out.get("objective")
    if isinstance(objective, dict):
        for key, value in ADDED_OBJECTIVE_KEYS.get(objective.get("name"), {}).items():
            objective.setdefault(key, value)
    return out


def check_config(cfg: "DictConfig | dict[str, Any]") -> "dict[str, Any]":
    """The config as a plain dict with every value of its declared type; refuses bad keys and values. Renamed
    keys (`RENAMED`) are taken under their new name, with a notice."""
    raw = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]) if "hydra" in raw else raw
    if any(OmegaConf.select(raw, old, default=None) is not None for old in RENAMED):
        raw = OmegaConf.create(upgrade_renamed(OmegaConf.to_container(raw), notice=True))
    _check_keys(raw, Config, "")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), raw)
        c = OmegaConf.to_container(typed, resolve=True)
    except OmegaConfBaseException as err:
        raise NegrlError(_type_error(err)) from None
    c = _drop_missing(c)
    _check_values(c, Config, "")
    c["resume"] = resume_value(c["resume"])
    return c


def check_seed(value: Any) -> int:
    """`seed` alone, checked as `check_config` checks it in a whole config (its type and range): for the jobs of a
    sweep that differ from a checked job only in the seed."""
    try:
        seed = OmegaConf.merge(_seed_schema(), {"seed": value}).seed
    except OmegaConfBaseException as err:
        raise NegrlError(_type_error(err)) from None
    _check_values({"seed": seed}, Config, "")
    return seed


@functools.cache
def _seed_schema() -> DictConfig:
    """`Config`'s `seed` field alone, as a structured config (merged into, never changed)."""
    (seed,) = (f for f in fields(Config) if f.name == "seed")
    return OmegaConf.structured(make_dataclass("SeedConfig", [(seed.name, seed.type, seed)]))


def resume_value(resume: Any) -> "bool | str":
    """`resume`: false/no/0 and true/yes/1 (any case) are booleans; any other string is a run directory."""
    if isinstance(resume, bool):
        return resume
    text = str(resume).strip()
    if text.lower() in ("false", "no", "0", "off", "none", "null", ""):
        return False
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    return text


def _check_keys(node: Any, schema: type, prefix: str) -> None:
    """Every key of `node` must be a field of `schema` (nested dataclasses recursively)."""
    if not isinstance(node, DictConfig):
        return
    known = {f.name: f for f in fields(schema)}
    for key in node:
        path = f"{prefix}{key}"
        if key not in known:
            raise NegrlError(_unknown_key(path, key, list(known), schema))
        sub = known[key].type
        if sub is bool:
            _check_bool(node._get_node(key)._value(), path)
        if is_dataclass(sub):
            _check_keys(node._get_node(key), sub, f"{path}.")


def unknown_key_message(path: str) -> str:
    """The one-line error for a dotted key that the schema does not declare (e.g. from a Hydra override)."""
    schema, parts = Config, path.split(".")
    for i, part in enumerate(parts[:-1]):
        sub = {f.name: f.type for f in fields(schema)}.get(part)
        if not is_dataclass(sub):
            return f"{path} is not a negrl setting; fix {'.'.join(parts[: i + 1])}"
        schema = sub
    return _unknown_key(path, parts[-1], [f.name for f in fields(schema)], schema)


def _check_bool(value: Any, path: str) -> None:
    if isinstance(value, str) and value.startswith("${"):
        return  # an interpolation: its resolved value is type-checked by the merge
    if not isinstance(value, bool):
        raise NegrlError(f"{path}={value!r} must be true or false; fix {path}")


def _unknown_key(path: str, key: str, known: list[str], schema: type) -> str:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean {path[: -len(key)]}{near[0]}?" if near else f"valid keys here: {', '.join(known)}"
    if schema is TrainerConfig and key in _lightning_trainer_args():
        return (
            f"{path} is a Lightning setting that would change negrl's procedure (steps, batches and the schedule "
            f"follow from data.* and schedule.*); negrl passes through only trainer.{{{','.join(TRAINER_KEYS)}}}"
        )
    return f"{path} is not a negrl setting; {hint}"


def _lightning_trainer_args() -> set[str]:
    import lightning as L

    return set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def _type_error(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or "a value"
    msg = str(getattr(err, "msg", err)).splitlines()[0]
    found = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
    if found and found.group(2) in _TYPE_WORDS:
        return f"{key}={found.group(1)!r} must be {_TYPE_WORDS[found.group(2)]}; fix {key}"
    return f"{key}: {msg}; fix {key}"


_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _drop_missing(c: Any) -> Any:
    """Remove keys the schema declares but the config does not set (e.g. optional trainer settings)."""
    if isinstance(c, dict):
        return {k: _drop_missing(v) for k, v in c.items() if v != "???"}
    return c


def _check_values(c: dict[str, Any], schema: type, prefix: str) -> None:
    """Ranges and choices of each declared field, and finiteness of every number anywhere."""
    for f in fields(schema):
        if f.name not in c:
            continue
        value, path = c[f.name], f"{prefix}{f.name}"
        sub = f.type
        if is_dataclass(sub):
            _check_values(value, sub, f"{path}.")
            continue
        _check_finite(value, path)
        _check_rules(value, path, f.metadata)


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise NegrlError(f"{path}={value} is not a finite number; give a finite value")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}")
    if isinstance(value, (list, tuple, ListConfig)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def _check_rules(value: Any, path: str, rules: Any) -> None:
    choices = rules.get("choices")
    if choices is not None and not any(value == ch and type(value) is type(ch) for ch in choices):
        shown = ", ".join(str(ch).lower() if isinstance(ch, bool) else str(ch) for ch in choices)
        raise NegrlError(f"{path}={_show(value)} is not allowed; choose one of: {shown}")
    bounds = {"gt": value.__gt__, "ge": value.__ge__, "lt": value.__lt__, "le": value.__le__}
    if any(rule in rules and ok(rules[rule]) is not True for rule, ok in bounds.items()):
        raise NegrlError(f"{path}={_show(value)} must be {_range_words(rules)}; fix {path}")


def _range_words(rules: Any) -> str:
    lo = "> {gt}" if "gt" in rules else ">= {ge}" if "ge" in rules else ""
    hi = "< {lt}" if "lt" in rules else "<= {le}" if "le" in rules else ""
    words = " and ".join(w for w in (lo, hi) if w).format(**rules)
    return words.replace(">= 1", ">= 1 (a positive integer)") if rules.get("ge") == 1 else words


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
