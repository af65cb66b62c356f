"""Feature cache: round trip, stale keys, resume after an interrupted extraction."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from mlrkit.backbones.base import Backbone, Preprocessing
from mlrkit.data.base import DataError, MultiLabelDataset
from mlrkit.data.cache import (
    FeatureCache,
    FeatureCacheDataset,
    StaleCacheError,
    cache_key,
    cache_name,
    default_transform,
    extract_features,
    images_hash,
    weights_digest,
)
from mlrkit.labels import LabelSpace


class Tiny(Backbone):
    """A small conv backbone (8 channels, stride 4) that counts the images it sees."""

    name = "tiny"
    out_dim = 8

    def __init__(self, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.scale = scale
        self.preprocessing = Preprocessing(image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.weights_id = f"tiny-seed{seed}"
        self.seen = 0

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return self.conv(images) * self.scale


class Pictures(MultiLabelDataset):
    """Random RGB pictures in memory; ``fail_at`` raises on that index (a killed run)."""

    def __init__(self, n: int, seed: int = 0, fail_at: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        targets = torch.from_numpy(np.where(rng.random((n, 3)) < 0.5, 1, -1).astype(np.int8))
        super().__init__(None, targets, LabelSpace(("a", "b", "c")),
                         ids=[f"pic{seed}-{i}" for i in range(n)])
        self.arrays = rng.integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)
        self.fail_at = fail_at
        self.loaded: list[int] = []  # shared with shallow copies

    def load_image(self, i: int) -> Image.Image:
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at image {i}")
        self.loaded.append(i)
        return Image.fromarray(self.arrays[i])


def _reference(bb: Backbone, ds: Pictures, tf) -> torch.Tensor:
    """The backbone applied image by image, outside the cache."""
    with torch.no_grad():
        return torch.cat([bb.forward_map(tf(ds.load_image(i))[None]) for i in range(len(ds))])


def test_round_trip_float16(tmp_path):
    bb, ds = Tiny(), Pictures(10)
    cache = extract_features(bb, ds, tmp_path / "c", batch_size=4, progress=False)
    tf = default_transform(bb)
    ref = _reference(bb, ds, tf)
    assert cache.shape == (10, 8, 4, 4) and cache.dtype == "float16"
    assert np.load(tmp_path / "c" / "features.npy", mmap_mode="r").dtype == np.float16
    fds = FeatureCacheDataset(cache)
    maps = torch.stack([fds[i][0] for i in range(len(fds))])
    assert maps.dtype == torch.float32
    # equal to the backbone's output rounded to float16 (half an ulp: rel. 2^-11)
    torch.testing.assert_close(maps, ref.half().float(), rtol=2 ** -10, atol=1e-6)
    assert (maps - ref).abs().max() <= ref.abs().max() * 2 ** -11 + 1e-6
    assert torch.equal(fds.targets, ds.targets) and fds.ids == ds.ids and fds.labels == ds.labels
    assert torch.equal(fds[3][1], ds.targets[3])
    batch = next(iter(DataLoader(fds, batch_size=6)))
    assert batch[0].shape == (6, 8, 4, 4) and batch[1].dtype == torch.int8
    torch.testing.assert_close(cache.get_batch([1, 7]), maps[[1, 7]])
    assert len(pickle.dumps(fds)) < 20_000  # workers reopen the memory map, not copy it


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_other_dtypes(tmp_path, dtype):
    bb, ds = Tiny(), Pictures(5)
    cache = extract_features(bb, ds, tmp_path / "c", batch_size=2, dtype=dtype, progress=False)
    ref = _reference(bb, ds, default_transform(bb))
    got = torch.stack([cache.get(i) for i in range(5)])
    torch.testing.assert_close(got, ref.to(dtype).float(), rtol=0, atol=1e-6)


def test_key_and_name():
    bb, ds = Tiny(), Pictures(4)
    tf = default_transform(bb)
    key = cache_key(bb, ds, tf)
    assert key["backbone"] == "tiny" and key["weights"] == weights_digest(bb)
    assert weights_digest(Tiny()) == key["weights"] != weights_digest(Tiny(seed=1))
    assert "Normalize(mean=[0.5, 0.5, 0.5]" in key["transform"]
    assert "size=[16, 16], interpolation=InterpolationMode.BILINEAR" in key["transform"]
    bicubic = dataclasses.replace(bb.preprocessing, interpolation="bicubic")
    bb.preprocessing = bicubic  # the backbone's resize filter is part of the key
    assert "BICUBIC" in cache_key(bb, ds, default_transform(bb))["transform"]
    import hashlib

    h = hashlib.sha256(json.dumps(ds.ids).encode())
    assert key["images"] == h.hexdigest() == images_hash(ds.ids)
    assert cache_name(key).startswith("tiny-") and cache_name(key) == cache_name(dict(key))
    other = dict(key, transform="x")
    assert cache_name(other) != cache_name(key)


def test_stale_key_is_refused(tmp_path):
    bb, ds = Tiny(), Pictures(6)
    tf = default_transform(bb)
    extract_features(bb, ds, tmp_path / "c", transform=tf, progress=False)
    key = cache_key(bb, ds, tf)
    assert FeatureCache.open(tmp_path / "c", expected_key=key).key == key
    tf2 = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    with pytest.raises(StaleCacheError, match="transform: cached"):
        FeatureCache.open(tmp_path / "c", expected_key=cache_key(bb, ds, tf2))
    with pytest.raises(StaleCacheError, match="images"):  # other ids
        FeatureCache.open(tmp_path / "c", expected_key=cache_key(bb, Pictures(6, seed=1), tf))
    relabeled = ds.with_targets(-ds.targets)  # same images, other labels: same features
    assert FeatureCache.open(tmp_path / "c", expected_key=cache_key(bb, relabeled, tf)).key == key
    with pytest.raises(StaleCacheError, match="weights: cached"):
        FeatureCache.open(tmp_path / "c", expected_key=cache_key(Tiny(seed=1), ds, tf))
    # extracting with another transform rebuilds the cache instead of reusing it
    rebuilt = extract_features(bb, ds, tmp_path / "c", transform=tf2, progress=False)
    assert rebuilt.shape == (6, 8, 8, 8)
    torch.testing.assert_close(rebuilt.get(2), _reference(bb, ds, tf2)[2].half().float())


def test_matching_cache_is_reused(tmp_path):
    bb, ds = Tiny(), Pictures(6)
    extract_features(bb, ds, tmp_path / "c", progress=False)
    assert bb.seen == 6 and FeatureCache.exists(tmp_path / "c")
    extract_features(bb, ds, tmp_path / "c", progress=False)
    assert bb.seen == 6  # nothing recomputed


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    n, bs = 23, 4
    full = extract_features(Tiny(), Pictures(n), tmp_path / "full", batch_size=bs,
                            progress=False)
    bb, ds = Tiny(), Pictures(n, fail_at=13)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(bb, ds, tmp_path / "c", batch_size=bs, progress=False)
    assert not FeatureCache.exists(tmp_path / "c")
    progress = json.loads((tmp_path / "c.partial" / "progress.json").read_text())
    assert progress["rows_done"] == 12  # three whole batches made it
    with pytest.raises(DataError, match="unfinished.*12/23"):
        FeatureCache.open(tmp_path / "c")
    ds.fail_at = None
    ds.loaded.clear()
    cache = extract_features(bb, ds, tmp_path / "c", batch_size=bs, progress=False)
    assert sorted(ds.loaded) == list(range(12, n))  # resumed, not restarted
    assert not (tmp_path / "c.partial").exists()
    a = (tmp_path / "full" / "features.npy").read_bytes()
    b = (tmp_path / "c" / "features.npy").read_bytes()
    assert a == b
    assert cache.ids == full.ids and torch.equal(cache.targets, full.targets)


def test_partial_with_other_key_starts_over(tmp_path):
    bb = Tiny()
    ds = Pictures(10, fail_at=6)
    with pytest.raises(RuntimeError):
        extract_features(bb, ds, tmp_path / "c", batch_size=3, progress=False)
    ds2 = Pictures(10, seed=2)  # other images
    extract_features(bb, ds2, tmp_path / "c", batch_size=3, progress=False)
    assert sorted(ds2.loaded) == list(range(10))
    ref = _reference(bb, ds2, default_transform(bb))
    torch.testing.assert_close(FeatureCache.open(tmp_path / "c").get(9), ref[9].half().float())


def test_errors(tmp_path):
    with pytest.raises(DataError, match="no feature cache here"):
        FeatureCache.open(tmp_path / "none")
    with pytest.raises(DataError, match="non-finite.*float32"):
        extract_features(Tiny(scale=1e9), Pictures(3), tmp_path / "big", progress=False)
    c = extract_features(Tiny(scale=1e9), Pictures(3), tmp_path / "big", dtype=torch.float32,
                         progress=False)
    assert torch.isfinite(c.get(0)).all()
    with pytest.raises(ValueError, match="dtype"):
        extract_features(Tiny(), Pictures(3), tmp_path / "x", dtype=torch.int8, progress=False)
    extract_features(Tiny(), Pictures(3), tmp_path / "ok", progress=False)
    (tmp_path / "ok" / "index.json").write_text("{broken")
    with pytest.raises(DataError, match="index.json: unreadable JSON"):
        FeatureCache.open(tmp_path / "ok")


def test_efficientnet_lite0_on_mosaics(tmp_path):
    """The real pipeline: frozen EfficientNet-Lite0 over Fashion-MNIST mosaics."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from mlrkit.backbones import create_backbone
    from mlrkit.data import load_dataset

    try:
        bb = create_backbone("efficientnet_lite0", pretrained=True).freeze()
        ds = load_dataset("fashion_mosaic", split="test", num_images=6)
    except (FileNotFoundError, DataError) as e:
        pytest.skip(str(e))
    cache = extract_features(bb, ds, tmp_path / "c", batch_size=4, progress=False)
    assert cache.shape == (6, 1280, 7, 7) and cache.key["weights"] == weights_digest(bb)
    tf = default_transform(bb)
    with torch.no_grad():
        ref = bb(torch.stack([tf(ds[i][0]) for i in range(6)])).map
    got = FeatureCacheDataset(cache)
    maps = torch.stack([got[i][0] for i in range(6)])
    assert (maps - ref).abs().max() <= 6.0 * 2 ** -11 + 1e-5  # ReLU6 maps, float16 rounding
    assert cache.labels.names == ds.labels.names
