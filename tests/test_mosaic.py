"""fashion_mosaic: real Fashion-MNIST photos, the documented outfit prior, lazy composition."""

from __future__ import annotations

import gzip
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit.data import DataError, load_dataset
from mlrkit.data.mosaic import (
    BAG,
    BOOT,
    COAT,
    DRESS,
    FASHION_CLASSES,
    PULLOVER,
    SANDAL,
    SHIRT,
    SHOES,
    SNEAKER,
    TOPS,
    TROUSER,
    TSHIRT,
    Item,
    resolve_root,
)

ROOT = resolve_root(None)


def _raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent idx reader (struct) for the test's own ground truth."""
    prefix = {"train": "train", "test": "t10k"}[split]
    with gzip.open(ROOT / f"{prefix}-images-idx3-ubyte.gz") as f:
        _, n, h, w = struct.unpack(">IIII", f.read(16))
        photos = np.frombuffer(f.read(), np.uint8).reshape(n, h, w)
    with gzip.open(ROOT / f"{prefix}-labels-idx1-ubyte.gz") as f:
        struct.unpack(">II", f.read(8))
        labels = np.frombuffer(f.read(), np.uint8)
    return photos, labels


@pytest.fixture(scope="module")
def raw():
    if not (ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {ROOT} (apt-get install dataset-fashion-mnist)")
    return {s: _raw(s) for s in ("train", "test")}


def test_source_photos_are_fashion_mnist(raw):
    ds = load_dataset("fashion_mosaic", split="train", num_images=10)
    photos, labels = raw["train"]
    assert ds.photos.shape == (60000, 28, 28) and np.array_equal(ds.photos, photos)
    assert [len(p) for p in ds.pools] == [6000] * 10  # published: 6,000 photos per class
    for c, pool in enumerate(ds.pools):
        assert np.all(labels[pool] == c)
    test = load_dataset("fashion_mosaic", split="test", num_images=10)
    assert [len(p) for p in test.pools] == [1000] * 10
    assert ds.labels.names == FASHION_CLASSES and ds.targets.shape == (10, 10)


def test_missing_and_bad_files(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mosaic", root=str(tmp_path / "none"))
    monkeypatch.setenv("MLRKIT_FASHION_MNIST", str(tmp_path / "env"))
    with pytest.raises(DataError, match="env"):
        load_dataset("fashion_mosaic")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2049, 1, 28, 28))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 0))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an idx3"):
        load_dataset("fashion_mosaic", root=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 2, 28, 28))
    with pytest.raises(DataError, match="header says"):
        load_dataset("fashion_mosaic", root=str(tmp_path))


@pytest.mark.parametrize("opts, field", [
    ({"split": "val"}, "split"), ({"grid": 0}, "grid"), ({"min_items": 3, "max_items": 2},
                                                         "min_items"),
    ({"max_items": 5}, "max_items"), ({"bag_prob": 1.5}, "bag_prob"),
    ({"item_scale": (0.0, 1.0)}, "item_scale"), ({"num_images": 0}, "num_images"),
])
def test_bad_options(raw, opts, field):
    with pytest.raises(DataError, match=field):
        load_dataset("fashion_mosaic", **opts)


def test_deterministic_lazy_and_prefix_stable(raw):
    a = load_dataset("fashion_mosaic", split="train", num_images=200, seed=3)
    b = load_dataset("fashion_mosaic", split="train", num_images=50, seed=3)
    assert torch.equal(a.targets[:50], b.targets)
    assert a.ids[:50] == b.ids
    order = [7, 0, 49, 7]
    imgs_b = {i: np.asarray(b[i][0]) for i in order}  # any access order
    for i in order:
        img, target = a[i]
        assert img.mode == "RGB" and img.size == (224, 224)
        assert np.array_equal(np.asarray(img), imgs_b[i])
        assert torch.equal(target, a.targets[i])
    c = load_dataset("fashion_mosaic", split="train", num_images=200, seed=4)
    assert not torch.equal(a.targets, c.targets)
    assert a.ids[0] != c.ids[0]  # ids name the generating config


def _reference_labels(n: int, p: dict, min_items: int, max_items: int, seed: int) -> np.ndarray:
    """The prior exactly as the module docstring states it, one image at a time."""
    rnd = random.Random(seed)
    out = np.zeros((n, 10), dtype=bool)
    for i in range(n):
        if rnd.random() < p["outfit_prob"]:
            top = rnd.choice(TOPS)
            items = {top}
            if rnd.random() < (p["dress_bottom_prob"] if top == DRESS else p["bottom_prob"]):
                items.add(TROUSER)
            matching = {TSHIRT: SNEAKER, SHIRT: SNEAKER, PULLOVER: BOOT, COAT: BOOT,
                        DRESS: SANDAL}[top]
            shoe = matching if rnd.random() < p["shoe_match_prob"] else rnd.choice(SHOES)
            if rnd.random() < p["shoes_prob"]:
                items.add(shoe)
            if rnd.random() < p["bag_prob"]:
                items.add(BAG)
            if top != COAT and rnd.random() < p["layer_prob"]:
                items.add(COAT)
        else:
            items = set(rnd.sample(range(10), rnd.randint(min_items, max_items)))
        if len(items) > max_items:
            items = set(rnd.sample(sorted(items), max_items))
        while len(items) < min_items:
            items.add(rnd.choice([c for c in range(10) if c not in items]))
        out[i, sorted(items)] = True
    return out


def test_label_statistics_follow_the_prior(raw):
    n = 20000
    prior = {"outfit_prob": 0.75, "bottom_prob": 0.8, "dress_bottom_prob": 0.1,
             "shoes_prob": 0.8, "bag_prob": 0.3, "layer_prob": 0.25, "shoe_match_prob": 0.6}
    ds = load_dataset("fashion_mosaic", split="train", num_images=n, seed=0, **prior)
    y = (ds.targets == 1).numpy()
    ref = _reference_labels(n, prior, 1, 4, seed=123)
    assert set(np.unique(ds.targets.numpy())) == {-1, 1}
    assert y.sum(1).min() >= 1 and y.sum(1).max() <= 4
    # marginals and pairwise co-occurrence agree with an independent sampler (SE ~0.005)
    np.testing.assert_allclose(y.mean(0), ref.mean(0), atol=0.02)
    np.testing.assert_allclose(y.T.astype(float) @ y / n, ref.T.astype(float) @ ref / n,
                               atol=0.02)
    np.testing.assert_allclose(np.bincount(y.sum(1), minlength=5) / n,
                               np.bincount(ref.sum(1), minlength=5) / n, atol=0.02)

    def cond(a: int, b: int) -> float:  # P(b | a)
        return float(y[y[:, a], b].mean())

    for top in (TSHIRT, PULLOVER, SHIRT):  # outfits: a top brings a bottom
        assert cond(top, TROUSER) > y[:, TROUSER].mean() + 0.05
    assert cond(DRESS, TROUSER) < y[:, TROUSER].mean() - 0.3  # dresses rarely
    assert cond(DRESS, SANDAL) > y[:, SANDAL].mean() + 0.15  # matching shoes
    assert cond(COAT, BOOT) > y[:, BOOT].mean() + 0.05
    assert cond(TSHIRT, SNEAKER) > y[:, SNEAKER].mean() + 0.15
    assert cond(SANDAL, SNEAKER) < y[:, SNEAKER].mean() - 0.15  # one pair of shoes


def test_prior_extremes_exact(raw):
    ds = load_dataset("fashion_mosaic", num_images=500, grid=3, max_items=6, outfit_prob=1.0,
                      bottom_prob=1.0, dress_bottom_prob=0.0, shoes_prob=1.0, bag_prob=0.0,
                      layer_prob=0.0)
    y = (ds.targets == 1).numpy()
    assert np.all(y[:, list(TOPS)].sum(1) == 1)
    assert np.array_equal(y[:, TROUSER], ~y[:, DRESS])
    assert np.all(y[:, list(SHOES)].sum(1) == 1) and not y[:, BAG].any()


def test_known_layout_pixels(raw):
    ds = load_dataset("fashion_mosaic", num_images=4, grid=2, image_size=112)
    photos = raw["train"][0]
    items = [Item(TROUSER, 5, (0, 0, 28, 28)), Item(BAG, 17, (60, 70, 88, 98)),
             Item(COAT, 33, (56, 0, 112, 56))]
    img = np.asarray(ds.compose(items))
    assert img.shape == (112, 112, 3) and np.array_equal(img[..., 0], img[..., 2])
    gray = img[..., 0].astype(int)
    assert np.array_equal(gray[0:28, 0:28], photos[5])  # unscaled: the exact photo
    assert np.array_equal(gray[70:98, 60:88], photos[17])
    up = np.kron(photos[33].astype(float), np.ones((2, 2)))  # 2x upscale, nearest
    assert np.corrcoef(gray[0:56, 56:112].ravel(), up.ravel())[0, 1] > 0.95
    mask = np.zeros((112, 112), bool)
    mask[0:28, 0:28] = mask[70:98, 60:88] = mask[0:56, 56:112] = True
    assert gray[~mask].max() == 0  # everything else is background


def test_every_positive_is_visible(raw):
    ds = load_dataset("fashion_mosaic", split="train", num_images=60, grid=2, image_size=96,
                      seed=5)
    photos, labels = raw["train"]
    for i in range(len(ds)):
        gray = np.asarray(ds[i][0])[..., 0]
        items = ds.layout(i)
        assert sorted(it.cls for it in items) == np.flatnonzero(ds.targets[i] == 1).tolist()
        cells = set()
        mask = np.zeros_like(gray, dtype=bool)
        for it in items:
            x0, y0, x1, y1 = it.box
            assert labels[it.photo] == it.cls  # a real photo of that class
            cell = (y0 // 48, x0 // 48)
            assert cell == ((y1 - 1) // 48, (x1 - 1) // 48), "item crosses its cell"
            cells.add(cell)
            assert x1 - x0 >= int(0.7 * 48) - 1  # item_scale default (0.7, 1.0)
            region = gray[y0:y1, x0:x1]
            assert region.mean() > 10 and region.mean() > 0.5 * photos[it.photo].mean()
            mask[y0:y1, x0:x1] = True
        assert len(cells) == len(items)  # one item per cell
        assert gray[~mask].max() == 0


def test_splits_use_their_own_photos(raw):
    tr = load_dataset("fashion_mosaic", split="train", num_images=30, image_size=56, grid=2,
                      item_scale=(1.0, 1.0))
    te = load_dataset("fashion_mosaic", split="test", num_images=30, image_size=56, grid=2,
                      item_scale=(1.0, 1.0))
    assert not set(tr.ids) & set(te.ids)
    for ds, split in ((tr, "train"), (te, "test")):
        photos = raw[split][0]
        assert len(ds.photos) == len(photos)
        for i in range(10):
            gray = np.asarray(ds[i][0])[..., 0]
            for it in ds.layout(i):  # 28x28 cells at scale 1: the photo itself
                x0, y0, x1, y1 = it.box
                assert np.array_equal(gray[y0:y1, x0:x1], photos[it.photo])
    assert not torch.equal(tr.targets, te.targets)


def test_label_protocol_keeps_the_images(raw):
    ds = load_dataset("fashion_mosaic", num_images=8, image_size=64)
    hidden = ds.with_targets(torch.zeros_like(ds.targets))  # every label unknown
    for i in range(8):
        assert np.array_equal(np.asarray(hidden[i][0]), np.asarray(ds[i][0]))
        assert hidden.layout(i) == ds.layout(i)
    assert not hidden.targets.any()


def test_subset_and_folds_keep_each_rows_picture(raw):
    ds = load_dataset("fashion_mosaic", num_images=12, image_size=64)
    sub = ds.subset([3, 4, 9])
    for j, i in enumerate([3, 4, 9]):
        assert np.array_equal(np.asarray(sub[j][0]), np.asarray(ds[i][0]))
        assert torch.equal(sub.targets[j], ds.targets[i])
        drawn = {it.cls for it in sub.layout(j)}
        assert drawn == set(torch.nonzero(sub.targets[j] == 1).flatten().tolist())
    twice = sub.subset([2, 0])  # a subset of a subset still maps to the generated rows
    assert np.array_equal(np.asarray(twice[0][0]), np.asarray(ds[9][0]))
    fold = load_dataset("fashion_mosaic", num_images=12, image_size=64, fold="val")
    for j, name in enumerate(fold.ids):
        i = ds.ids.index(name)
        assert np.array_equal(np.asarray(fold[j][0]), np.asarray(ds[i][0]))


def test_pickle_without_photos(raw):
    import pickle

    ds = load_dataset("fashion_mosaic", split="test", num_images=20, image_size=64)
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # not the 7.8 MB of photos
    back = pickle.loads(blob)
    assert np.array_equal(np.asarray(back[3][0]), np.asarray(ds[3][0]))


def test_fast(raw):
    t = time.perf_counter()
    ds = load_dataset("fashion_mosaic", split="train", num_images=5000)
    for i in range(1000):
        ds[i]
    assert time.perf_counter() - t < 20  # ~1 s unloaded: thousands of images in seconds


def test_with_transform(raw):
    from torchvision import transforms as T

    ds = load_dataset("fashion_mosaic", num_images=3)
    ds.transform = T.Compose([T.Resize((64, 64)), T.ToTensor()])
    x, y = ds[1]
    assert x.shape == (3, 64, 64) and y.dtype == torch.int8
    assert Path(ds.info["root"]) == ROOT and ds.info["config_hash"] in ds.ids[0]
