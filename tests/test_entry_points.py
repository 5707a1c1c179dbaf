"""Every public entry point resolves to code that exists: the console scripts, the modules `make` runs, the Hydra
`_target_`s of conf/ and the launcher plugin (a moved module would break one of them)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re

import tomllib
from conftest import ROOT
from hydra.utils import get_object


def test_the_console_scripts_load():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"negrl-report", "negrl-pretrain"}
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert {k: installed.get(k) for k in scripts} == scripts  # the installed package says the same


def test_the_modules_make_runs_and_python_m_negrl_report_exist():
    modules = set(re.findall(r"-m (negrl[\w.]*)", (ROOT / "Makefile").read_text()))
    assert modules == {"negrl.tools.bench", "negrl.tools.sweep_bench", "negrl.tools.figures"}
    for module in modules:
        assert callable(importlib.import_module(module).main)
    assert importlib.util.find_spec("negrl.report.__main__") is not None


def test_the_hydra_targets_of_conf_and_the_launcher_plugin_resolve():
    targets = {t for p in (ROOT / "conf").rglob("*.yaml") for t in re.findall(r"_target_: *([\w.]+)", p.read_text())}
    assert "negrl.cli.SweepSummary" in targets and "hydra_plugins.negrl_launcher.StackedLauncher" in targets
    for target in targets:
        assert get_object(target) is not None, target
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    assert "StackedLauncher" in {cls.__name__ for cls in Plugins.instance().discover(Launcher)}
