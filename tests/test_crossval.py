"""Cross-validation: folds by image id, an inner split that alone picks the checkpoint, and
each outer fold scored once."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import make_color_images
from mlrkit import cli
from mlrkit.config import load_config
from mlrkit.data import kfold_split, load_dataset
from mlrkit.engine.crossval import fold_configs, summarize


def test_kfold_split_partitions_by_id():
    ids = [f"img{i}" for i in range(23)]
    tests = [kfold_split(ids, 4, k, "test") for k in range(4)]
    assert sorted(i for t in tests for i in t) == list(range(23))  # every image tested once
    assert {len(t) for t in tests} <= {5, 6}
    for k in range(4):
        assert set(kfold_split(ids, 4, k, "train")) == set(range(23)) - set(tests[k])
    # the split follows the ids, not their order
    rev = list(reversed(ids))
    assert sorted(rev[i] for i in kfold_split(rev, 4, 1, "test")) == sorted(
        ids[i] for i in tests[1])
    with pytest.raises(ValueError, match="folds >= 2"):
        kfold_split(ids, 1, 0, "test")


def _config(tmp_path):
    labels = make_color_images(tmp_path / "imgs", 24, size=32)
    cfg = {"name": "tiny", "seed": 0, "output_dir": str(tmp_path / "runs"),
           "model": {"name": "baseline", "backbone": "efficientnet_lite0",
                     "pretrained": True, "freeze_backbone": True},
           "data": {"train": {"name": "list", "labels_file": str(labels),
                              "names": str(tmp_path / "imgs" / "names.txt"), "fold": "train"},
                    "val": {"name": "list", "labels_file": str(labels),
                            "names": str(tmp_path / "imgs" / "names.txt"), "fold": "val"},
                    "image_size": 32, "batch_size": 8, "num_workers": 0, "cache": True,
                    "cache_dir": str(tmp_path / "cache")},
           "optim": {"name": "adam", "lr": 1e-2},
           "train": {"epochs": 2, "progress": False, "amp": "none"}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_fold_configs_keep_the_test_fold_out(tmp_path):
    base = load_config(_config(tmp_path))
    cfg, test = fold_configs(base, 3, 1, seed=7)
    assert cfg.seed == 7 and cfg.name == "tiny_cv1_s7"
    tr, va = (load_dataset(**{k: v for k, v in s.items()})
              for s in (cfg.data.train, cfg.data.val))
    te = load_dataset(**test)
    assert not set(tr.ids) & set(te.ids) and not set(va.ids) & set(te.ids)
    assert not set(tr.ids) & set(va.ids)
    assert len(tr) + len(va) + len(te) == 24 and len(te) == 8


def test_cv_command_end_to_end(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert cli.main(["cv", "--config", str(cfg), "--folds", "3", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-validation x 2 seeds" in out and "| mAP |" in out
    res = json.loads((tmp_path / "runs" / "tiny_cv.json").read_text())
    assert len(res["runs"]) == 6 and sum(r["test_images"] for r in res["runs"]) == 2 * 24
    maps = [r["mAP"] for r in res["runs"]]
    mean = sum(maps) / 6
    assert res["summary"]["mAP"]["mean"] == pytest.approx(mean)
    assert res["summary"]["mAP"]["std"] == pytest.approx(
        (sum((m - mean) ** 2 for m in maps) / 5) ** 0.5)
    # pooled: each seed's 3 test folds together, all 24 images once; mAP by scikit-learn
    from sklearn.metrics import average_precision_score

    from mlrkit.config import load_config
    from mlrkit.engine.crossval import fold_configs
    from mlrkit.engine.evaluation import predict_checkpoint

    base = load_config(cfg)
    per_seed = []
    for seed in (0, 1):
        parts = []
        for r in res["runs"]:
            if r["seed"] == seed:
                test = fold_configs(base, 3, r["fold"], seed)[1]
                parts.append(predict_checkpoint(r["run"], [f"data.val={json.dumps(test)}"]))
        s = torch.cat([p.logits for p in parts]).numpy()
        t = torch.cat([p.targets for p in parts]).numpy()
        assert len(s) == 24 and len({i for p in parts for i in p.ids}) == 24
        aps = [average_precision_score(t[:, c] == 1, s[:, c]) for c in range(t.shape[1])
               if (t[:, c] == 1).any()]
        per_seed.append(sum(aps) / len(aps))
    assert res["pooled"]["mAP"]["n"] == 2
    assert res["pooled"]["mAP"]["mean"] == pytest.approx(sum(per_seed) / 2, abs=1e-6)
    assert "pooled" in out
    # a second call reuses the finished runs and gives the same numbers
    assert cli.main(["cv", "--config", str(cfg), "--folds", "3", "--seeds", "0", "1"]) == 0
    again = json.loads((tmp_path / "runs" / "tiny_cv.json").read_text())
    assert [r["mAP"] for r in again["runs"]] == maps


def test_summarize_skips_missing_values():
    s = summarize([{"mAP": 0.5, "CF1": 0.2}, {"mAP": 0.7, "CF1": None}])
    assert s["mAP"]["mean"] == pytest.approx(0.6) and s["CF1"]["n"] == 1


def test_cv_reports_spml_metrics_when_asked(tmp_path):
    from mlrkit.engine.crossval import cross_validate

    cfg = _config(tmp_path)
    res = cross_validate(cfg, folds=2, seeds=[0], overrides=[
        "eval.spml=true", "data.protocol=single_positive:cole", "name=spml"])
    assert {"SPML_mAP", "SPML_P@3", "SPML_F1@3"} <= set(res["summary"])
    assert {"SPML_mAP", "SPML_F1@3"} <= set(res["pooled"])
    for r in res["runs"]:  # per-image P@3 over 3 classes: at most the positives' share
        assert 0 <= r["SPML_P@3"] <= 1 and 0 <= r["SPML_R@3"] <= 1
