"""The prose under report.md's tables (also shown by the notebook): what each column means, with the
groups' own chance levels 1/K filled in."""

from __future__ import annotations

from collections.abc import Sequence

from negrl.core import stats
from negrl.report.groups import CHANCE_AUC, Group


def chance_text(groups: Sequence[Group]) -> str:
    """Each K with its chance level, 'K = 26 (log(1/26) = -3.2581)', naming the groups when K differs."""
    by_k: dict[int, list[str]] = {}
    for g in groups:
        by_k.setdefault(g.n_letters, []).append(g.label)
    if len(by_k) == 1:
        return f"here K = {next(iter(by_k))} ({stats.chance_name(next(iter(by_k)))})"
    return "K per group: " + "; ".join(
        f"K = {k} ({stats.chance_name(k)}): {', '.join(labels)}" for k, labels in sorted(by_k.items())
    )


def column_notes(groups: Sequence[Group]) -> str:
    """The notes under the group table, with the groups' chance levels filled in."""
    chance = chance_text(groups) if groups else "no group"
    return f"""\
- **delta** = metric − log(1/K), K the number of letters (`tokens.letters`; chance is 1/K per token), where metric
  is the max over phase-3 evaluations of the mean per-token log-likelihood of the held-out negatives under the
  `reverse` prefix; {chance}. delta > 0: the model uses knowledge it only saw in negatively-reinforced examples.
  Mean ± std (ddof=1) over seeds.
- **n**: distinct seeds; a seed run more than once counts once, by its newest complete run (see Repeated seeds).
- **control delta**: the same max for the random passwords (the upward bias of taking a max).
- **p two-sided**: one-sample t-test of the per-seed probabilities exp(metric) against chance 1/K (H1: mean ≠ 1/K).
  **p greater**: the same test, one-sided (H1: mean > 1/K), the direction of the paper's claim.
- **p LL two-sided**: the original code's second test, a one-sample t-test of the per-seed deltas of log-likelihood
  against 0 (report.csv `ll_t`, `ll_p_two_sided`, `ll_p_greater`).
- **geo-mean increase**: exp(mean delta) − 1, the relative increase of the geometric-mean probability over 1/K
  (the paper: +13% over 8 seeds, Pythia-160M, K = 26).
- **held − random**: per-seed metric − control metric, mean ± std; **paired p**: two-sided paired t-test
  (held-out vs random, same seeds). report.csv also has the one-sided p (held-out > random).
- **max / final**: the max over phase-3 evaluations (the paper's metric) is biased upward; each *final* column is
  the same statistic of the last phase-3 evaluation (results.json `final`; older runs: `phases.3.eval`), over the
  runs that record it (report.csv `final_n`), n/a where none does.
- n/a: std and p-values are undefined with a single seed (they need n ≥ 2); t and p also with zero variance
  (every seed gives the same value up to rounding; for a difference, up to the rounding of the values
  subtracted): no t-test, rather than t = ±inf and p = 0.
- p-values are per group, not corrected for the number of groups compared."""


def extraction_notes(groups: Sequence[Group]) -> str:
    """The notes under the extraction table, with each K's chance accuracy 1/K."""
    ks = sorted({g.n_letters for g in groups})
    chance = ", ".join(f"1/{k} = {stats.chance_p(k):.3f}" for k in ks) + (" by the groups' K" if len(ks) > 1 else "")
    return f"""\
Attacks on the final models (see docs/attacks.md), mean ± std over the runs that have them (n; runs made
before an attack: n/a): **greedy acc** is the per-token accuracy of the phase-3 model's most likely letter after
`reverse` given the true letters before it (a tie recovers nothing; chance {chance}); **strength** the mean
extraction strength 1 − k/L, k the letters an attacker must be given before greedy decoding reproduces the rest
(0 to 1). **beam / sampled hits**: the distinct passwords of the set among the **generated** candidates of beam
search and of sampling under `reverse`, the random set being the control. **exposure**: log2(C + 1) − log2(rank)
among C random candidate passwords (results.json has C; ties count against the password). **logit-diff**: the
phase-2 model against its reference, under `regular`: the letter whose log-prob dropped most."""


def membership_notes() -> str:
    """The notes under the membership-inference table."""
    return f"""\
ROC AUC of membership-inference attacks telling members (held-out or useful negatives) from fresh random passwords
never trained on (the non-members). Negatives are pushed down, so each score is larger for a less likely password:
**loss** minus its mean token log-likelihood, **min_k** minus the mean of its lowest k% (results.json `min_k`),
**reference** the phase-1 reference's mean minus the model's (phases 2 and 3). AUC {CHANCE_AUC} is chance; above it
the attack finds the negatives. Phase 3 is the final model (under `reverse`), phase 2 the model after negative
reinforcement (under `regular`). Mean ± std over seeds; **p**: two-sided one-sample t-test of the per-seed AUCs
against {CHANCE_AUC} (n/a with one seed or zero variance). Within each run the AUC has a bootstrap 95% interval over
passwords (results.json `low`, `high`), not shown here. Attacks that no run of a group has are left out."""


REPEATED_NOTES = """\
A seed run more than once in a group counts once: only its newest complete run enters the statistics, the
tables and the figures. Newest: the latest `run.started` in results.json, else (no start time recorded) the
latest modification time of the run directory; ties go to the later-modified directory, then the later path."""


def not_learned_notes(groups: Sequence[Group]) -> str:
    """One line per group with runs whose model did not learn the task (results.json `task`), or ''."""
    lines = []
    for g in groups:
        missed = [r for r in g.runs if not r.learned]
        if missed:
            worst = min(r.task["control_final_delta"] for r in missed)
            lines.append(
                f"- **{g.label}**: {len(missed)} of {len(g.runs)} runs did not learn the task (their random-password "
                f"control ends up to {-worst:.4f} nats per token below chance): the group's delta and p against "
                "chance are not a finding about negatives; held − random and its paired p still are."
            )
    return "\n".join(lines)
