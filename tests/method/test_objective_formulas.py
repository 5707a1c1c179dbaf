"""Every objective's loss AND gradient on one hand-made batch against its published formula, written out again here
independently in float64 (plain exp/log, explicit loops where the paper sums), with the edge each paper names."""

from __future__ import annotations

import math

import pytest
import torch

from negrl.method.objectives import DEFAULTS, NEEDS, OBJECTIVES, PreferenceBatch, objective_loss, rmu_direction

# Three pairs of 4-label sequences: per-token log-probs of the policy, the reference's sequence log-probs.
CHOSEN = [[-0.3, -1.2, -2.0, -0.7], [-1.5, -0.2, -0.9, -2.4], [-0.8, -0.8, -1.1, -0.4]]
REJECTED = [[-2.2, -0.6, -1.4, -3.0], [-0.5, -1.9, -0.3, -1.0], [-1.7, -2.5, -0.9, -0.6]]
REF_CHOSEN = [-5.0, -5.0, -3.9]
REF_REJECTED = [-6.5, -4.1, -5.0]
V, D = 5, 6  # the vocabulary of the hand-made logits, the width of the hand-made hidden states
GEN = torch.Generator().manual_seed(1234)
LOGITS = torch.randn(3, 4, V, generator=GEN, dtype=torch.float64) * 2
REF_LOGITS = torch.randn(3, 4, V, generator=GEN, dtype=torch.float64) * 2
LABELS = torch.randint(0, V, (3, 4), generator=GEN)
HIDDEN = {k: torch.randn(3, 4, D, generator=GEN, dtype=torch.float64) for k in ("hidden/chosen", "hidden/rejected")}
REF_HIDDEN = torch.randn(3, 4, D, generator=GEN, dtype=torch.float64)


def leaves(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The batch's differentiable inputs (the policy's), fresh leaves in `dtype`."""
    values = {"chosen": torch.tensor(CHOSEN), "rejected": torch.tensor(REJECTED), "logits/rejected": LOGITS, **HIDDEN}
    return {k: v.to(dtype).clone().requires_grad_(True) for k, v in values.items()}


def make_batch(x: dict[str, torch.Tensor]) -> PreferenceBatch:
    dtype = x["chosen"].dtype
    extra = {k: x[k] for k in ("logits/rejected", "hidden/chosen", "hidden/rejected")}
    extra |= {"ref_logits/rejected": REF_LOGITS.to(dtype), "labels/rejected": LABELS,
              "ref_hidden/chosen": REF_HIDDEN.to(dtype)}  # fmt: skip
    return PreferenceBatch(x["chosen"], x["rejected"], torch.tensor(REF_CHOSEN, dtype=dtype),
                           torch.tensor(REF_REJECTED, dtype=dtype), extra=extra)  # fmt: skip


# ---- the published formulas, per pair, in float64 ---------------------------------------------------------
def sig(x):
    return 1 / (1 + torch.exp(-x))


def logsig(x):
    return torch.log(sig(x))


def pairs(x):
    """Per pair: log p(c), log p(r) (sums), lc, lr (log-ratios), mean-token ac, ar."""
    pc, pr = x["chosen"].sum(1), x["rejected"].sum(1)
    rc, rr = torch.tensor(REF_CHOSEN, dtype=torch.float64), torch.tensor(REF_REJECTED, dtype=torch.float64)
    return pc, pr, pc - rc, pr - rr, x["chosen"].sum(1) / 4, x["rejected"].sum(1) / 4


def nll(tokens):
    return -tokens.sum() / tokens.numel()


def mean(values):
    return sum(values) / len(values)


def f_dpo(x, beta, label_smoothing):
    _, _, lc, lr, _, _ = pairs(x)
    e = label_smoothing
    return mean([-(1 - e) * logsig(beta * (lc[i] - lr[i])) - e * logsig(-beta * (lc[i] - lr[i])) for i in range(3)])


def f_robust(x, beta, label_smoothing):  # Chowdhury et al. 2024, eq. 8
    _, _, lc, lr, _, _ = pairs(x)
    e, h = label_smoothing, lc - lr
    return mean([((1 - e) * -logsig(beta * h[i]) - e * -logsig(-beta * h[i])) / (1 - 2 * e) for i in range(3)])


def f_exo_pair(x, beta, label_smoothing):  # KL(q || p_rh), q = softmax over {c, r} of beta log-ratios
    _, _, lc, lr, _, _ = pairs(x)
    e, out = label_smoothing, []
    for i in range(3):
        qc = torch.exp(beta * lc[i]) / (torch.exp(beta * lc[i]) + torch.exp(beta * lr[i]))
        out.append(qc * torch.log(qc / (1 - e)) + (1 - qc) * torch.log((1 - qc) / e))
    return mean(out)


def f_nca_pair(x, beta):
    _, _, lc, lr, _, _ = pairs(x)
    return mean([-logsig(beta * lc[i]) - 0.5 * logsig(-beta * lc[i]) - 0.5 * logsig(-beta * lr[i]) for i in range(3)])


def f_bco_pair(x, beta):
    _, _, lc, lr, _, _ = pairs(x)
    return mean([-logsig(beta * lc[i]) - logsig(-beta * lr[i]) for i in range(3)])


def f_sppo_hard(x, beta):  # P(c wins) = 1, P(r wins) = 0 in (log-ratio - beta^-1 (P - 1/2))^2
    _, _, lc, lr, _, _ = pairs(x)
    return mean([(lc[i] - (1 - 0.5) / beta) ** 2 + (lr[i] - (0 - 0.5) / beta) ** 2 for i in range(3)])


def f_aot(x, beta, label_smoothing):
    pc, pr, _, _, _, _ = pairs(x)
    policy = sorted(pc - pr, key=lambda v: v.item())
    ref = sorted([c - r for c, r in zip(REF_CHOSEN, REF_REJECTED)])
    e = label_smoothing
    return mean([-(1 - e) * logsig(beta * (p - q)) - e * logsig(-beta * (p - q)) for p, q in zip(policy, ref)])


def f_aot_pair(x, beta, label_smoothing):
    _, _, lc, lr, _, _ = pairs(x)
    e = label_smoothing
    d = [c - r for c, r in zip(sorted(lc, key=lambda v: v.item()), sorted(lr, key=lambda v: v.item()))]
    return mean([-(1 - e) * logsig(beta * v) - e * logsig(-beta * v) for v in d])


def f_apo_zero(x, beta):
    _, _, lc, lr, _, _ = pairs(x)
    return mean([(1 - sig(beta * lc[i])) + sig(beta * lr[i]) for i in range(3)])


def f_apo_down(x, beta):
    _, _, lc, lr, _, _ = pairs(x)
    return mean([sig(beta * lc[i]) + (1 - sig(beta * (lc[i] - lr[i]))) for i in range(3)])


def f_discopop(x, beta, tau):
    _, _, lc, lr, _, _ = pairs(x)
    out = []
    for i in range(3):
        rho = beta * (lc[i] - lr[i])
        m = sig(rho / tau)
        out.append((1 - m) * -logsig(rho) + m * torch.exp(-rho))
    return mean(out)


def kto_z(*logratios) -> float:
    """KTO's reference point, a constant: max(0, mean log-ratio of the batch's sequences)."""
    values = [v.item() for lr in logratios for v in lr]
    return max(0.0, sum(values) / len(values))


def f_kto(x, beta, desirable_weight, undesirable_weight):
    _, _, lc, lr, _, _ = pairs(x)
    z = kto_z(lc, lr)
    terms = [desirable_weight * (1 - sig(beta * (lc[i] - z))) for i in range(3)]
    terms += [undesirable_weight * (1 - sig(beta * (z - lr[i]))) for i in range(3)]
    return mean(terms)


def f_kto_undesirable(x, beta, undesirable_weight):
    _, _, _, lr, _, _ = pairs(x)
    z = kto_z(lr)
    return mean([undesirable_weight * (1 - sig(beta * (z - lr[i]))) for i in range(3)])


def f_orpo(x, beta):  # odds(y) = P / (1 - P), P the mean-token probability exp(a)
    _, _, _, _, ac, ar = pairs(x)
    odds = [torch.exp(ac[i]) / (1 - torch.exp(ac[i])) / (torch.exp(ar[i]) / (1 - torch.exp(ar[i]))) for i in range(3)]
    return nll(x["chosen"]) - beta * mean([logsig(torch.log(o)) for o in odds])


def f_cpo(x, beta, alpha):
    pc, pr, _, _, _, _ = pairs(x)
    return mean([-logsig(beta * (pc[i] - pr[i])) for i in range(3)]) + alpha * nll(x["chosen"])


def f_simpo(x, beta, gamma):
    _, _, _, _, ac, ar = pairs(x)
    return mean([-logsig(beta * ac[i] - beta * ar[i] - gamma) for i in range(3)])


def f_grad_diff(x, gamma, alpha):
    return gamma * -nll(x["rejected"]) + alpha * nll(x["chosen"])


def f_wga(x, beta, gamma, alpha):
    r = x["rejected"]
    weight = torch.tensor([[math.exp(beta * v) for v in row] for row in r.tolist()])  # p^beta, a constant
    return gamma * -(weight * -r).sum() / r.numel() + alpha * nll(x["chosen"])


def f_undial(x, beta, gamma, alpha):
    logits, total = x["logits/rejected"], 0
    for i in range(3):
        for t in range(4):
            shifted = REF_LOGITS[i, t].clone()
            shifted[LABELS[i, t]] -= beta
            target = torch.exp(shifted) / torch.exp(shifted).sum()
            log_q = logits[i, t] - torch.log(torch.exp(logits[i, t]).sum())
            total = total - (target * log_q).sum()
    return gamma * total / 12 + alpha * nll(x["chosen"])


def f_rmu(x, steering_coeff, gamma, alpha, layer):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(D, generator=g, dtype=torch.float64)
    u = u / torch.sqrt((u**2).sum()) * steering_coeff
    forget = ((x["hidden/rejected"] - u) ** 2).sum() / (3 * 4 * D)
    retain = ((x["hidden/chosen"] - REF_HIDDEN) ** 2).sum() / (3 * 4 * D)
    return gamma * forget + alpha * retain


def f_ipo(x, tau):  # per sequence (the paper's); TRL divides each log-ratio by the length first
    _, _, lc, lr, _, _ = pairs(x)
    return mean([(lc[i] - lr[i] - 1 / (2 * tau)) ** 2 for i in range(3)])


def f_hinge(x, delta):
    pc, pr, _, _, _, _ = pairs(x)
    return mean([torch.clamp(delta - pc[i] + pr[i], min=0) for i in range(3)])


def f_npo(x, beta):
    _, _, _, lr, _, _ = pairs(x)
    return mean([-(2 / beta) * logsig(-beta * lr[i]) for i in range(3)])


def f_simnpo(x, beta, gamma):  # the paper's gamma; open-unlearning's delta = gamma / beta
    _, _, _, _, _, ar = pairs(x)
    return mean([-(2 / beta) * logsig(-beta * ar[i] - gamma) for i in range(3)])


def f_unlikelihood(x, alpha):
    r = x["rejected"]
    return nll(x["chosen"]) + alpha * (-torch.log(1 - torch.exp(r))).sum() / r.numel()


def f_grad_ascent(x):
    return -nll(x["rejected"])


FORMULAS = {name[2:]: fn for name, fn in globals().items() if name.startswith("f_")}
FORMULAS["dpo"] = f_dpo
#: The defaults, and the edges each paper names.
CASES = [(name, {}) for name in DEFAULTS] + [
    ("dpo", {"label_smoothing": 0.2}),  # cDPO
    ("robust", {"label_smoothing": 0.0}),  # rDPO's epsilon at 0: DPO
    ("robust", {"label_smoothing": 0.3}),
    ("simpo", {"gamma": 0.0}),
    ("simpo", {"gamma": 3.0}),
    ("aot", {"label_smoothing": 0.1}),
    ("kto", {"desirable_weight": 1.33, "undesirable_weight": 0.5}),
    ("wga", {"beta": 2.0}),
    ("undial", {"alpha": 0.5}),
    ("rmu", {"steering_coeff": 6.5, "alpha": 3.0}),
    ("simnpo", {"gamma": 1.5}),
]


def test_every_registered_objective_has_its_formula_here():
    assert set(FORMULAS) == set(OBJECTIVES)


@pytest.mark.parametrize(("name", "override"), CASES, ids=[f"{n}-{o}" if o else n for n, o in CASES])
def test_loss_and_gradient_match_the_published_formula(name, override):
    params = {**DEFAULTS[name], **override}
    x32, x64 = leaves(torch.float32), leaves(torch.float64)
    loss = objective_loss(name, make_batch(x32), {k: float(v) for k, v in params.items()})
    expected = FORMULAS[name](x64, **params)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    loss.backward()
    expected.backward()
    for key in x32:
        got = x32[key].grad if x32[key].grad is not None else torch.zeros_like(x32[key])
        want = x64[key].grad if x64[key].grad is not None else torch.zeros_like(x64[key])
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6, msg=f"{name}: d loss / d {key}")


def test_the_formulas_see_what_each_objective_reads():
    """The hand-made extras (logits, hidden states) reach exactly the objectives that declare them."""
    assert {n for n, needs in NEEDS.items() if needs} == {"undial", "rmu"}
    assert NEEDS["undial"].logits == ("rejected",) and NEEDS["undial"].ref_logits == ("rejected",)
    assert NEEDS["rmu"].hidden == ("chosen", "rejected") and NEEDS["rmu"].ref_hidden == ("chosen",)


# ---- the edges, each one shown to matter ------------------------------------------------------------------
def _grads(name, params, x):
    objective_loss(name, make_batch(x), params).backward()
    return x["chosen"].grad, x["rejected"].grad


def test_kto_reference_point_is_clamped_at_zero_and_carries_no_gradient():
    params = {k: float(v) for k, v in DEFAULTS["kto"].items()}
    x = leaves(torch.float64)
    _, _, lc, lr, _, _ = pairs(x)
    assert kto_z(lc, lr) > 0  # this batch: the policy is above the reference on average
    # shifted down: the mean log-ratio is negative, z = max(0, .) = 0 and the loss is KTO's with z = 0
    down = {k: (v.detach() - 2.0).requires_grad_(True) if k in ("chosen", "rejected") else v for k, v in x.items()}
    _, _, lc_d, lr_d, _, _ = pairs(down)
    assert torch.cat([lc_d, lr_d]).sum() < 0
    at_zero = mean([1 - sig(0.1 * lc_d[i]) for i in range(3)] + [1 - sig(0.1 * -lr_d[i]) for i in range(3)])
    assert objective_loss("kto", make_batch(down), params).item() == pytest.approx(at_zero.item(), rel=1e-12)
    # with a gradient through z the chosen tokens' gradient would differ: the test above compares without it
    x_live = leaves(torch.float64)
    _, _, lc, lr, _, _ = pairs(x_live)
    z = torch.cat([lc, lr]).mean()
    live = mean([1 - sig(0.1 * (lc[i] - z)) for i in range(3)] + [1 - sig(0.1 * (z - lr[i])) for i in range(3)])
    live.backward()
    assert not torch.allclose(_grads("kto", params, leaves(torch.float64))[0], x_live["chosen"].grad)


def test_wga_weight_carries_no_gradient():
    params = {k: float(v) for k, v in DEFAULTS["wga"].items()}
    x = leaves(torch.float64)
    _, rejected = _grads("wga", params, x)
    # d/d lp of sg(p) lp is p / n; with the weight differentiated it would be (p + p lp) / n
    p = torch.tensor(REJECTED, dtype=torch.float64).exp()
    torch.testing.assert_close(rejected, p / 12)


def test_rdpo_epsilon_scales_as_the_paper_says():
    base = {k: float(v) for k, v in DEFAULTS["robust"].items()}
    dpo = objective_loss("dpo", make_batch(leaves(torch.float64)), {"beta": 0.1, "label_smoothing": 0.0})
    at0 = objective_loss("robust", make_batch(leaves(torch.float64)), {**base, "label_smoothing": 0.0})
    assert at0.item() == pytest.approx(dpo.item(), rel=1e-12)
    assert objective_loss("robust", make_batch(leaves(torch.float64)), base).item() != pytest.approx(dpo.item())


def test_simpo_gamma_is_in_the_papers_units_and_simnpo_matches_open_unlearnings_delta():
    x = make_batch(leaves(torch.float64))
    ac, ar = x.chosen.mean(1), x.rejected.mean(1)
    for gamma in (0.0, 1.0, 3.0):
        want = -torch.nn.functional.logsigmoid(2.0 * (ac - ar) - gamma).mean()
        assert objective_loss("simpo", x, {"beta": 2.0, "gamma": gamma}).item() == pytest.approx(want.item())
    # open-unlearning's SimNPO: -(2/beta) log sigmoid(beta (NLL_mean - delta)), delta = gamma / beta
    beta, gamma = 2.5, 1.5
    delta = gamma / beta
    theirs = (-torch.nn.functional.logsigmoid(beta * (-ar - delta)) * 2 / beta).mean()
    assert objective_loss("simnpo", x, {"beta": beta, "gamma": gamma}).item() == pytest.approx(theirs.item())


def test_ipo_tau_is_per_sequence_not_per_token():
    x = make_batch(leaves(torch.float64))
    lc, lr = x.logratios
    ours = ((lc - lr - 1 / (2 * 0.1)) ** 2).mean()
    trl = ((lc / 4 - lr / 4 - 1 / (2 * 0.1)) ** 2).mean()  # TRL: each log-ratio divided by the length
    got = objective_loss("ipo", x, {"tau": 0.1}).item()
    assert got == pytest.approx(ours.item()) and got != pytest.approx(trl.item())
    # TRL's tau is negrl's tau / L (L = 4 tokens here), scaled by 1 / L^2: a target margin L times larger, a weaker
    # regularisation (docs/objectives.md)
    assert trl.item() == pytest.approx(objective_loss("ipo", x, {"tau": 0.1 / 4}).item() / 16, rel=1e-12)


def test_rmu_direction_is_fixed_with_the_norm_asked():
    like = torch.zeros(1, dtype=torch.float32)
    u = rmu_direction(64, 6.5, like)
    assert u.dtype == torch.float32 and u.norm().item() == pytest.approx(6.5, rel=1e-6)
    assert torch.equal(u, rmu_direction(64, 6.5, like)) and (u >= 0).all()


def test_discopop_at_its_defaults_trains_the_rejected_up_where_training_starts():
    """DiscoPOP's loss f(x), x = beta (lc - lr), is not monotone at its defaults (tau 0.05): at x = 0, where phase 2
    starts (the policy is the reference), df/dx = (1 - log 2) / (4 tau) - 3/4 = +0.7843 > 0, so gradient descent
    lowers the margin, i.e. raises the rejected sequence against the chosen, down to a local minimum at x = -0.119
    (docs/objectives.md). DPO's -log sigmoid(x) has df/dx = -1/2 there."""
    tau = DEFAULTS["discopop"]["tau"]
    zero = {"chosen": torch.zeros(1, 4, dtype=torch.float64, requires_grad=True),
            "rejected": torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)}  # fmt: skip
    batch = PreferenceBatch(zero["chosen"], zero["rejected"], torch.zeros(1, dtype=torch.float64),
                            torch.zeros(1, dtype=torch.float64))  # fmt: skip
    objective_loss("discopop", batch, DEFAULTS["discopop"]).backward()
    beta = DEFAULTS["discopop"]["beta"]
    slope = (1 - math.log(2)) / (4 * tau) - 0.75  # df/dx at 0: m(1 - m) / tau (exp - softplus) + the two slopes / 2
    assert slope == pytest.approx(0.7843, abs=1e-4)
    # d loss / d (each token's log p of the rejected) = -beta df/dx < 0: a descent step raises the rejected sequence
    assert zero["rejected"].grad.flatten().tolist() == pytest.approx([-beta * slope] * 4, rel=1e-9)
    assert zero["chosen"].grad.flatten().tolist() == pytest.approx([beta * slope] * 4, rel=1e-9)
    x = torch.linspace(-0.5, 0.5, 100001, dtype=torch.float64)
    m = torch.sigmoid(x / tau)
    f = (1 - m) * -torch.nn.functional.logsigmoid(x) + m * torch.exp(-x)
    turns = torch.nonzero(torch.diff(torch.sign(torch.diff(f)))).flatten()
    assert [round(x[i + 1].item(), 3) for i in turns] == [-0.119, 0.072]  # a local minimum, then a local maximum
