"""The coco128 SigRL configs end to end on real photos: SPML (train, resume, eval with the
SPML metrics, predict on label names given at predict time) and zero-shot (eval reports ZSL
and GZSL)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DATA, REPO
from mlrkit.config import load_config

pytestmark = pytest.mark.slow


def _cfg(name: str, tmp, epochs: int, extra: list[str] = ()):
    root = str(DATA / "coco128")
    return load_config(REPO / "configs" / f"{name}.yaml", [
        f"data.train.root={root}", f"data.val.root={root}", "data.image_size=224",
        f"data.cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'runs'}", "train.progress=false",
        f"train.epochs={epochs}", "data.num_workers=0", *extra])


def test_spml_em_apl_train_resume_eval_predict(data_dir, tmp_path, capsys):
    from mlrkit.cli import main
    from mlrkit.engine.trainer import Trainer, train

    opts = ["loss.options.warmup_epochs=1", "loss.options.num_epochs=3"]
    first = train(_cfg("sigrl_coco128_spml_em_apl", tmp_path, 2, opts))
    run = tmp_path / "runs" / "sigrl_coco128_spml_em_apl"
    t = first.train_targets
    assert ((t == 1).sum(1) <= 1).all() and (t == 1).sum() > 80  # one positive per photo
    assert not (t == -1).any()
    chosen = int(first.loss_fn.pseudo_mask.sum())
    assert chosen > 0  # pseudo-negatives after the warm-up epoch
    again = Trainer(_cfg("sigrl_coco128_spml_em_apl", tmp_path, 3, opts), resume=run)
    again.fit()
    assert again.epoch == 3 and len(again.history) == 3
    assert int(again.loss_fn.pseudo_mask.sum()) > chosen  # restored, then grown

    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"mAP", "P@3", "R@3", "F1@3", "F1@5"} <= set(out["spml"])
    photo = sorted((data_dir / "coco128" / "images" / "train2017").glob("*.jpg"))[0]
    assert main(["predict", "--checkpoint", str(run), "--labels", "dog,frisbee,red bicycle",
                 "--json", str(photo)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert set(res["scores"]) == {"dog", "frisbee", "red bicycle"}


def test_zero_shot_config_reports_zsl_and_gzsl(data_dir, tmp_path):
    from mlrkit.engine.evaluation import predict_checkpoint
    from mlrkit.engine.trainer import train

    tr = train(_cfg("sigrl_coco128_zsl", tmp_path, 1))
    assert tr.model.num_classes == 65
    res = predict_checkpoint(tmp_path / "runs" / "sigrl_coco128_zsl")
    zs = res.zero_shot
    assert zs.num_unseen == 15 and zs.num_classes == 80 and res.logits.shape[1] == 80
    assert 0 <= zs.zsl["mAP"] <= 1 and 0 <= zs.gzsl["F1@3"] <= 1
    assert torch.isfinite(res.logits).all()
