"""negrl-report's "Objectives compared" table: one row per objective, however many, with the paper's metric at its
max and final, the random control, held-out minus random, the membership AUCs and the attacks."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT
from test_report import CHANCE_26, complete_results, make_run, with_attacks

from negrl.report.groups import group_runs
from negrl.report.runs import load_runs
from negrl.report.tables import objectives_table

NAMES = ["dpo", "robust", "exo_pair", "nca_pair", "bco_pair", "kto", "wga"]


def test_objectives_table_has_a_row_per_objective_and_every_column(tmp_path: Path):
    for i, name in enumerate(NAMES):
        for seed in (0, 1):
            results = complete_results(CHANCE_26 + 0.01 * (i + seed), CHANCE_26 - 0.02)
            if name != "wga":  # a group without attacks: n/a there, the table still shown
                with_attacks(results, auc=0.5 + 0.01 * i)
            make_run(tmp_path, f"{name}/s{seed}", seed, results=results, objective={"name": name, "x": float(i)})
    header, table = objectives_table(group_runs(load_runs(tmp_path)))
    assert header[:10] == [
        "group", "n", "delta max (mean ± std)", "delta final", "control delta max", "control delta final",
        "p greater max", "held − random max", "held − random final", "paired p max",
    ]  # fmt: skip
    assert header[10:13] == [f"AUC held-out {a} (phase 3)" for a in ("loss", "min_k", "reference")]
    rows = {row[0]: row for row in table}
    assert set(rows) == {f"objective={n}" for n in NAMES}
    kto = rows["objective=kto"]  # i = 5: held-out max delta 0.055 ± 0.007, control -0.02, AUC 0.55
    assert kto[1:6] == ["2", "+0.0550 ± 0.0071", "+0.0550 ± 0.0071", "-0.0200 ± 0.0000", "-0.0200 ± 0.0000"]
    assert kto[10:13] == ["0.550 ± 0.000"] * 3
    assert rows["objective=wga"][10:] == ["n/a"] * 3 + ["n/a / n/a"] * 3


def test_the_report_orders_every_registered_objective_as_docs_objectives_md_lists_them():
    from negrl.method.objectives import OBJECTIVES
    from negrl.report.labels import OBJECTIVE_ORDER

    assert set(OBJECTIVE_ORDER) == set(OBJECTIVES) and OBJECTIVE_ORDER[0] == "dpo"
    listed = [line.split("`")[1] for line in (ROOT / "docs" / "objectives.md").read_text().splitlines()
              if line.startswith("| `") and line.split("`")[1] in OBJECTIVES]  # fmt: skip
    assert tuple(dict.fromkeys(listed)) == OBJECTIVE_ORDER
