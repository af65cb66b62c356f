"""mlrkit.metrics against independent truth: scikit-learn, torchmetrics, hand computations,
a literal loop transcription of the VOC devkit, ML-GCN's and BiAM's evaluation formulas, and
the real VOC2007 test labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from mlrkit.metrics import (
    average_precision,
    evaluate,
    mean_average_precision,
    threshold_metrics,
    topk_prf,
    zero_shot_metrics,
)


def random_case(n: int = 300, c: int = 12, seed: int = 0, decimals: int | None = None,
                unknown: float = 0.1, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.random((n, c))
    if decimals is not None:
        s = np.round(s, decimals)
    t = np.where(rng.random((n, c)) < 0.25, 1, -1).astype(np.int8)
    t[rng.random((n, c)) < unknown] = 0
    return s.astype(dtype), t


def sklearn_ap(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = []
    for c in range(s.shape[1]):
        known = t[:, c] != 0
        y = t[known, c] == 1
        out.append(average_precision_score(y, s[known, c]) if y.any() else np.nan)
    return np.array(out)


def devkit_ap(scores: np.ndarray, gt: np.ndarray, eleven_point: bool) -> float:
    """VOC devkit VOCevalcls + VOCap / 11-point, transcribed as plain loops over ranks.

    gt: 1 present, -1 absent, 0 difficult (kept in the ranking, counted as neither TP nor FP).
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp, fp, rec, prec = 0, 0, [], []
    npos = sum(1 for g in gt if g > 0)
    for i in order:
        tp += gt[i] > 0
        fp += gt[i] < 0
        if tp + fp == 0:
            continue  # MATLAB gives 0/0 = NaN here, which max() skips
        rec.append(tp / npos)
        prec.append(tp / (tp + fp))
    if eleven_point:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ps = [p for p, r in zip(prec, rec) if r >= t]
            ap += (max(ps) if ps else 0.0) / 11.0
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec))
               if mrec[i] != mrec[i - 1])


# ----------------------------------------------------------------------------------- AP
@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ap_equals_sklearn_random_and_tie_heavy(decimals, dtype):
    s, t = random_case(decimals=decimals, dtype=dtype, seed=3)
    ours = average_precision(s, t).numpy()
    np.testing.assert_allclose(ours, sklearn_ap(s, t), rtol=0, atol=1e-12)


def test_ap_large_input_threaded_blocks_equal_sklearn():
    # above 2**20 entries the classes are split into blocks computed on threads
    s, t = random_case(n=14000, c=80, seed=21, decimals=3, dtype=np.float32)
    assert s.size >= 1 << 20
    ours = average_precision(s, t).numpy()
    np.testing.assert_allclose(ours, sklearn_ap(s, t), rtol=0, atol=1e-12)
    rep = evaluate(s, t, ap_mode="voc11")
    np.testing.assert_allclose(rep.per_class_ap, average_precision(s, t, "voc11").numpy())


@pytest.mark.parametrize("ap_mode", ["sklearn", "voc"])
def test_evaluate_threaded_path_skewed_classes_equal_direct_formulas(ap_mode):
    # above 2**20 entries: blocks of classes grouped by positive count, counts at the
    # threshold from searches in the sorted rows; compare with the direct mask formulas
    rng = np.random.default_rng(8)
    n, c = 16000, 70
    t = np.where(rng.random((n, c)) < 0.03, 1, -1).astype(np.int8)
    t[:, 0] = np.where(rng.random(n) < 0.45, 1, -1)  # a "person": many positives
    t[:, 1:4] = -1  # classes without a positive
    t[rng.random((n, c)) < 0.05] = 0  # unknown entries
    s = np.round(rng.random((n, c)), 1).astype(np.float32)  # ties, many exactly at 0.5
    assert s.size >= 1 << 20 and (s == 0.5).sum() > 1000
    rep = evaluate(s, t, ap_mode=ap_mode)
    direct = threshold_metrics(s, t)
    for k in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert rep[k] == pytest.approx(direct[k], abs=1e-15), k
    ref = average_precision(s[:, :35], t[:, :35], ap_mode).numpy()  # small: one block
    np.testing.assert_allclose(rep.per_class_ap[:35], ref, rtol=0, atol=1e-12)
    if ap_mode == "sklearn":
        np.testing.assert_allclose(rep.per_class_ap, sklearn_ap(s, t), rtol=0, atol=1e-12)
    assert np.isnan(rep.per_class_ap[1:4]).all() and not np.isnan(rep.per_class_ap[4:]).any()
    logit = np.log(s.astype(np.float64) + 1e-9) - np.log1p(-s.astype(np.float64) + 1e-9)
    rep_l = evaluate(logit, t, scores_are="logits", ap_mode=ap_mode)
    assert rep_l["OF1"] == pytest.approx(threshold_metrics(logit, t, scores_are="logits")["OF1"])


def _evaluate_in_child(queue) -> None:
    s, t = random_case(n=14000, c=80, seed=21, decimals=3, dtype=np.float32)
    queue.put(evaluate(s, t).mAP)


def test_evaluate_works_in_a_forked_child_after_the_parent_used_its_threads():
    import multiprocessing as mp

    s, t = random_case(n=14000, c=80, seed=21, decimals=3, dtype=np.float32)
    expected = evaluate(s, t).mAP  # the parent's worker threads now exist
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_evaluate_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "evaluate hung in a forked child"
    assert queue.get(timeout=5) == expected


def test_ap_accepts_torch_and_numpy_alike():
    s, t = random_case(seed=1)
    a = average_precision(s, t)
    b = average_precision(torch.from_numpy(s), torch.from_numpy(t))
    assert a.dtype == torch.float64 and a.shape == (12,)
    assert torch.equal(a, b)


def test_ap_matches_torchmetrics():
    from torchmetrics.classification import MultilabelAveragePrecision

    s, t = random_case(n=400, c=7, seed=5, decimals=2)
    tm_target = torch.from_numpy((t == 1).astype(np.int64))
    tm_target[torch.from_numpy(t == 0)] = -1  # torchmetrics' ignore_index
    metric = MultilabelAveragePrecision(num_labels=7, average=None, thresholds=None,
                                        ignore_index=-1)
    ref = metric(torch.from_numpy(s).float(), tm_target).double()
    ours = average_precision(s.astype(np.float32), t)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_ap_hand_computed_envelope_and_11_point():
    # ranks: + - - + +  -> precision at the positives 1/1, 2/4, 3/5
    s = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
    t = np.array([[1], [-1], [-1], [1], [1]])
    # non-interpolated: (1 + 1/2 + 3/5) / 3
    assert average_precision(s, t, "sklearn").item() == pytest.approx((1 + 0.5 + 0.6) / 3)
    # envelope lifts the 2nd positive's 1/2 to max(1/2, 3/5) = 3/5: (1 + 3/5 + 3/5) / 3
    assert average_precision(s, t, "voc").item() == pytest.approx((1 + 0.6 + 0.6) / 3)
    # recall after each rank: 1/3 1/3 1/3 2/3 1; precision 1 1/2 1/3 1/2 3/5
    # t = 0, .1, .2, .3 -> 1 ; t = .4 ... 1.0 (7 levels) -> max(1/2, 3/5) = 3/5
    assert average_precision(s, t, "voc11").item() == pytest.approx((4 * 1 + 7 * 0.6) / 11)


def test_ap_ties_form_one_threshold():
    # scores 0.8 | 0.5 0.5 0.5 with labels - | + + -. The tie group is one threshold:
    # at 0.8: TP 0, FP 1; at 0.5: TP 2, FP 2 -> P = 1/2 at R = 1 -> AP = 1/2.
    # Breaking the tie one way gives (1/2 + 2/3)/2, the other (1/3 + 2/4)/2.
    s = np.array([[0.8], [0.5], [0.5], [0.5]])
    t = np.array([[-1], [1], [1], [-1]])
    for mode in ("sklearn", "voc"):
        assert average_precision(s, t, mode).item() == pytest.approx(0.5)
    # 11-point: the only point with R >= t is (R=1, P=1/2) for every level t > 0, and for t = 0
    # the point (R=0, P=0) at 0.8 is dominated by it
    assert average_precision(s, t, "voc11").item() == pytest.approx(0.5)
    perm = [0, 3, 2, 1]
    assert average_precision(s[perm], t[perm]).item() == pytest.approx(0.5)


@pytest.mark.parametrize("mode, eleven", [("voc", False), ("voc11", True)])
def test_voc_modes_equal_devkit_loop(mode, eleven):
    s, t = random_case(n=200, c=6, seed=11, unknown=0.15)  # continuous scores: no ties
    ours = average_precision(s, t, mode).numpy()
    ref = [devkit_ap(s[:, c], t[:, c], eleven) for c in range(s.shape[1])]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_voc11_levels_use_devkit_float_values():
    # 10 positives: recall 3/10 = 0.29999999999999999 < 0.30000000000000004 (= 3 * 0.1), so
    # the level "0.3" is NOT reached by the 3rd positive, exactly as in the devkit.
    n_pos = 10
    scores = np.arange(40, 0, -1, dtype=np.float64)
    gt = -np.ones(40, dtype=np.int64)
    gt[[0, 1, 2, 10, 20, 25, 30, 33, 36, 39]] = 1
    ours = average_precision(scores[:, None], gt[:, None], "voc11").item()
    assert ours == pytest.approx(devkit_ap(scores, gt, True), abs=1e-15)
    assert gt[gt == 1].size == n_pos


def test_empty_classes_nan_or_zero_and_map():
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.4, 0.3, 0.9]])
    t = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 0]])
    ap = average_precision(s, t).numpy()
    assert ap[0] == 1.0 and ap[1] == 1.0 and math.isnan(ap[2])
    assert mean_average_precision(s, t) == 1.0
    assert average_precision(s, t, empty="zero").numpy()[2] == 0.0
    assert mean_average_precision(s, t, empty="zero") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(s, -np.ones_like(t))
    with pytest.raises(ValueError, match="no class has a positive"):
        evaluate(s, -np.ones_like(t))


def test_unknown_entries_are_ignored_not_negative():
    # the 0 entry outranks the positive; ignored it costs nothing, as a negative it would
    s = np.array([[0.9], [0.8], [0.1]])
    t = np.array([[0], [1], [-1]])
    assert average_precision(s, t).item() == 1.0
    assert average_precision(s, np.array([[-1], [1], [-1]])).item() == 0.5


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("scores, targets, match", [
    (np.zeros((3, 2)), np.ones((3, 3)), "shape"),
    (np.zeros(3), np.ones(3), r"\(N, C\)"),
    (np.zeros((0, 4)), np.ones((0, 4)), "empty"),
    (np.array([[0.1, np.nan]]), np.array([[1, -1]]), "row 0, column 1"),
    (np.array([[0.1, 0.2], [np.inf, 0.3]]), np.array([[1, -1], [1, 1]]), "row 1, column 0"),
    (np.array([[0.1, 0.2]]), np.array([[1, 2]]), "value 2 at row 0, column 1"),
    (np.array([[0.1, 0.2]]), np.array([[1, 0.5]]), "1, 0 or -1"),
])
def test_bad_input_raises_clear_valueerror(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        average_precision(scores, targets)
    with pytest.raises(ValueError, match=match):
        evaluate(scores, targets)


def test_probabilities_checked_and_options_validated():
    s, t = random_case(n=20, c=3)
    with pytest.raises(ValueError, match="scores_are='logits'"):
        evaluate(s * 4 - 2, t)
    with pytest.raises(ValueError, match="AP mode"):
        average_precision(s, t, mode="coco")
    with pytest.raises(ValueError, match="threshold"):
        evaluate(s, t, threshold=1.5)
    with pytest.raises(ValueError, match="k must be"):
        evaluate(s, t, top_k=4)


# ------------------------------------------------------------------------ threshold metrics
def mlgcn_reference(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """ML-GCN's evaluation() loop: logits compared with 0, N_p clamped to 1."""
    n_class = scores.shape[1]
    nc, np_, ng = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class)
    for k in range(n_class):
        sk, tk = scores[:, k], targets[:, k].copy()
        tk[tk == -1] = 0
        ng[k] = np.sum(tk == 1)
        np_[k] = np.sum(sk >= 0)
        nc[k] = np.sum(tk * (sk >= 0))
    np_[np_ == 0] = 1
    op, or_ = np.sum(nc) / np.sum(np_), np.sum(nc) / np.sum(ng)
    cp, cr = np.sum(nc / np_) / n_class, np.sum(nc / ng) / n_class
    return {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr),
            "OP": op, "OR": or_, "OF1": 2 * op * or_ / (op + or_)}


def test_threshold_metrics_equal_mlgcn_formula_on_full_labels():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(500, 10))
    t = np.where(rng.random((500, 10)) < 0.3, 1, -1)
    ours = threshold_metrics(logits, t, scores_are="logits")
    ref = mlgcn_reference(logits, t)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
    probs = 1 / (1 + np.exp(-logits))
    rep = evaluate(probs, t)
    for k in ref:
        assert rep[k] == pytest.approx(ref[k], abs=1e-12), k


def test_threshold_metrics_equal_sklearn_with_unknowns():
    s, t = random_case(n=400, c=8, seed=9, unknown=0.2)
    ours = threshold_metrics(s, t, threshold=0.6)
    y_true, y_pred = [], []
    cps, crs = [], []
    for c in range(8):
        known = t[:, c] != 0
        yt, yp = t[known, c] == 1, s[known, c] >= 0.6
        cps.append(precision_score(yt, yp, zero_division=0))
        crs.append(recall_score(yt, yp, zero_division=0))
        y_true.append(yt)
        y_pred.append(yp)
    yt_all, yp_all = np.concatenate(y_true), np.concatenate(y_pred)
    cp, cr = np.mean(cps), np.mean(crs)
    op = precision_score(yt_all, yp_all)
    or_ = recall_score(yt_all, yp_all)
    assert ours["CP"] == pytest.approx(cp) and ours["CR"] == pytest.approx(cr)
    assert ours["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert ours["OP"] == pytest.approx(op) and ours["OR"] == pytest.approx(or_)
    assert ours["OF1"] == pytest.approx(2 * op * or_ / (op + or_))


def test_threshold_and_topk_hand_computed():
    # 3 images x 4 classes; predicted (p >= 0.5) marked *
    s = np.array([[0.9, 0.8, 0.7, 0.1],    # *  *  *  .
                  [0.6, 0.2, 0.55, 0.52],  # *  .  *  *
                  [0.1, 0.3, 0.2, 0.4]])   # .  .  .  .
    t = np.array([[1, -1, 1, -1],
                  [-1, -1, 1, 1],
                  [1, 1, -1, -1]])
    # per class: Nc = [1, 0, 2, 1], Np = [2, 1, 2, 1], Ng = [2, 1, 2, 1]
    rep = evaluate(s, t, top_k=2)
    cp = (1 / 2 + 0 / 1 + 2 / 2 + 1 / 1) / 4
    cr = (1 / 2 + 0 / 1 + 2 / 2 + 1 / 1) / 4
    op, or_ = 4 / 6, 4 / 6
    d = rep.to_dict()
    assert d["CP"] == pytest.approx(cp) and d["CR"] == pytest.approx(cr)
    assert d["OP"] == pytest.approx(op) and d["OR"] == pytest.approx(or_)
    assert d["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    # top-2 and >= 0.5: image 0 keeps classes 0, 1; image 1 keeps 0, 2; image 2 nothing
    # Nc = [1, 0, 1, 0], Np = [2, 1, 1, 0], Ng = [2, 1, 2, 1]
    cp2 = (1 / 2 + 0 + 1 / 1 + 0 / 1) / 4
    cr2 = (1 / 2 + 0 + 1 / 2 + 0) / 4
    assert d["CP_top2"] == pytest.approx(cp2) and d["CR_top2"] == pytest.approx(cr2)
    assert d["OP_top2"] == pytest.approx(2 / 4) and d["OR_top2"] == pytest.approx(2 / 6)
    assert d["OF1_top2"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert set(d) == {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top2", "CR_top2",
                      "CF1_top2", "OP_top2", "OR_top2", "OF1_top2"}


def test_nothing_predicted_gives_zero_not_nan():
    s, t = random_case(n=50, c=4, seed=2)
    d = evaluate(s * 0.4, t).to_dict()
    assert d["CP"] == d["OP"] == d["CF1"] == d["OF1"] == 0.0
    assert all(not math.isnan(v) for v in d.values())


def test_logits_flag_matches_probabilities():
    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(size=(100, 5)))
    t = torch.from_numpy(np.where(rng.random((100, 5)) < 0.3, 1, -1).astype(np.int8))
    a = evaluate(logits, t, scores_are="logits", threshold=0.7, top_k=2).to_dict()
    b = evaluate(torch.sigmoid(logits), t, threshold=0.7, top_k=2).to_dict()
    assert a == pytest.approx(b)


def test_report_records_choices_and_formats_table():
    s, t = random_case(n=60, c=3, seed=8)
    rep = evaluate(s, t, ap_mode="voc", top_k=2)
    st = rep.settings()
    assert st["ap_mode"] == "voc" and st["units"] == "fraction" and st["threshold"] == 0.5
    assert "ignored" in st["unknown_targets"]
    assert rep.per_class_ap.shape == (3,)
    assert rep.mAP == pytest.approx(np.nanmean(average_precision(s, t, "voc").numpy()))
    table = rep.format_table(["cat", "dog", "bird"])
    assert "bird" in table and f"{100 * rep.mAP:.2f}" in table and "CF1_top2" in table
    with pytest.raises(ValueError, match="label names"):
        rep.format_table(["cat"])


# -------------------------------------------------------------------------------- zero-shot
def biam_reference(pred: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, ...]:
    """BiAM compute_F1 ('overall') and compute_AP (empty classes 0), as loops."""
    tp = npred = 0
    for i in range(pred.shape[0]):
        top = np.argsort(-pred[i], kind="stable")[:k]
        npred += k
        tp += sum(labels[i, j] == 1 for j in top)
    npos = np.sum(labels == 1)
    p, r = tp / npred, tp / npos
    aps = []
    for c in range(pred.shape[1]):
        lab = labels[:, c]
        if (lab > 0).sum() == 0:
            aps.append(0.0)
            continue
        mask = np.abs(lab) == 1
        order = np.argsort(-pred[mask, c], kind="stable")
        y = lab[mask][order] == 1
        prec = np.cumsum(y) / np.arange(1, y.size + 1)
        aps.append(float((prec * y).sum() / y.sum()))
    return p, r, 2 * p * r / (p + r), float(np.mean(aps))


def test_zero_shot_matches_biam_convention():
    rng = np.random.default_rng(12)
    n, c = 150, 30
    s = rng.normal(size=(n, c))
    t = np.where(rng.random((n, c)) < 0.1, 1, -1)
    t[:, 5] = -1  # a class without positives: counts as AP 0 (BiAM)
    unseen = np.zeros(c, dtype=bool)
    unseen[[1, 4, 5, 9, 17, 22, 28]] = True
    rep = zero_shot_metrics(s, t, unseen, ks=(3, 5))
    for name, cols in (("zsl", unseen), ("gzsl", np.ones(c, dtype=bool))):
        d = getattr(rep, name)
        for k in (3, 5):
            p, r, f, m = biam_reference(s[:, cols], t[:, cols], k)
            assert d[f"P@{k}"] == pytest.approx(p) and d[f"R@{k}"] == pytest.approx(r)
            assert d[f"F1@{k}"] == pytest.approx(f)
            assert d["mAP"] == pytest.approx(m)
    flat = rep.to_dict()
    assert flat["ZSL_mAP"] == rep.zsl["mAP"] and "GZSL_F1@5" in flat
    assert "ZSL" in rep.format_table()


def test_topk_prf_hand_computed_and_unknowns():
    s = np.array([[0.9, 0.1, 0.8, 0.3], [0.2, 0.7, 0.6, 0.5]])
    t = np.array([[1, 1, -1, -1], [-1, 1, 0, 1]])
    # top-2: image 0 -> {0, 2}: 1 TP, 2 predictions; image 1 -> {1, 2}: class 2 unknown,
    # not counted -> 1 TP, 1 prediction. P = 2/3, R = 2/4
    p, r, f = topk_prf(s, t, 2)
    assert (p, r) == (pytest.approx(2 / 3), pytest.approx(0.5))
    assert f == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    with pytest.raises(ValueError, match="boolean mask"):
        zero_shot_metrics(s, t, np.array([0, 1, 0, 0]))
    with pytest.raises(ValueError, match="no class"):
        zero_shot_metrics(s, t, np.zeros(4, dtype=bool))


# ------------------------------------------------------------------------ real VOC2007 labels
def load_voc_test(data_dir) -> tuple[list[str], np.ndarray]:
    root = data_dir / "voc2007"
    names = (root / "labels.txt").read_text().split()
    ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    index = {i: r for r, i in enumerate(ids)}
    t = np.zeros((len(ids), len(names)), dtype=np.int8)
    for c, name in enumerate(names):
        for line in (root / "ImageSets" / "Main" / f"{name}_test.txt").read_text().splitlines():
            img, val = line.split()
            t[index[img], c] = int(val)
    return names, t


def test_real_voc2007_test_labels_with_difficult(data_dir):
    names, t = load_voc_test(data_dir)
    assert t.shape == (4952, 20) and (t == 0).any()  # difficult-only objects are 0
    rng = np.random.default_rng(0)
    # scores correlated with the labels, quantised to create ties
    s = np.round(np.clip(0.5 + 0.25 * (t == 1) + 0.2 * rng.normal(size=t.shape), 0, 1), 2)
    ours = average_precision(s, t).numpy()
    np.testing.assert_allclose(ours, sklearn_ap(s, t), atol=1e-12)
    s_cont = s + 1e-6 * rng.random(t.shape)  # tie-free for the devkit loop
    for c in (0, 7, 14):
        assert average_precision(s_cont, t, "voc11").numpy()[c] == pytest.approx(
            devkit_ap(s_cont[:, c], t[:, c], True), abs=1e-12)
    rep = evaluate(s, t)
    assert rep.num_classes_with_positives == 20
    assert names[14] in rep.format_table(names)


def test_zero_shot_tie_heavy_and_separate_zsl_scores():
    """Tie-heavy scores (one decimal): top-k ties go to the lower class index, as a stable
    argsort (BiAM's loop with kind="stable"); AP is tie-aware, as scikit-learn (a class
    without positives 0). A separate ZSL score matrix replaces the unseen columns."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    n, c = 120, 12
    s = np.round(rng.random((n, c)), 1)
    t = np.where(rng.random((n, c)) < 0.2, 1, -1)
    t[:, 2] = -1
    unseen = np.zeros(c, dtype=bool)
    unseen[[0, 2, 7, 8]] = True
    z = np.round(rng.random((n, 4)), 1)
    rep = zero_shot_metrics(s, t, unseen, ks=(3, 5), zsl_scores=z)
    for name, (sc, tg) in (("zsl", (z, t[:, unseen])), ("gzsl", (s, t))):
        d = getattr(rep, name)
        for k in (3, 5):
            kk = min(k, sc.shape[1])
            p, r, f, _ = biam_reference(sc, tg, kk)
            assert (d[f"P@{k}"], d[f"R@{k}"], d[f"F1@{k}"]) == (
                pytest.approx(p), pytest.approx(r), pytest.approx(f)), (name, k)
        aps = [average_precision_score(tg[:, j] == 1, sc[:, j]) if (tg[:, j] == 1).any()
               else 0.0 for j in range(tg.shape[1])]
        assert d["mAP"] == pytest.approx(np.mean(aps)), name
    assert rep.zsl != zero_shot_metrics(s, t, unseen, ks=(3, 5)).zsl
    with pytest.raises(ValueError, match="zsl_scores"):
        zero_shot_metrics(s, t, unseen, zsl_scores=z[:, :3])
