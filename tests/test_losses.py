"""mlrkit.losses against the papers' formulas written element by element with explicit loops,
torch's own losses where they coincide, autograd.gradcheck in float64, and the real VOC2007
partial-label files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlrkit.losses import create_loss, list_losses
from mlrkit.registry import UnknownNameError

ALL = ["an", "an_ls", "asl", "bce", "em", "em_apl", "iun", "l1_distill",
       "multilabel_soft_margin", "partial_asl", "partial_bce", "ranking", "wan"]
TARGET_LOSSES = [n for n in ALL if n != "l1_distill"]
IGNORING = ["bce", "multilabel_soft_margin", "asl", "partial_bce", "partial_asl", "iun",
            "ranking"]


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def case(b: int = 3, c: int = 4, seed: int = 0, unknown: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, generator=g, dtype=torch.float64) * 2
    t = torch.where(torch.rand(b, c, generator=g) < 0.4, 1, -1).to(torch.int8)
    if unknown:
        t[torch.rand(b, c, generator=g) < 0.3] = 0
        t[0, 0], t[0, 1], t[1, 2] = 1, 0, -1  # at least one of each
    return x, t


# ------------------------------------------------------------------------------ registry
def test_registry_lists_every_loss_and_rejects_bad_options():
    assert list_losses() == sorted(ALL)
    with pytest.raises(UnknownNameError, match="available: an, an_ls"):
        create_loss("focal")
    with pytest.raises(ValueError, match="unknown option.*gamma_nge.*accepted: gamma_pos"):
        create_loss("asl", gamma_nge=3)
    with pytest.raises(ValueError, match="reduction"):
        create_loss("bce", reduction="none")


@pytest.mark.parametrize("name", TARGET_LOSSES)
def test_bad_inputs_raise_clear_errors(name):
    loss = create_loss(name)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same"):
        loss(x, torch.ones(2, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="value 2 at row 1, column 0"):
        loss(x, torch.tensor([[1, -1, 0], [2, 1, 1]]))
    with pytest.raises(ValueError, match="floating-point"):
        loss(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        loss(torch.zeros(3), torch.ones(1, 3))


# ----------------------------------------------------------------------- BCE family
def test_bce_equals_torch_on_full_and_known_subset():
    x, t = case(6, 5, unknown=False)
    y = (t == 1).double()
    assert torch.allclose(create_loss("bce")(x, t), F.binary_cross_entropy_with_logits(x, y))
    assert torch.allclose(create_loss("bce", reduction="sum")(x, t),
                          F.binary_cross_entropy_with_logits(x, y, reduction="sum"))
    x, t = case(6, 5, seed=2)
    k = t != 0
    ref = F.binary_cross_entropy_with_logits(x[k], (t[k] == 1).double())
    assert torch.allclose(create_loss("bce")(x, t), ref)


def test_multilabel_soft_margin_equals_torch_and_loop():
    x, t = case(6, 5, unknown=False)
    ref = torch.nn.MultiLabelSoftMarginLoss()(x, (t == 1).double())
    assert torch.allclose(create_loss("multilabel_soft_margin")(x, t), ref)
    x, t = case(5, 4, seed=3)
    t[4] = 0  # an image with no known label contributes nothing
    per_image = []
    for i in range(4):
        terms = [-math.log(sig(x[i, c])) if t[i, c] == 1 else -math.log(1 - sig(x[i, c]))
                 for c in range(4) if t[i, c] != 0]
        per_image.append(sum(terms) / len(terms))
    out = create_loss("multilabel_soft_margin")(x, t)
    assert out.item() == pytest.approx(sum(per_image) / 4, rel=1e-12)


# --------------------------------------------------------------------------------- ASL
def asl_loop(x, t, gp, gn, m, partial=False) -> float:
    """ASL eq. 1-4 term by term: L+ = (1-p)^g+ log p, L- = p_m^g- log(1-p_m), p_m = max(p-m,0)."""
    total = 0.0
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            p = sig(float(x[i, c]))
            if t[i, c] == 1:
                total -= (1 - p) ** gp * math.log(p)
            elif t[i, c] == -1:
                pm = max(p - m, 0.0)
                total -= pm ** gn * math.log(1 - pm)
    return total


@pytest.mark.parametrize("gp, gn, m", [(0, 4, 0.05), (1, 4, 0.05), (2, 1, 0.0), (0, 0, 0.2)])
def test_asl_equals_elementwise_formula(gp, gn, m):
    x, t = case(3, 4, seed=1)
    ref = asl_loop(x, t, gp, gn, m)
    out_sum = create_loss("asl", reduction="sum", gamma_pos=gp, gamma_neg=gn, clip=m)(x, t)
    out_mean = create_loss("asl", gamma_pos=gp, gamma_neg=gn, clip=m)(x, t)
    assert out_sum.item() == pytest.approx(ref, rel=1e-12)
    assert out_mean.item() == pytest.approx(ref / int((t != 0).sum()), rel=1e-12)


def test_asl_defaults_are_the_papers():
    loss = create_loss("asl")
    assert (loss.gamma_pos, loss.gamma_neg, loss.clip, loss.eps) == (0.0, 4.0, 0.05, 1e-8)
    assert loss.detach_focal_weight is True


def test_asl_detached_focal_weight_gradient_is_analytic():
    x, t = case(3, 4, seed=4)
    gp, gn, m = 1.0, 4.0, 0.05
    expected = torch.zeros_like(x)
    for i in range(3):
        for c in range(4):
            p = sig(float(x[i, c]))
            if t[i, c] == 1:  # d/dx [-w log p] with w = (1-p)^g+ held fixed
                expected[i, c] = -((1 - p) ** gp) * (1 - p)
            elif t[i, c] == -1:  # d/dx [-w log(1-p+m)] with w = p_m^g- held fixed
                w = max(p - m, 0.0) ** gn
                expected[i, c] = w * p * (1 - p) / (1 - p + m)
    x = x.clone().requires_grad_(True)
    create_loss("asl", reduction="sum", gamma_pos=gp, gamma_neg=gn, clip=m)(x, t).backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)
    x.grad = None
    create_loss("asl", reduction="sum", gamma_pos=gp, gamma_neg=gn, clip=m,
                detach_focal_weight=False)(x, t).backward()
    assert not torch.allclose(x.grad, expected)


def test_partial_asl_equals_sdcsp_formula():
    x, t = case(3, 4, seed=6)
    loss = create_loss("partial_asl")  # defaults gamma_pos=1, gamma_neg=2, m=0.05
    ref = asl_loop(x, t, 1, 2, 0.05)
    assert loss(x, t).item() == pytest.approx(ref / 3, rel=1e-12)  # per-image sums, batch mean
    assert create_loss("partial_asl", reduction="sum")(x, t).item() == pytest.approx(ref)


# -------------------------------------------------------------------------- partial BCE
def partial_bce_loop(x, t, alpha, beta, gamma) -> float:
    b, c = t.shape
    total = 0.0
    for i in range(b):
        known = [j for j in range(c) if t[i, j] != 0]
        g = alpha * (len(known) / c) ** gamma + beta
        s = sum(math.log(sig(x[i, j])) if t[i, j] == 1 else math.log(1 - sig(x[i, j]))
                for j in known)
        total += -g / c * s
    return total / b


def test_partial_bce_normalization_from_the_paper():
    # g(0.1) = 5 and g(1) = 1 with gamma = 1: solve alpha * p + beta = g at both points
    alpha, beta = np.linalg.solve([[0.1, 1.0], [1.0, 1.0]], [5.0, 1.0])
    loss = create_loss("partial_bce")
    assert (loss.alpha, loss.beta) == (pytest.approx(alpha), pytest.approx(beta))
    x, t = case(4, 10, seed=7)
    assert loss(x, t).item() == pytest.approx(partial_bce_loop(x, t, alpha, beta, 1.0),
                                              rel=1e-12)
    # one known label of 10 -> weight g(0.1)/C = 5/10 on its BCE term
    x1 = torch.tensor([[0.3] + [0.0] * 9], dtype=torch.float64)
    t1 = torch.tensor([[1] + [0] * 9])
    assert loss(x1, t1).item() == pytest.approx(-0.5 * math.log(sig(0.3)))
    custom = create_loss("partial_bce", gamma=-1.0, alpha=1.0, beta=0.0)
    assert custom(x, t).item() == pytest.approx(partial_bce_loop(x, t, 1.0, 0.0, -1.0))


def test_partial_bce_on_real_voc_partial_labels(data_dir):
    path = data_dir / "voc2007" / "partial" / "train_proportion_0.3.txt"
    rows = path.read_text().splitlines()[:32]
    t = torch.tensor([[int(float(v)) for v in r.split(",")] for r in rows], dtype=torch.int8)
    assert t.shape == (32, 20) and bool((t == 0).any())
    x = torch.randn(32, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha, beta = -4.0 / 0.9, 1.0 + 4.0 / 0.9
    out = create_loss("partial_bce")(x, t).item()
    assert out == pytest.approx(partial_bce_loop(x, t, alpha, beta, 1.0), rel=1e-12)


# ---------------------------------------------------------------------- single positive
def spl_case():
    x, _ = case(4, 5, seed=9)
    t = torch.zeros(4, 5, dtype=torch.int8)
    t[0, 1] = t[1, 0] = t[2, 4] = t[3, 2] = 1  # one observed positive per image
    t[3, 3] = -1  # a known negative
    return x, t


def test_assume_negative_family_equals_cole_formulas():
    x, t = spl_case()
    b, c = t.shape
    lp = lambda v: math.log(sig(v))  # noqa: E731
    ln = lambda v: math.log(1 - sig(v))  # noqa: E731
    an = an_ls = wan = iun = 0.0
    e, w = 0.1, 1 / (c - 1)
    for i in range(b):
        for j in range(c):
            v = float(x[i, j])
            if t[i, j] == 1:
                an -= lp(v)
                an_ls -= (1 - e) * lp(v) + e * ln(v)
                wan -= lp(v)
                iun -= lp(v)
            else:
                an -= ln(v)
                an_ls -= (1 - e) * ln(v) + e * lp(v)
                wan -= (w if t[i, j] == 0 else 1.0) * ln(v)
                if t[i, j] == -1:
                    iun -= ln(v)
    n = b * c
    assert create_loss("an")(x, t).item() == pytest.approx(an / n, rel=1e-12)
    assert create_loss("an_ls")(x, t).item() == pytest.approx(an_ls / n, rel=1e-12)
    assert create_loss("wan")(x, t).item() == pytest.approx(wan / n, rel=1e-12)
    assert create_loss("iun")(x, t).item() == pytest.approx(iun / n, rel=1e-12)
    assert create_loss("an", reduction="sum")(x, t).item() == pytest.approx(an, rel=1e-12)


def em_loop(x, t, alpha, beta=0.0, pseudo=None) -> float:
    total = 0.0
    b, c = t.shape
    for i in range(b):
        for j in range(c):
            p = sig(float(x[i, j]))
            if t[i, j] == 1:
                total -= math.log(p)
            elif t[i, j] == -1:
                total -= math.log(1 - p)
            elif pseudo is not None and (i, j) in pseudo:
                s = pseudo[(i, j)]
                total += beta * (-s * math.log(p) - (1 - s) * math.log(1 - p))
            else:
                h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
                total -= alpha * h
    return total / (b * c)


def test_em_equals_entropy_formula():
    x, t = spl_case()
    assert create_loss("em", alpha=0.2)(x, t).item() == pytest.approx(em_loop(x, t, 0.2),
                                                                      rel=1e-12)


def test_em_apl_pseudo_labels_by_hand_and_state_roundtrip():
    # 6 images x 2 classes; class 0 has 5 unobserved entries, class 1 has 4
    t = torch.tensor([[1, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, -1]], dtype=torch.int8)
    probs = torch.tensor([[0.9, 0.30], [0.40, 0.8], [0.10, 0.20], [0.35, 0.05],
                          [0.20, 0.60], [0.50, 0.1]])
    loss = create_loss("em_apl", alpha=0.1, beta=0.5, warmup_epochs=1, num_epochs=3,
                       neg_proportion=0.9)
    assert loss.update_pseudo_labels(probs, t, epoch=0) == 0  # still warming up
    # quota per epoch: floor(0.9 * 5 / 2) = 2 for class 0, floor(0.9 * 4 / 2) = 1 for class 1
    assert loss.update_pseudo_labels(probs, t, epoch=1) == 3
    # class 0 unobserved probs: rows 1:.40 2:.10 3:.35 4:.20 5:.50 -> rows 2, 4
    # class 1 unobserved probs: rows 0:.30 2:.20 3:.05 4:.60 -> row 3
    expected = {(2, 0): 0.10, (4, 0): 0.20, (3, 1): 0.05}
    assert {tuple(ij) for ij in loss.pseudo_mask.nonzero().tolist()} == set(expected)
    assert loss.update_pseudo_labels(probs, t, epoch=2) == 3  # next lowest: (3,0),(1,0),(2,1)
    expected.update({(3, 0): 0.35, (1, 0): 0.40, (2, 1): 0.20})
    assert {tuple(ij) for ij in loss.pseudo_mask.nonzero().tolist()} == set(expected)

    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([4, 2, 3])
    with pytest.raises(ValueError, match="index="):
        loss(x[rows], t[rows])
    pseudo_batch = {(r, j): float(probs[int(rows[r]), j]) for r in range(3) for j in range(2)
                    if (int(rows[r]), j) in expected}
    ref = em_loop(x[rows], t[rows], 0.1, 0.5, pseudo_batch)
    assert loss(x[rows], t[rows], index=rows).item() == pytest.approx(ref, rel=1e-6)

    fresh = create_loss("em_apl", alpha=0.1, beta=0.5, warmup_epochs=1, num_epochs=3)
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.pseudo_mask, loss.pseudo_mask) and fresh.epoch == 2
    assert fresh(x[rows], t[rows], index=rows).item() == pytest.approx(ref, rel=1e-6)


# ----------------------------------------------------------------------------- SigRL
def ranking_loop(x, t, normalize: str) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        s, pairs, viol = 0.0, 0, 0
        for p in range(x.shape[1]):
            for n in range(x.shape[1]):
                if t[i, p] == 1 and t[i, n] == -1:
                    h = max(0.0, 1.0 + float(x[i, n]) - float(x[i, p]))
                    s += h
                    pairs += 1
                    viol += h > 0
        denom = {"violations": max(viol, 1), "pairs": max(pairs, 1), "none": 1}[normalize]
        total += s / denom
    return total / x.shape[0]


@pytest.mark.parametrize("normalize", ["violations", "pairs", "none"])
def test_ranking_equals_pairwise_hinge(normalize):
    x, t = case(5, 6, seed=10)
    out = create_loss("ranking", normalize=normalize)(x, t)
    assert out.item() == pytest.approx(ranking_loop(x, t, normalize), rel=1e-12)


def test_ranking_hand_case():
    # positives score 2 and 1, negative 0.5: hinge 1 + 0.5 - 2 = -0.5 -> 0 and 1 + 0.5 - 1 = 0.5
    x = torch.tensor([[2.0, 0.5, 1.0]])
    t = torch.tensor([[1, -1, 1]])
    assert create_loss("ranking")(x, t).item() == pytest.approx(0.5)  # one violating pair
    assert create_loss("ranking", normalize="pairs")(x, t).item() == pytest.approx(0.25)


def test_l1_distill():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 8, generator=g, requires_grad=True)
    te = torch.randn(3, 8, generator=g, requires_grad=True)
    loss = create_loss("l1_distill")
    out = loss(s, te)
    sd, td = s.detach(), te.detach()
    ref = sum(abs(float(sd[i, j]) - float(td[i, j])) for i in range(3) for j in range(8)) / 24
    assert out.item() == pytest.approx(ref, rel=1e-6)
    assert torch.allclose(out, F.l1_loss(s, te))
    out.backward()
    assert te.grad is None and s.grad is not None  # teacher detached
    with pytest.raises(ValueError, match="same shape"):
        loss(s, te[:, :4])


# ------------------------------------------------------------------ gradients & stability
GRADCHECK_OPTIONS = {"asl": {"detach_focal_weight": False, "gamma_pos": 1.0},
                     "partial_asl": {"detach_focal_weight": False}}


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_float64(name):
    x, t = case(3, 4, seed=12)
    loss = create_loss(name, **GRADCHECK_OPTIONS.get(name, {}))
    x = x.clone().requires_grad_(True)
    if name == "l1_distill":
        other = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        assert torch.autograd.gradcheck(lambda v: loss(v, other), (x,))
    else:
        assert torch.autograd.gradcheck(lambda v: loss(v, t), (x,))


def test_gradcheck_em_apl_with_pseudo_labels():
    t = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, -1]], dtype=torch.int8)
    loss = create_loss("em_apl", warmup_epochs=1, num_epochs=2, neg_proportion=1.0)
    loss.update_pseudo_labels(torch.full((3, 3), 0.3), t, epoch=1)
    assert loss.pseudo_mask.any()
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: loss(v, t, index=torch.arange(3)), (x,))


@pytest.mark.parametrize("name", IGNORING)
def test_no_gradient_through_ignored_entries(name):
    x, t = case(4, 6, seed=13)
    x = (x * 30).clone().requires_grad_(True)  # large logits too
    create_loss(name)(x, t).backward()
    unknown = t == 0
    assert unknown.any()
    assert torch.all(x.grad[unknown] == 0)
    assert torch.any(x.grad[~unknown] != 0)


@pytest.mark.parametrize("name", TARGET_LOSSES)
def test_finite_for_extreme_logits(name):
    x = torch.tensor([[1e4, -1e4, 80.0, -80.0], [-1e4, 1e4, 0.0, 30.0]], requires_grad=True)
    t = torch.tensor([[1, 1, -1, 0], [-1, -1, 1, 0]])
    out = create_loss(name)(x, t)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
