"""SigRL in the engine: zero-shot runs (train on seen labels, score unseen ones) and
method loss terms with a frozen teacher (SigRL eq. 16)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from conftest import make_color_images, write_config
from mlrkit.config import ConfigError, load_config


def _config(tmp: Path, **over) -> Path:
    labels = make_color_images(tmp / "imgs", 24, size=64)
    val = make_color_images(tmp / "val", 12, size=64, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {
        "name": "run", "seed": 1, "output_dir": str(tmp / "runs"),
        "model": {"name": "sigrl", "backbone": "efficientnet_lite0", "pretrained": False,
                  "freeze_backbone": True, "label_embeddings": "glove50",
                  "options": {"joint_dim": 16, "gat_hidden": 8, "gat_heads": 2, "topk": 2,
                              "score_norm": "none"}},
        "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                 "val": {"name": "list", "labels_file": str(val), "names": names},
                 "image_size": 64, "batch_size": 8, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp / "cache"), "unseen": ["blue"]},
        "loss": {"name": "ranking"},
        "optim": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 2, "progress": False, "amp": "none"},
    }
    return write_config(tmp / "config.yaml", cfg, over)


def test_zero_shot_run_trains_on_seen_and_evaluates_unseen(tmp_path):
    from mlrkit.engine.checkpoint import load_checkpoint
    from mlrkit.engine.evaluation import predict_checkpoint
    from mlrkit.engine.trainer import train
    from mlrkit.semantics.embeddings import label_embeddings

    cfg = load_config(_config(tmp_path))
    tr = train(cfg)
    run = tmp_path / "runs" / "run"
    assert tr.model.num_classes == 2  # red, green
    state, meta = load_checkpoint(run)
    assert meta["label_names"] == ["red", "green"]
    assert meta["zero_shot"] == {"names": ["red", "green", "blue"], "unseen": ["blue"]}
    torch.testing.assert_close(state["__semantics__.label_bank"],
                               label_embeddings("glove50", ["red", "green", "blue"]))
    # validation (checkpoint choice) saw the seen labels only
    assert set(tr.history[-1]) >= {"mAP"} and len(tr.labels) == 2

    res = predict_checkpoint(run)
    assert res.names == ["red", "green", "blue"] and res.logits.shape == (12, 3)
    zs = res.zero_shot
    assert zs is not None and zs.num_unseen == 1 and zs.num_classes == 3
    # independent truth: forwards written here, AP from scikit-learn
    bank = state["__semantics__.label_bank"]
    xs = torch.stack([res.inputs[i][0] for i in range(12)])
    from mlrkit.structures import Features

    with torch.no_grad():
        feats = Features(map=xs.float())
        gzsl = res.model(feats, label_embeddings=bank).logits
        zsl = res.model(feats, label_embeddings=bank[2:]).logits
    torch.testing.assert_close(res.logits, gzsl, rtol=1e-4, atol=1e-5)
    y = (res.targets == 1).numpy()
    assert zs.zsl["mAP"] == pytest.approx(average_precision_score(y[:, 2], zsl[:, 0].numpy()))
    gz_ap = [average_precision_score(y[:, c], gzsl[:, c].numpy()) for c in range(3)]
    assert zs.gzsl["mAP"] == pytest.approx(np.mean(gz_ap), abs=1e-6)
    # the GAT / attention sums / score norm mix the scored set: the ZSL forward differs
    assert not torch.allclose(zsl[:, 0], gzsl[:, 2])


def test_zero_shot_eval_cli_prints_both(tmp_path, capsys):
    from mlrkit.cli import main
    from mlrkit.engine.trainer import train

    train(load_config(_config(tmp_path, **{"train.epochs": 1})))
    assert main(["eval", "--checkpoint", str(tmp_path / "runs" / "run"), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert {"ZSL_mAP", "GZSL_mAP", "ZSL_F1@3", "GZSL_P@5"} <= set(out["zero_shot"])
    assert len(out["per_class_ap"]) == 3 if "per_class_ap" in out else True


@pytest.mark.parametrize("unseen, msg", [
    (["purple"], "'purple'"),
    (["red", "green", "blue"], "at least one unseen and one seen"),
])
def test_unseen_setting_errors(tmp_path, unseen, msg):
    from mlrkit.engine.trainer import Trainer

    cfg = load_config(_config(tmp_path, **{"data.unseen": unseen}))
    with pytest.raises(ConfigError, match=msg):
        Trainer(cfg).setup()


def test_unseen_from_file_and_needs_embeddings(tmp_path):
    from mlrkit.engine.builders import unseen_mask

    f = tmp_path / "unseen.txt"
    f.write_text("blue\n\ngreen\n")
    cfg = load_config(_config(tmp_path, **{"data.unseen": str(f)}))
    assert unseen_mask(cfg, ["red", "green", "blue"]).tolist() == [False, True, True]
    cfg = load_config(_config(tmp_path, **{"data.unseen": str(tmp_path / "nope.txt")}))
    with pytest.raises(ConfigError, match="nope.txt"):
        unseen_mask(cfg, ["red", "green", "blue"])
    from mlrkit.engine.trainer import Trainer

    cfg = load_config(_config(tmp_path, **{"model.name": "baseline",
                                           "model.label_embeddings": None, "model.options": {}}))
    with pytest.raises(ConfigError, match="needs model.label_embeddings"):
        Trainer(cfg).setup()


# ------------------------------------------------------------------- loss terms / teacher
TERM = {"name": "l1_distill", "weight": 0.5, "student": "global_feature",
        "teacher": "global_feature", "teacher_model": "initial"}


def test_teacher_term_equals_hand_written_loss(tmp_path):
    from mlrkit.engine import builders
    from mlrkit.engine.trainer import Trainer
    from mlrkit.losses import create_loss

    cfg = load_config(_config(tmp_path, **{"data.unseen": None, "loss.terms": [TERM]}))
    tr = Trainer(cfg)
    tr.setup()
    initial = copy.deepcopy(tr.model).eval()
    # the teacher is the model as built and takes no part in the optimizer
    for a, b in zip(tr.teacher.parameters(), initial.parameters()):
        assert torch.equal(a, b) and not a.requires_grad
    opt_ids = {id(p) for g in tr.opt.param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in tr.teacher.parameters()}
    tr.train_epoch()  # the trained weights move, the teacher does not
    for a, b in zip(tr.teacher.parameters(), initial.parameters()):
        assert torch.equal(a, b)
    moved = any(not torch.equal(a, b) for a, b in zip(tr.model.head.parameters(),
                                                      initial.head.parameters()))
    assert moved

    x, y, idx, real = next(iter(tr.train_loader))
    tr.model.train()
    torch.manual_seed(0)
    out = tr.model(builders.as_model_input(x, True))
    got = tr._batch_loss(out.logits.float(), y, idx, real)[0] + tr._term_loss(out, x, real)
    torch.manual_seed(0)
    out2 = tr.model(builders.as_model_input(x, True))
    with torch.no_grad():
        g0 = initial(builders.as_model_input(x, True)).extras["global_feature"]
    want = (create_loss("ranking")(out2.logits, y)
            + 0.5 * (out2.extras["global_feature"] - g0).abs().mean())
    torch.testing.assert_close(got, want)


def test_teacher_rebuilt_on_resume(tmp_path):
    from mlrkit.engine.trainer import Trainer, train

    cfg = load_config(_config(tmp_path, **{"data.unseen": None, "loss.terms": [TERM],
                                           "train.epochs": 1}))
    first = train(cfg)
    cfg2 = load_config(_config(tmp_path, **{"data.unseen": None, "loss.terms": [TERM],
                                            "train.epochs": 2}))
    again = Trainer(cfg2, resume=tmp_path / "runs" / "run")
    again.setup()
    for a, b in zip(again.teacher.parameters(), first.teacher.parameters()):
        assert torch.equal(a, b)


def test_term_names_a_missing_output(tmp_path):
    from mlrkit.engine.trainer import Trainer

    bad = dict(TERM, student="nothing_here")
    cfg = load_config(_config(tmp_path, **{"data.unseen": None, "loss.terms": [bad]}))
    tr = Trainer(cfg)
    tr.setup()
    with pytest.raises(ConfigError, match=r"loss.terms\[0\].student.*'nothing_here'.*logits"):
        tr.train_epoch()
    with pytest.raises(ConfigError, match="teacher_model"):
        load_config(_config(tmp_path, **{"loss.terms": [dict(TERM, teacher_model="x")]}))


def test_predictor_takes_bank_rows_then_the_source(tmp_path, monkeypatch):
    from mlrkit import Predictor
    from mlrkit.engine.checkpoint import load_checkpoint
    from mlrkit.engine.trainer import train
    from mlrkit.semantics import embeddings

    train(load_config(_config(tmp_path, **{"train.epochs": 1})))
    run = tmp_path / "runs" / "run"
    bank = load_checkpoint(run)[0]["__semantics__.label_bank"]
    pred = Predictor.from_checkpoint(run, device="cpu")
    assert list(pred.labels.names) == ["red", "green"]

    def no_source(*a, **kw):
        raise AssertionError("the bank holds these names")

    monkeypatch.setattr(embeddings, "label_embeddings", no_source)
    pred.set_labels(["blue", "red"])
    torch.testing.assert_close(pred.label_embeddings, bank[[2, 0]])
    img = tmp_path / "val" / "img0000.png"
    (res,) = pred.predict([img])
    assert list(res.scores) == ["blue", "red"]
    monkeypatch.undo()
    pred.set_labels(["yellow", "blue"])  # one name from the source, one from the bank
    torch.testing.assert_close(pred.label_embeddings[0],
                               embeddings.label_embeddings("glove50", ["yellow"])[0])
    torch.testing.assert_close(pred.label_embeddings[1], bank[2])
