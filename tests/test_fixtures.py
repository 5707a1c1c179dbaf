"""What a fresh clone needs and carries: the tokenizer fixtures (nothing read from beside the
repository), its ignore list, and packaging metadata that builds without deprecation warnings."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, TOKENIZERS

#: Per family: the ids of " a" and " regular" (single tokens in every one of them).
LETTER_IDS = {
    "gpt-neox-20b": (247, 3963),
    "gpt2": (257, 3218),
    "smollm2-135m": (253, 2649),
    "qwen2.5-0.5b": (264, 5792),
    "olmo-2": (264, 5912),
}


def recorded_sha256() -> dict[str, str]:
    """The sha256 of each family's tokenizer.json, from the table of tests/fixtures/tokenizers/SOURCES.md."""
    rows = re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", (TOKENIZERS / "SOURCES.md").read_text(), re.M)
    return dict(rows)


def test_every_family_is_carried_and_documented():
    carried = {p.parent.name for p in TOKENIZERS.glob("*/tokenizer.json.xz")}
    assert carried == set(LETTER_IDS) == set(recorded_sha256())


@pytest.mark.parametrize("family", sorted(LETTER_IDS))
def test_tokenizer_fixture_is_the_recorded_file_and_tokenizes_letters(family, tokenizer_path, tmp_path_factory):
    from tokenizers import Tokenizer

    path = tokenizer_path(family)
    assert path.is_relative_to(tmp_path_factory.getbasetemp())  # decompressed for the session, not read in place
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded_sha256()[family]
    tokenizer = Tokenizer.from_file(str(path))
    ids = [tokenizer.encode(text, add_special_tokens=False).ids for text in (" a", " regular")]
    assert ids == [[i] for i in LETTER_IDS[family]]


def test_tokenizer_json_is_the_gpt_neox_fixture(tokenizer_json, tokenizer_path):
    assert tokenizer_json == tokenizer_path("gpt-neox-20b")


def test_unknown_family_fails_naming_the_known_ones(tokenizer_path):
    with pytest.raises(pytest.fail.Exception, match="known families: gpt-neox-20b, gpt2, olmo-2"):
        tokenizer_path("gpt-5")


def code_files() -> list[Path]:
    """Everything that runs or configures the tests and the package (this file aside)."""
    files = [ROOT / "train.py", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("negrl", "tests", "conf"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".cfg", ".ini", ".toml")]
    return [p for p in files if p.is_file() and p != Path(__file__).resolve()]


def test_nothing_reads_a_shared_folder_beside_the_repository():
    beside = re.compile(r"\.\./shared|[\"']shared[\"']")
    assert [str(p.relative_to(ROOT)) for p in code_files() if beside.search(p.read_text())] == []


def test_git_ignores_pretrained_checkpoints_and_bench_figures():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "pretrained/" in ignored  # negrl-pretrain's output, as the README runs it
    assert "bench.json" in ignored  # make bench's figures


def test_license_is_an_spdx_expression_without_deprecation_warnings():
    tomllib = pytest.importorskip("tomllib")
    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"
    # An SPDX string is a TOML table's replacement only from setuptools 77 on (PEP 639).
    assert "setuptools>=77" in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert [str(w.message) for w in caught if "license" in str(w.message).lower()] == []
