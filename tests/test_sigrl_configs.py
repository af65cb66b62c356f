"""The SigRL paper configs build: model, trainable part, optimizer groups, losses, terms.

They need data and CLIP weights this machine lacks, so the model is built with random
towers and a small label set; every setting that names a parameter or an option is checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlrkit.config import load_config
from mlrkit.engine.optim import build_optimizer
from mlrkit.losses import create_loss
from mlrkit.model import create_model

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted(p.name for p in (REPO / "configs").glob("sigrl_*.yaml") if "coco128" not in p.name)


def test_the_paper_configs_exist():
    assert {"sigrl_nuswide_zsl_vitb16.yaml", "sigrl_coco14_spml_rn101.yaml",
            "sigrl_voc07_spml_rn101.yaml", "sigrl_coco14_spml_rn101_em_apl.yaml",
            "sigrl_voc07_spml_rn101_iun.yaml"} <= set(PAPER)


@pytest.fixture(scope="module")
def backbones():
    from mlrkit.backbones import create_backbone

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = create_backbone(name, pretrained="none")
        return cache[name]
    return get


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_builds(name, backbones):
    cfg = load_config(REPO / "configs" / name)
    m = cfg.model
    assert m.name == "sigrl" and str(m.label_embeddings).startswith("clip:")
    assert m.label_embeddings == f"clip:{m.backbone}"  # the model's own text tower
    bb = backbones(m.backbone)
    emb = torch.randn(5, bb.output_dim)
    model = create_model("sigrl", backbone=bb, num_classes=5, label_embeddings=emb,
                         **m.options)
    model.backbone.freeze_except(m.backbone_trainable)
    opt = build_optimizer(model, cfg.optim)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(cfg.optim.lr)
    for prefix, mult in cfg.optim.lr_mult.items():
        assert lrs[f"lr_mult:{prefix}"] == pytest.approx(cfg.optim.lr * mult)
    create_loss(cfg.loss.name, **cfg.loss.options)
    assert [t.name for t in cfg.loss.terms] == ["l1_distill"]
    assert cfg.loss.terms[0].teacher_model == "initial"
    # the visual projection: CLIP's dense one on the ResNet, none on the ViT (same space)
    if m.backbone == "clip_rn101":
        assert model.head.visual_proj is not None and cfg.data.image_size == 448
        assert cfg.eval.spml and cfg.data.protocol.startswith("single_positive:cole")
        assert ("negatives" in cfg.data.protocol) == (cfg.loss.name == "iun")
    else:
        assert model.head.visual_proj is None and cfg.data.image_size == 224
        assert cfg.data.unseen.endswith("Concepts81.txt")
    x = torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.logits.shape == (1, 5) and out.extras["global_feature"].shape == (1, emb.shape[1])
