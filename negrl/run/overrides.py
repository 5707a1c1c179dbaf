"""The command line's overrides before Hydra runs them: renamed keys, integer ranges, group choices, a sweep's jobs,
and their composition against conf/ (no torch: `tests/test_docs.py` composes every command the docs show)."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from negrl.core.errors import NegrlError
from negrl.run.config import CONF_DIR, deprecation_notice, renamed_key, unknown_key_message

RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")
MULTIRUN_FLAGS = ("-m", "--multirun")


def rename_deprecated(argv: list[str]) -> list[str]:
    """Each override of a renamed key (`negrl.run.config.RENAMED`) under its new name, with a one-line notice:
    `dpo.reference_cache=false` becomes `reference.cache=false`."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        sign = key[: len(key) - len(key.lstrip("+~"))]
        new = None if arg.startswith("-") else renamed_key(key[len(sign) :])
        if new is None:
            out.append(arg)
            continue
        print(deprecation_notice(key[len(sign) :], new), file=sys.stderr)
        out.append(f"{'~' if sign == '~' else ''}{new}{sep}{value}")  # the new key exists: `+` is not needed
    return out


def expand_ranges(argv: list[str]) -> list[str]:
    """Rewrite each `key=a-b` sweep element as the inclusive integer list a,...,b.

    `seed=0-7` becomes `seed=0,1,2,3,4,5,6,7`; ranges mix with comma lists (`seed=0-2,10`).
    Hydra's own `range()`, `glob()` and other sweep functions pass through untouched.
    A range is a sweep: without `-m` it is an error naming the fix.
    """
    multirun = any(a in MULTIRUN_FLAGS for a in argv) or is_sweep_preset(argv)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        elements = value.split(",")
        if arg.startswith("-") or not sep or "(" in value or not any(RANGE.match(e) for e in elements):
            out.append(arg)
            continue
        if not multirun:
            raise NegrlError(f"{arg} is a range of runs; sweep it with -m (python train.py -m {arg}) or give one value")
        values: list[str] = []
        for e in elements:
            m = RANGE.match(e)
            if m is None:
                values.append(e)
                continue
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise NegrlError(f"{key}={e} is an empty range; write the smaller bound first ({key}={b}-{a})")
            values += [str(i) for i in range(a, b + 1)]
        out.append(f"{key}={','.join(values)}")
    return out


def is_sweep_preset(argv: list[str], conf_dir: Path = CONF_DIR) -> bool:
    """Whether `experiment=NAME` in argv names a preset that runs as a sweep (hydra.mode: MULTIRUN)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        preset = conf_dir / "experiment" / f"{value}.yaml"
        if key.lstrip("+") == "experiment" and preset.is_file() and "mode: MULTIRUN" in preset.read_text():
            return True
    return False


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """`model=NAME` (and other group choices) must name a file of the group, e.g. conf/model/NAME.yaml."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if not sep or "." in group or "/" in group or not (conf_dir / group).is_dir() or "(" in value:
            continue
        known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in known:
                raise NegrlError(f"{group}={choice} is unknown; choose one of: {', '.join(known)}")


def override_parser(conf_dir: Path = CONF_DIR) -> OverridesParser:
    """Hydra's override parser with conf/ at hand, as Hydra's sweeper has it: `model='glob(pythia-*)'` lists the
    group's options."""
    return OverridesParser.create(config_loader=ConfigLoaderImpl(create_config_search_path(str(conf_dir))))


def sweep_jobs(parser: OverridesParser, overrides: list[str], base: DictConfig) -> tuple[list[list[str]], set[str]]:
    """The override list of each job Hydra's basic sweeper launches (a preset's `hydra.sweeper.params` first),
    and the keys the sweep varies."""
    params = base.hydra.sweeper.get("params") or {}
    preset = [f"{k}={v}" for k, v in params.items()]
    parsed = hydra_call(lambda: parser.parse_overrides(preset + overrides))
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch], swept


class CommandLine(NamedTuple):
    """`python train.py ARGV` read once: its overrides (ARGV without flags), Hydra's parse of them with the parser
    that made it, and `base`, the config the overrides that sweep nothing compose (a single run's config; a
    sweep's common part)."""

    argv: list[str]
    overrides: list[str]
    parser: OverridesParser
    parsed: list[Any]
    base: DictConfig

    @property
    def is_sweep(self) -> bool:
        """-m, or a preset that sets Hydra's multirun mode."""
        multirun = OmegaConf.select(self.base, "hydra.mode") == RunMode.MULTIRUN
        return multirun or any(a in MULTIRUN_FLAGS for a in self.argv)


def read_command_line(argv: list[str], conf_dir: Path = CONF_DIR) -> CommandLine:
    """Parse `argv`'s overrides and compose their base (composition errors as one line)."""
    overrides = [a for a in argv if not a.startswith("-")]
    parser = override_parser(conf_dir)
    parsed = hydra_call(lambda: parser.parse_overrides(overrides))
    base = compose_job([a for a, o in zip(overrides, parsed) if not o.is_sweep_override()], conf_dir)
    return CommandLine(argv, overrides, parser, parsed, base)


def check_not_a_hidden_sweep(cmd: CommandLine) -> None:
    """Several values of a key (`seed=0,1`) in a command that is no sweep (no -m, no preset that makes it one): one
    line naming the value and the -m that sweeps it."""
    if cmd.is_sweep:
        return
    several = next((a for a, o in zip(cmd.overrides, cmd.parsed) if o.is_sweep_override()), None)
    if several is not None:
        raise NegrlError(f"{several} lists several values; sweep them with -m (python train.py -m {several})")


def compose_job(overrides: list[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    """One job's config as Hydra composes it from conf/ (with its `hydra` node); a composition error as one line."""
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return hydra_call(lambda: compose(config_name="config", overrides=overrides, return_hydra_config=True))


def hydra_call(fn: Callable[[], Any]) -> Any:
    """Hydra's composition errors (a bad override, an unknown group) as one line."""
    try:
        return fn()
    except (HydraException, OmegaConfBaseException) as err:
        unknown = re.match(r"Could not override '([^']+)'", str(err))
        if unknown:
            key = unknown.group(1)
            raise NegrlError(group_hint(key) or unknown_key_message(key)) from None
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        if len(lines) > 1 and lines[1].startswith("Available options"):  # every option, on the one line
            options = list(itertools.takewhile(lambda ln: not ln.endswith(":"), lines[2:]))
            raise NegrlError(f"{lines[0]}; {lines[1].rstrip(':').lower()}: {', '.join(options)}") from None
        raise NegrlError("; ".join(lines[:2]) or type(err).__name__) from None


def group_hint(key: str, conf_dir: Path = CONF_DIR) -> str | None:
    """A one-line error for a key that belongs to a config group of conf/ but not where it was given: a group the
    defaults do not list (`ablation=...`: it needs a plus), or `group.name` that the chosen option lacks (e.g.
    objective.tau, model.tokenizer on tiny: the options that have it). None: the key is no setting at all."""
    group, _, name = key.partition(".")
    folder = conf_dir / group
    if not folder.is_dir() or "." in name:
        return None
    if not name:
        options = ", ".join(sorted(f.stem for f in folder.glob("*.yaml")))
        return (
            f"{key} is a config group that is not in the defaults: add it with a plus, +{key}=<option> "
            f"(options: {options})"
        )
    having = sorted(f.stem for f in folder.glob("*.yaml") if name in _option_keys(f, folder))
    if not having:
        return None
    listed = ", ".join(f"{group}={o}" for o in having[:6]) + (", ..." if len(having) > 6 else "")
    return (
        f"{key} is not a setting of the chosen {group}=; it belongs to {listed}: choose one of those "
        f"(e.g. python train.py {group}={having[0]} {key}=...), or drop {key}"
    )


def _option_keys(path: Path, folder: Path) -> set[str]:
    """The top-level keys of a config group's option, with those of the bases its `defaults` list names."""
    data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    keys = set(data) - {"defaults"}
    for entry in data.get("defaults", []):
        base = folder / f"{str(entry).split('@')[0]}.yaml"
        if isinstance(entry, str) and entry != "_self_" and base.is_file():
            keys |= _option_keys(base, folder)
    return keys
