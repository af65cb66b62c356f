"""Per-class thresholds: chosen for F1 on a validation split, stored in checkpoints, used by
evaluate, eval and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score

from mlrkit.metrics import choose_thresholds, evaluate


def _data(n: int = 60, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.where(rng.random((n, c)) < 0.3, 1, -1).astype(np.int8)
    p = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 1.2 * (y == 1) - 1.5)))
    return p.astype(np.float64), y


def test_chosen_thresholds_reach_the_best_f1_of_each_class():
    p, y = _data()
    thr = choose_thresholds(p, y)
    for c in range(p.shape[1]):
        truth = y[:, c] == 1
        best = max(f1_score(truth, p[:, c] >= v, zero_division=0) for v in np.unique(p[:, c]))
        assert f1_score(truth, p[:, c] >= thr[c], zero_division=0) == pytest.approx(best)
        # halfway between two validation scores, not on one
        assert not np.isclose(p[:, c], thr[c]).any()


def test_classes_without_positives_keep_the_default_and_unknowns_count_nowhere():
    p, y = _data()
    y[:, 2] = -1
    thr = choose_thresholds(p, y, default=0.37)
    assert thr[2] == pytest.approx(0.37)
    y_unk = y.copy()
    y_unk[:10, 0] = 0  # unknown entries leave class 0's choice to the other rows
    ref = choose_thresholds(p[10:], y[10:])
    assert choose_thresholds(p, y_unk)[0] == pytest.approx(ref[0])
    logits = np.log(p / (1 - p))
    np.testing.assert_allclose(choose_thresholds(logits, y, scores_are="logits"),
                               choose_thresholds(p, y), rtol=1e-9)


def test_evaluate_with_per_class_thresholds_matches_sklearn():
    p, y = _data(seed=1)
    thr = np.array([0.2, 0.35, 0.5, 0.6, 0.45])
    rep = evaluate(p, y, threshold=thr)
    pred = p >= thr[None, :]
    truth = y == 1
    cp = np.mean([precision_score(truth[:, c], pred[:, c], zero_division=0) for c in range(5)])
    cr = np.mean([recall_score(truth[:, c], pred[:, c]) for c in range(5)])
    assert rep["CP"] == pytest.approx(cp) and rep["CR"] == pytest.approx(cr)
    assert rep["OP"] == pytest.approx(precision_score(truth.ravel(), pred.ravel()))
    assert rep.thresholds == pytest.approx(thr.tolist()) and "per-class" in rep.format_table()
    # logits with the same thresholds give the same numbers; mAP does not depend on them
    lg = evaluate(np.log(p / (1 - p)), y, threshold=thr, scores_are="logits")
    assert lg.to_dict() == pytest.approx(rep.to_dict())
    assert rep["mAP"] == pytest.approx(evaluate(p, y)["mAP"])
    with pytest.raises(ValueError, match="one per class"):
        evaluate(p, y, threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match="class 1"):
        evaluate(p, y, threshold=[0.5, 1.0, 0.5, 0.5, 0.5])


def test_training_stores_validation_thresholds_and_eval_uses_them(tmp_path):
    from mlrkit.config import load_config
    from mlrkit.engine.evaluation import evaluate_checkpoint
    from mlrkit.engine.trainer import train
    from mlrkit.predict import Predictor
    from test_reliability_runs import _config

    trainer = train(load_config(_config(tmp_path, **{"train.epochs": 3})))
    run = tmp_path / "runs" / "run"
    meta = json.loads((run / "last.json").read_text())
    expect = choose_thresholds(trainer.last_scores, trainer.val_targets, zero_means="unknown")
    assert meta["thresholds"] == pytest.approx(expect.tolist())
    assert len(set(meta["thresholds"])) > 1
    report, _ = evaluate_checkpoint(run / "last.safetensors")
    assert report.thresholds == pytest.approx(meta["thresholds"])
    fixed, _ = evaluate_checkpoint(run / "last.safetensors", ["eval.threshold=0.5"])
    assert fixed.thresholds is None and fixed.threshold == 0.5
    pred = Predictor.from_checkpoint(run / "last.safetensors", device="cpu")
    assert torch.allclose(pred.thresholds, torch.tensor(meta["thresholds"], dtype=torch.float32))


def test_predict_fallback_and_top_k(tmp_path):
    from mlrkit.config import load_config
    from mlrkit.engine.trainer import train
    from mlrkit.predict import Predictor
    from test_reliability_runs import _config

    train(load_config(_config(tmp_path, **{"train.epochs": 1})))
    pred = Predictor.from_checkpoint(tmp_path / "runs" / "run", device="cpu")
    img = tmp_path / "val" / "img0001.png"
    none = pred.predict(img, threshold=0.999)[0]
    assert none.labels == []
    one = pred.predict(img, threshold=0.999, min_labels=1)[0]
    assert one.labels == [max(one.scores, key=one.scores.get)]
    all3 = pred.predict(img, threshold=0.001)[0]
    assert len(all3.labels) == 3
    top2 = pred.predict(img, threshold=0.001, top_k=2)[0]
    assert top2.labels == all3.labels[:2]
