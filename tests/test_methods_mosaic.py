"""Every method and ablation row trains on the Fashion-MNIST mosaic task: on real frozen
EfficientNet-Lite0 features of real photos, the training loss falls."""

from __future__ import annotations

import pytest
import torch

from conftest import train_losses
from mlrkit import create_model, load_dataset
from mlrkit.backbones import create_backbone
from mlrkit.data.cache import default_transform
from mlrkit.losses import create_loss
from mlrkit.semantics.embeddings import label_embeddings
from mlrkit.semantics.graphs import label_graph
from mlrkit.structures import Features

VARIANTS = [
    ("baseline", {}),
    ("mlgcn", {"d1": 64}),
    ("ssgrl", {"inter_dim": 64, "proj_dim": 128}),
    *[("dlsa", {"lspl": a, "sd": b, "sar": c, "d1": 64, "d2": 128})
      for a, b, c in [(False, False, False), (True, False, False), (True, True, False),
                      (False, True, True), (True, True, True)]],
    ("cmsg", {"hidden_dim": 64, "tau": 0.5}),
    ("cmsg", {"hidden_dim": 64, "tau": 0.5, "sga": False}),
    ("cmsg", {"hidden_dim": 64, "tau": 0.5, "saa": False}),
    ("cmsg", {"hidden_dim": 64, "tau": 0.5, "correlation": False}),
]


@pytest.fixture(scope="module")
def mosaic_features():
    try:
        ds = load_dataset("fashion_mosaic", split="train", num_images=96, image_size=96)
    except Exception as e:  # noqa: BLE001 - the Debian package may be missing
        pytest.skip(f"fashion_mosaic unavailable: {e}")
    bb = create_backbone("efficientnet_lite0", pretrained=True).freeze()
    bb.preprocessing = type(bb.preprocessing)(96, bb.preprocessing.mean, bb.preprocessing.std)
    ds.transform = default_transform(bb)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        fmap = bb(images).map  # (96, 1280, 3, 3)
    names = list(ds.labels.names)
    sem = {"label_embeddings": label_embeddings("glove50", names),
           "label_graph": label_graph("cooccurrence", ds.targets, names)}
    return fmap, ds.targets, sem


@pytest.mark.parametrize("method,options", VARIANTS,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for m, o in VARIANTS])
def test_variant_trains_on_mosaics(mosaic_features, method, options):
    fmap, targets, sem = mosaic_features
    torch.manual_seed(0)
    model = create_model(method, backbone="cached", in_dim=fmap.shape[1],
                         num_classes=targets.shape[1], **sem, **options)
    loss_fn = create_loss("asl" if method == "cmsg" else "bce")
    losses = train_losses(model, fmap, targets, 25, lr=1e-3, loss_fn=loss_fn)
    assert losses[-1] < 0.6 * losses[0], losses[::6]
    out = model(Features(map=fmap))
    if out.attention is not None:
        assert out.attention.shape == (len(fmap), targets.shape[1], *fmap.shape[2:])
