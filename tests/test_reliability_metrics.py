"""0/1 targets (scikit-learn's convention) are refused unless ``zero_means`` says what 0 is."""

from __future__ import annotations

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


def _random_01(n: int = 200, c: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.int64)
    y[0] = 1  # every class has a positive
    y[1] = 0  # and a negative
    return rng.random((n, c)), y


CALLS = {
    "evaluate": lambda s, t, **kw: evaluate(s, t, **kw),
    "mean_average_precision": lambda s, t, **kw: mean_average_precision(s, t, **kw),
    "average_precision": lambda s, t, **kw: average_precision(s, t, **kw),
    "threshold_metrics": lambda s, t, **kw: threshold_metrics(s, t, **kw),
    "topk_prf": lambda s, t, **kw: topk_prf(s, t, 2, **kw),
    "zero_shot_metrics": lambda s, t, **kw: zero_shot_metrics(
        s, t, np.arange(s.shape[1]) < 2, ks=(2,), **kw),
}


@pytest.mark.parametrize("fn", list(CALLS))
@pytest.mark.parametrize("as_type", ["int64", "int8_tensor", "bool", "float"])
def test_01_targets_refused_without_zero_means(fn, as_type):
    s, y = _random_01()
    t = {"int64": y, "int8_tensor": torch.from_numpy(y.astype(np.int8)),
         "bool": y.astype(bool), "float": y.astype(np.float32)}[as_type]
    with pytest.raises(ValueError, match="zero_means='negative'") as e:
        CALLS[fn](s, t)
    assert "0/1" in str(e.value) and "zero_means='unknown'" in str(e.value)


@pytest.mark.parametrize("fn", list(CALLS))
def test_01_targets_accepted_with_zero_means(fn):
    s, y = _random_01()
    CALLS[fn](s, y, zero_means="negative")
    CALLS[fn](s, y, zero_means="unknown")


def test_ap_with_zero_means_negative_equals_sklearn():
    s, y = _random_01(n=300, c=5, seed=1)
    ap = average_precision(s, y, zero_means="negative").numpy()
    ref = np.array([average_precision_score(y[:, c], s[:, c]) for c in range(5)])
    np.testing.assert_allclose(ap, ref, rtol=0, atol=1e-12)
    report = evaluate(s, y, zero_means="negative")
    assert report.mAP == pytest.approx(ref.mean(), abs=1e-12)
    assert mean_average_precision(s, y, zero_means="negative") == pytest.approx(ref.mean())
    # random scores: mAP near the positive rate (0.3), far from the 1.0 of the old reading
    assert report.mAP < 0.6


def test_reading_zeros_as_unknown_is_the_old_result():
    # with no negatives every ranking is perfect: the bug this guard is for
    s, y = _random_01()
    assert evaluate(s, y, zero_means="unknown").mAP == 1.0


def test_zero_means_negative_equals_minus_one_targets():
    s, y = _random_01(seed=2)
    pm = np.where(y == 1, 1, -1)
    for fn in ("evaluate", "threshold_metrics", "topk_prf", "zero_shot_metrics"):
        got = CALLS[fn](s, y, zero_means="negative")
        want = CALLS[fn](s, pm)
        if fn in ("evaluate", "zero_shot_metrics"):
            got, want = got.to_dict(), want.to_dict()
        assert got == want, fn


def test_threshold_metrics_01_match_sklearn():
    s, y = _random_01(n=150, c=4, seed=3)
    got = threshold_metrics(s, y, threshold=0.5, zero_means="negative")
    pred = (s >= 0.5).astype(int)
    cp = np.mean([precision_score(y[:, c], pred[:, c], zero_division=0) for c in range(4)])
    cr = np.mean([recall_score(y[:, c], pred[:, c]) for c in range(4)])
    assert got["CP"] == pytest.approx(cp)
    assert got["CR"] == pytest.approx(cr)
    assert got["OP"] == pytest.approx(precision_score(y.ravel(), pred.ravel()))
    assert got["OR"] == pytest.approx(recall_score(y.ravel(), pred.ravel()))


def test_topk_01_by_hand():
    s = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])
    y = np.array([[1, 0, 0], [0, 0, 1]])
    # top-2: image 0 -> {0, 1} (1 hit), image 1 -> {1, 2} (1 hit): P = 2/4, R = 2/2
    p, r, f = topk_prf(s, y, 2, zero_means="negative")
    assert (p, r) == (0.5, 1.0) and f == pytest.approx(2 / 3)
    # read as unknown, the 0 entries are not predictions: P = 2/2
    assert topk_prf(s, y, 2, zero_means="unknown")[0] == 1.0


def test_all_positive_targets_need_no_word():
    s = np.array([[0.3, 0.9], [0.8, 0.1]])
    y = np.ones((2, 2), dtype=np.int8)
    assert evaluate(s, y).mAP == 1.0  # every ranking of only positives is perfect


def test_zeros_with_some_minus_one_keep_the_unknown_reading():
    s = np.array([[0.9], [0.8], [0.7], [0.1]])
    t = np.array([[-1], [0], [1], [1]])
    # the 0 entry leaves the ranking: AP over (0.9 neg, 0.7 pos, 0.1 pos) as sklearn sees it
    ref = average_precision_score([0, 1, 1], [0.9, 0.7, 0.1])
    assert average_precision(s, t).item() == pytest.approx(ref)
    # read as negative it counts: sklearn on all four rows
    ref_neg = average_precision_score([0, 0, 1, 1], [0.9, 0.8, 0.7, 0.1])
    assert average_precision(s, t, zero_means="negative").item() == pytest.approx(ref_neg)
    assert ref != pytest.approx(ref_neg)


def test_fast_path_input_is_not_modified():
    s, y = _random_01()
    t = torch.from_numpy(y.astype(np.int8))
    before = t.clone()
    evaluate(torch.from_numpy(s).float(), t, zero_means="negative")
    assert torch.equal(t, before)


def test_report_records_how_zeros_were_read():
    s, y = _random_01()
    neg = evaluate(s, y, zero_means="negative")
    assert "negative" in neg.settings()["unknown_targets"]
    assert "0 targets read as negative" in neg.format_table()
    plain = evaluate(s, np.where(y == 1, 1, -1))
    assert plain.settings()["unknown_targets"].startswith("ignored")
    assert "0 targets ignored" in plain.format_table()


def test_bad_zero_means_value():
    s, y = _random_01()
    with pytest.raises(ValueError, match="zero_means must be"):
        evaluate(s, y, zero_means="negatives")
