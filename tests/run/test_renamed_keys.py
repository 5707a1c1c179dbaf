"""Keys renamed when phases 2-3 learned objectives other than DPO: the old names still work, with a notice."""

from __future__ import annotations

import pytest
import yaml
from conftest import make_cfg, make_cfg_dict
from omegaconf import OmegaConf

from negrl.cli import rename_deprecated
from negrl.core.errors import NegrlError
from negrl.run.checkpoint import resume_dir
from negrl.run.config import check_config
from negrl.run.rundir import RunDir


def test_old_names_on_the_command_line_become_the_new_ones_with_a_notice(capsys):
    argv = ["-m", "dpo.reference_cache=false", "+joint.dpo_weight=0.5", "seed=1", "~dpo.reference_cache"]
    assert rename_deprecated(argv) == [
        "-m", "reference.cache=false", "joint.objective_weight=0.5", "seed=1", "~reference.cache",
    ]  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "negrl: warning: dpo.reference_cache is now reference.cache; the old name still works for now, "
        "please use reference.cache"
    )
    assert len(err) == 3 and "joint.dpo_weight is now joint.objective_weight" in err[1]


def test_a_config_with_old_names_is_checked_under_the_new_ones(capsys):
    c = make_cfg_dict()
    c["dpo"]["reference_cache"] = False
    c["joint"]["dpo_weight"] = 0.5
    del c["reference"], c["joint"]["objective_weight"]
    checked = check_config(c)
    assert checked["reference"] == {"cache": False} and checked["joint"]["objective_weight"] == 0.5
    assert "reference_cache" not in checked["dpo"] and "dpo_weight" not in checked["joint"]
    assert capsys.readouterr().err.count("negrl: warning:") == 2


def test_a_run_written_under_the_old_names_is_resumed_as_the_same_config(tmp_path):
    c = check_config(make_cfg("reference.cache=false"))
    old = OmegaConf.to_container(OmegaConf.create(c))
    old["dpo"]["reference_cache"] = old.pop("reference")["cache"]
    old["joint"]["dpo_weight"] = old["joint"].pop("objective_weight")
    run = RunDir(tmp_path / "old")
    run.checkpoint.parent.mkdir(parents=True)
    run.checkpoint.write_bytes(b"x")
    run.config.write_text(yaml.safe_dump(old))
    assert resume_dir(str(run.path), "", c)[0] == run.path
    with pytest.raises(NegrlError, match=r"differs .* at reference.cache \(False -> True\)"):
        resume_dir(str(run.path), "", check_config(make_cfg()))
