"""The package's layers: which subpackage may import which, checked on every import statement of negrl/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import negrl

PACKAGE = Path(negrl.__file__).parent

#: Each part of negrl and the parts it may import (besides itself). The top-level modules are the entry points.
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "method": {"core", "model"},
    "attacks": {"core", "model", "method"},
    "run": {"core", "model", "method", "attacks"},
    "stacked": {"core", "model", "method", "attacks", "run"},
    "entry": {"core", "model", "method", "attacks", "run", "stacked"},
    "tools": {"core", "model", "method", "attacks", "run", "stacked", "entry"},
    "report": {"core"},
}
#: The modules at the top of negrl/: the entry points around a run (a handful at most).
ENTRY = {"cli", "launcher", "pipeline"}


def part_of(module: str) -> str | None:
    """`negrl.model.backbone` -> "model"; `negrl.cli` -> "entry"; `negrl` itself (its version) -> None."""
    parts = module.split(".")
    if parts[0] != "negrl" or len(parts) == 1:
        return None
    return "entry" if parts[1] in ENTRY else parts[1]


def imports(source: str, rel: Path) -> list[tuple[int, str]]:
    """Every negrl module that `source`, the file at `rel` in negrl/, imports (at the top or in a function)."""
    here = ["negrl", *rel.with_suffix("").parts]
    package = here if rel.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                if node.level
                else node.module or ""
            )
            # `from negrl import x` / `from negrl.run import checkpoint`: the module is the name imported
            out += [(node.lineno, f"{base}.{a.name}" if base.count(".") < 2 and base.startswith("negrl") else base)
                    for a in node.names]  # fmt: skip
    return [(line, m) for line, m in out if m.split(".")[0] == "negrl"]


def against_the_layers(source: str, rel: Path) -> list[str]:
    """The imports of `source` (at `rel` in negrl/) that its part may not make."""
    mine = "entry" if len(rel.parts) == 1 else rel.parts[0]
    return [
        f"line {line}: {module} ({part_of(module)})"
        for line, module in imports(source, rel)
        if part_of(module) not in (None, mine) and part_of(module) not in ALLOWED[mine]
    ]


def modules() -> list[Path]:
    return sorted(p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_top_of_the_package_holds_only_the_entry_points_and_each_part_says_what_it_holds():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ENTRY
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert parts == set(ALLOWED) - {"entry"}
    for name in parts:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"negrl/{name}/__init__.py: a docstring saying what it holds and may import"


@pytest.mark.parametrize("rel", modules(), ids=str)
def test_imports_run_down_the_layers(rel: Path):
    wrong = against_the_layers((PACKAGE / rel).read_text(), rel)
    mine = "entry" if len(rel.parts) == 1 else rel.parts[0]
    assert not wrong, f"negrl/{rel} ({mine}) may import only {sorted(ALLOWED[mine])}: " + "; ".join(wrong)


@pytest.mark.parametrize(
    ("source", "rel", "found"),
    [
        ("from negrl.run.runner import PhaseRunner\n", "model/backbone.py", ["line 1: negrl.run.runner (run)"]),
        ("def f():\n    from negrl.run import checkpoint\n", "method/data.py", ["line 2: negrl.run.checkpoint (run)"]),
        ("import negrl.model.backbone\n", "report/runs.py", ["line 1: negrl.model.backbone (model)"]),
        ("from ..run import results\n", "report/tables.py", ["line 1: negrl.run.results (run)"]),
        ("from negrl import pipeline\n", "stacked/runner.py", ["line 1: negrl.pipeline (entry)"]),
        ("from negrl.core.errors import NegrlError\nimport negrl\n", "report/runs.py", []),
        ("from negrl.stacked.runner import StackedRunner\n", "pipeline.py", []),
    ],
)
def test_the_rule_finds_each_kind_of_import_against_the_layers(source: str, rel: str, found: list[str]):
    assert against_the_layers(source, Path(rel)) == found
