"""How a report names and orders things: knob values as YAML spells them, their sort order, file-name slugs, the
short names figures give groups.

Shared by the grouping (`groups`), the tables (`tables`) and the figures (`figures`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

#: Models by size, for ordering groups and the x axis of `fig_models.png`.
MODEL_ORDER = ("tiny", "tiny-h128", "tiny-h256", "pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b")
#: Objectives in the order of docs/objectives.md (the paper's DPO first), for ordering groups.
OBJECTIVE_ORDER = ("dpo", "ipo", "hinge", "npo", "simnpo", "unlikelihood", "grad_ascent", "robust", "exo_pair",
                   "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_pair", "apo_zero", "apo_down", "discopop", "kto",
                   "kto_undesirable", "orpo", "cpo", "simpo", "grad_diff", "wga", "undial", "rmu")  # fmt: skip


def fmt_value(value: Any) -> str:
    """A config value as YAML would spell it: true/false/null, 0.05, text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def sort_value(value: Any, key: str = "") -> tuple[int, float, str]:
    """Sort order of a knob value: models by size, true before false (the defaults), numbers, then text."""
    if key == "model" and value in MODEL_ORDER:
        return (0, MODEL_ORDER.index(value), "")
    if key == "objective" and value in OBJECTIVE_ORDER:
        return (0, OBJECTIVE_ORDER.index(value), "")
    if isinstance(value, bool):
        return (0, 0 if value else 1, "")
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


#: Longest group slug in a file name; longer labels keep their start and a hash of the whole label.
MAX_SLUG = 80


def slug(label: str) -> str:
    """A file-name-safe form of a group label ('holdout_frac=0.1' -> 'holdout_frac-0.1'), at most `MAX_SLUG`
    characters: a label naming many knobs keeps its start plus a short hash, so names stay distinct."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("=", "-")).strip("_") or "group"
    if len(text) <= MAX_SLUG:
        return text
    return f"{text[: MAX_SLUG - 9]}-{hashlib.sha1(label.encode()).hexdigest()[:8]}"


#: Longest group label a figure writes on an axis; with any longer, every group is named G1, G2, ... there and a
#: key under the plot gives each name's full label.
MAX_NAME = 28


def group_names(labels: Sequence[str], limit: int = MAX_NAME) -> list[str]:
    """What a figure calls each group on its axis: the labels themselves if all fit in `limit` characters, else
    G1, G2, ... in order (the figure's key spells them out)."""
    if all(len(label) <= limit for label in labels):
        return list(labels)
    return [f"G{i}" for i in range(1, len(labels) + 1)]
