"""The docs cannot drift from the code: every `python train.py ...` command shown in README.md and docs/ composes
against conf/ (no training), and every relative link and every repository path they name exists.

Commands are found in fenced code blocks (a line ending in a backslash continues on the next) and in inline code
spans that hold `python train.py`; a `# comment` ends a command. Each goes through negrl's own handling of the
command line (`negrl.run.overrides`: renamed keys, ranges such as `seed=0-7`, the options of each config group),
Hydra's composition and the schema (`negrl.run.config.check_config`): an unknown key, group or option fails, and so
does a value of the wrong type. Checks that need torch or files (`negrl.run.validation`: a model.path that exists,
memory estimates) are not made here; they have their own tests.

Placeholders, the one rule: a word in angle brackets (`<same overrides>`, `<overrides>`) or a bare `...` stands for
other overrides and is dropped; a value that is `...`, ends in `/...`, or is an upper-case word (`seed=S`,
`resume=RUN_DIR`, `model.path=PRE2048`, `hydra.sweep.dir=...`) stands for a value the reader supplies: that override
is left out of the composition and its key must exist in the composed config. A sweep (`-m`, or a preset that
runs as one) composes its first job, and one more job for each other combination of the config-group options its
command line sweeps (`model=a,b`); the other swept values (seeds, fractions) do not change which keys exist, and a
preset's own sweep is left to tests/test_sweeps.py, which checks every job of every preset. One composition per
distinct set of group choices in a session (see `_composed`).

References: a markdown link's target (relative to its page; `#anchor` must name a heading of the target page), and
every `conf/...`, `negrl/...`, `tests/...`, `docs/...` path or dotted `negrl.x.y` name in the text, and each
`make TARGET` of a code span or block (a target of the Makefile). In a path,
`{a,b}` expands to each, and `*`, `<word>` and an upper-case word (`NAME`) match any name (at least one must exist).
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import DictConfig, OmegaConf

from negrl.core.errors import NegrlError
from negrl.run.config import CONF_DIR, check_config
from negrl.run.overrides import (
    MULTIRUN_FLAGS,
    check_group_choices,
    compose_job,
    expand_ranges,
    hydra_call,
    is_sweep_preset,
    override_parser,
    rename_deprecated,
    sweep_jobs,
)

ROOT = CONF_DIR.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 200
COMMAND = "python train.py"
FENCE = re.compile(r"^ *```.*?^ *```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./~-])((?:conf|negrl|tests|docs)/[\w./{},*<>-]*)")
DOTTED = re.compile(r"(?<![\w./-])(negrl(?:\.\w+)+)")
PLACEHOLDER_WORD = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Command:
    """One `python train.py ...` shown in a page: where, and its arguments (after `python train.py`)."""

    where: str
    argv: tuple[str, ...]


def outside_fences(text: str) -> str:
    """The text with each fenced code block blanked (its newlines kept, so that line numbers stay right)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def commands_in(text: str, page: str = "sample") -> list[Command]:
    """Every `python train.py ...` of a page's code blocks and inline code, in order of appearance."""
    found: list[tuple[int, str]] = []
    for block in FENCE.finditer(text):
        line = text.count("\n", 0, block.start()) + 1
        for i, logical in _logical_lines(block.group(0).splitlines()[1:-1]):
            found.append((line + 1 + i, logical))
    plain = outside_fences(text)
    for span in INLINE.finditer(plain):
        found.append((plain.count("\n", 0, span.start()) + 1, span.group(1).replace("\n", " ")))
    out = []
    for line, source in sorted(found):
        at = source.find(COMMAND)
        if at >= 0:
            out.append(Command(f"{page}:{line}", tuple(_words(source[at + len(COMMAND) :]))))
    return out


def _logical_lines(lines: list[str]) -> Iterator[tuple[int, str]]:
    """A code block's lines with backslash continuations joined, each with the index of its first line."""
    start, parts = 0, []
    for i, line in enumerate(lines):
        if not parts:
            start = i
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        yield start, " ".join([*parts, line])
        parts = []
    if parts:
        yield start, " ".join(parts)


def _words(args: str) -> list[str]:
    """The arguments as the shell splits them, with `# comments` and `<placeholder>` words and `...` dropped."""
    args = re.sub(r"<[^<>]*>", " ", args)
    return [w for w in shlex.split(args, comments=True) if w != "..."]


def is_placeholder(value: str) -> bool:
    return value == "..." or value.endswith("/...") or bool(PLACEHOLDER_WORD.match(value))


def check_command(argv: tuple[str, ...] | list[str]) -> None:
    """Compose `python train.py ARGV` as negrl would (see the module's docstring); NegrlError if it cannot."""
    concrete, supplied = [], []
    for arg in argv:
        value = arg.partition("=")[2]
        (supplied if "=" in arg and not arg.startswith("-") and is_placeholder(value) else concrete).append(arg)
    args = expand_ranges(rename_deprecated(concrete))
    check_group_choices(args)
    overrides = [a for a in args if not a.startswith("-")]
    parser = override_parser()
    parsed = hydra_call(lambda: parser.parse_overrides(overrides))
    hydra = any(a.lstrip("+~").startswith("hydra.") for a in [*overrides, *supplied])
    if any(a in MULTIRUN_FLAGS for a in args) or is_sweep_preset(args):
        jobs, swept = sweep_jobs(parser, overrides, NO_PRESET_PARAMS)
        groups = {o.partition("=")[0] for o in overrides} & {k for k in swept if (CONF_DIR / k.lstrip("+")).is_dir()}
        firsts = {tuple(o for o in job if o.partition("=")[0] in groups): job for job in reversed(jobs)}
        composed = [_checked(tuple(job), hydra) for job in reversed(firsts.values())]
    elif any(o.is_sweep_override() for o in parsed):
        raise NegrlError(f"{shlex.join(overrides)} lists several values without -m")
    else:
        composed = [_checked(tuple(overrides), hydra)]
    for arg in supplied:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if not (CONF_DIR / key).is_dir() and OmegaConf.select(composed[0], key, default=KeyError) is KeyError:
            raise NegrlError(f"{key} is no key of the composed config (its value {value} is a placeholder)")


#: A preset's own sweep (`hydra.sweeper.params` of conf/experiment/*.yaml) is not expanded here: every job of every
#: preset is composed and checked by tests/test_sweeps.py.
NO_PRESET_PARAMS = OmegaConf.create({"hydra": {"sweeper": {}}})
_BASES: dict[tuple[str, ...], tuple[DictConfig, DictConfig] | NegrlError] = {}
_JOBS: dict[tuple[tuple[str, ...], bool], DictConfig | NegrlError] = {}


def _checked(overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    """One job's config as Hydra composes it (with its `hydra` node only if `hydra`: a command that sets hydra.*),
    its keys and values checked against the schema; once per distinct job in this session."""
    if (overrides, hydra) not in _JOBS:
        try:
            cfg = _composed(overrides, hydra)
            check_config(cfg)
            _JOBS[overrides, hydra] = cfg
        except NegrlError as err:
            _JOBS[overrides, hydra] = err
    got = _JOBS[overrides, hydra]
    if isinstance(got, NegrlError):
        raise got
    return got


def _composed(overrides: tuple[str, ...], hydra: bool) -> DictConfig:
    """Hydra's composition of these overrides. Hydra composes in two steps: the defaults list with the config-group
    choices (the slow part: a few tenths of a second), then each plain `key=value` applied to the result
    (`ConfigLoaderImpl._apply_overrides_to_config`). The first step is done once per distinct set of group choices
    in this session, the second on a copy for each job, with Hydra's own function."""
    groups = tuple(o for o in overrides if _is_group(o))
    if groups not in _BASES:
        try:
            full = compose_job(list(groups))
            _BASES[groups] = (full, OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]))
        except NegrlError as err:
            _BASES[groups] = err
    bases = _BASES[groups]
    if isinstance(bases, NegrlError):
        raise bases
    plain = [o for o in overrides if not _is_group(o)]
    cfg = copy.deepcopy(bases[0] if hydra else bases[1])
    OmegaConf.set_struct(cfg, True)  # as Hydra sets it before applying overrides: a key the config lacks is refused
    parsed = hydra_call(lambda: override_parser().parse_overrides(plain))
    hydra_call(lambda: ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg))
    return cfg


def _is_group(override: str) -> bool:
    """A config-group choice (`model=tiny`, `+ablation=none`, `hydra/launcher=local`), not a `key=value`."""
    key = override.partition("=")[0].lstrip("+~")
    return "/" in key or (CONF_DIR / key).is_dir()


def broken_paths(text: str, page: Path) -> list[str]:
    """The relative links, anchors, repository paths, dotted negrl names and `make` targets of a page that name
    nothing."""
    broken = []
    plain = outside_fences(text)
    for m in LINK.finditer(plain):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"link {target}: no {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in heading_slugs(path.read_text()):
            broken.append(f"link {target}: no heading #{anchor} in {file or page.name}")
    for m in PATH.finditer(text):
        named = m.group(1).rstrip(".,:;)")
        if not path_exists(named):
            broken.append(f"path {named}: no such file or folder")
    for m in DOTTED.finditer(text):
        if not dotted_exists(m.group(1).rstrip(".")):
            broken.append(f"name {m.group(1)}: no such module or attribute")
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    code = [ln for block in FENCE.findall(text) for ln in block.splitlines()] + INLINE.findall(plain)
    for target in re.findall(r"^\s*make ([\w-]+)", "\n".join(code), re.M):
        if target not in targets:
            broken.append(f"make {target}: no such target in the Makefile")
    return broken


def path_exists(named: str) -> bool:
    """Whether a named path names something: `{a,b}` each of a and b; `*`, `<word>` and upper-case words (`NAME`)
    stand for any name, of which one must exist."""
    brace = re.search(r"\{([^{}]*)\}", named)
    if brace:
        return all(path_exists(named[: brace.start()] + o + named[brace.end() :]) for o in brace.group(1).split(","))
    if (ROOT / named).exists():
        return True
    pattern = re.sub(r"\b[A-Z][A-Z0-9_]*\b", "*", re.sub(r"<[^<>]*>", "*", named.rstrip("/")))
    return "*" in pattern and next(ROOT.glob(pattern), None) is not None


def dotted_exists(name: str) -> bool:
    """`negrl.run.results.summarize`: a package path of negrl/, then at most one module and one name defined in it."""
    path, parts = ROOT, name.split(".")
    for i, part in enumerate(parts):
        if (path / part).is_dir():
            path = path / part
            continue
        module = path / f"{part}.py"
        if not module.is_file():
            return False
        rest = parts[i + 1 :]
        source = module.read_text()
        return not rest or (
            len(rest) == 1 and re.search(rf"^(?:def|class) {rest[0]}\b|^{rest[0]}\b.*=", source, re.M) is not None
        )
    return True


def heading_slugs(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces as hyphens)."""
    headings = re.findall(r"^#+ +(.+?) *$", outside_fences(text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _all_commands() -> list[Command]:
    return [c for page in PAGES for c in commands_in(page.read_text(), str(page.relative_to(ROOT)))]


@pytest.mark.parametrize("command", _all_commands(), ids=lambda c: c.where)
def test_every_command_the_docs_show_composes(command: Command):
    try:
        check_command(command.argv)
    except NegrlError as err:
        pytest.fail(f"{command.where}: python train.py {shlex.join(command.argv)}: {err}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_path_name_and_make_target_exists(page: Path):
    assert broken_paths(page.read_text(), page) == []


def test_the_readme_is_a_landing_page_that_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    assert [ln.split("#")[0].strip() for ln in lines[2:6]] == ["```bash", "make demo", "make test", "```"]
    linked = set(LINK.findall((ROOT / "README.md").read_text()))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= {t.partition("#")[0] for t in linked}  # every page of docs/ is one click away


SAMPLE = """\
Run it:

```bash
OMP_NUM_THREADS=1 python train.py -m seed=0-2 \\
    model=tiny,tiny-h128 optim.lr=3e-4   # a comment, not an override
negrl-report multirun/
```

Then `python train.py <same overrides> resume=RUN_DIR` continues, and `data=small` is no command.
"""


def test_commands_are_found_in_code_blocks_and_inline_with_continuations_comments_and_placeholders():
    assert commands_in(SAMPLE, "s.md") == [
        Command("s.md:4", ("-m", "seed=0-2", "model=tiny,tiny-h128", "optim.lr=3e-4")),
        Command("s.md:9", ("resume=RUN_DIR",)),
    ]
    for command in commands_in(SAMPLE):
        check_command(command.argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optim.lrr=1"], "optim.lrr"),  # an unknown key
        (["+holdout_fraction=0.1"], "holdout_frac"),  # added with +: the schema refuses it
        (["model=tiny-xl"], "model=tiny-xl is unknown"),  # an unknown option
        (["hydra/launcher=stack"], "stack"),  # an unknown option of a Hydra group
        (["ablation=no-prefix"], "+ablation"),  # a group outside the defaults without its plus
        (["-m", "seed=0-1", "model=tiny,tiny-xl"], "tiny-xl"),  # an unknown option in a sweep
        (["-m", "objective=dpo,ipo", "objective.tau=0.5"], "objective.tau"),  # a key only some jobs have
        (["seed=0-7"], "-m"),  # a range without -m
        (["optim.lr=abc"], "optim.lr"),  # a value of the wrong type
        (["resumee=RUN_DIR"], "resumee"),  # a placeholder's key must exist
    ],
)
def test_a_broken_command_fails(argv, message):
    with pytest.raises(NegrlError, match=re.escape(message)):
        check_command(argv)


def test_a_broken_link_path_name_or_make_target_is_reported():
    page = ROOT / "docs" / "sample.md"
    text = """\
[ok](models.md#lora-adapters), [ok](../README.md), [web](https://example.org/x), `conf/ablation/{none,no-freeze}.yaml`,
`conf/model/NAME.yaml`, `negrl.run.results.summarize`.
[gone](nope.md), [no anchor](models.md#no-such-heading), `negrl/run/nope.py`, `conf/ablation/{none,nope}.yaml`,
`negrl.run.results.nothing_here`, `make demo`, `make nothing`.
"""
    assert broken_paths(text, page) == [
        "link nope.md: no docs/nope.md",
        "link models.md#no-such-heading: no heading #no-such-heading in models.md",
        "path negrl/run/nope.py: no such file or folder",
        "path conf/ablation/{none,nope}.yaml: no such file or folder",
        "name negrl.run.results.nothing_here: no such module or attribute",
        "make nothing: no such target in the Makefile",
    ]
