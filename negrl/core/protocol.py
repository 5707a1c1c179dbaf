"""The fixed structure of the experiment: its phases, its evaluation sets, and the prefix each phase is
evaluated under (docs/experiment.md). Plain names, importable without torch."""

PHASES = (1, 2, 3)
EVAL_SETS = ("heldout", "useful", "random")
#: Prefix of each phase's evaluation (phases 1 and 2 regular, phase 3 reverse).
EVAL_PREFIX = {1: "regular", 2: "regular", 3: "reverse"}
#: Membership inference: its attacks, the member sets (negatives) and the non-member set (never trained on).
MIA_ATTACKS = ("loss", "min_k", "reference")
MIA_MEMBERS = ("heldout", "useful")
MIA_NONMEMBERS = "random"


def condition(phase: int, prefix: bool = True) -> str:
    """What a phase's evaluation is conditioned on: its prefix (`regular`, `reverse`), or `no prefix` in a run with
    `prefix=false` (the labels of the verdict, the report and the figures)."""
    return EVAL_PREFIX[phase] if prefix else "no prefix"
