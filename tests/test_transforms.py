"""Train / eval transforms: shapes, dtype, normalization, crops, flip, cutout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mlrkit.backbones.base import Preprocessing
from mlrkit.data.transforms import build_transform, transform_for

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_resize_and_normalization_by_hand() -> None:
    img = Image.new("RGB", (375, 500), (128, 64, 32))
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.4, 0.8)
    x = build_transform(False, image_size=96, mean=mean, std=std)(img)
    assert x.shape == (3, 96, 96) and x.dtype == torch.float32
    expect = [(v / 255 - m) / s for v, m, s in zip((128, 64, 32), mean, std)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((96, 96), expect[c]), atol=1e-5)


def test_train_without_randomness_equals_eval_and_flip_mirrors() -> None:
    img = _random_image(120, 160)
    ev = build_transform(False, image_size=64)(img)
    same = build_transform(True, image_size=64, crop="resize", hflip=0.0)(img)
    assert torch.equal(ev, same)
    flipped = build_transform(True, image_size=64, crop="resize", hflip=1.0)(img)
    assert torch.equal(flipped, ev.flip(-1))


def test_resize_then_random_crop_is_a_window_of_the_resize() -> None:
    img = _random_image(200, 300, seed=1)
    big = build_transform(False, image_size=64, **PLAIN)(img)  # 56 * 8 / 7 = 64
    torch.manual_seed(0)
    tf = build_transform(True, image_size=56, crop="resize_crop", hflip=0.0, **PLAIN)
    for _ in range(3):
        x = tf(img)
        assert x.shape == (3, 56, 56)
        hits = [(i, j) for i in range(9) for j in range(9)
                if torch.equal(big[:, i:i + 56, j:j + 56], x)]
        assert len(hits) == 1


def test_random_resized_crop_and_randaugment_shapes_and_variation() -> None:
    img = _random_image(150, 100)
    tf = build_transform(True, image_size=48, randaugment=True, scale=(0.3, 1.0))
    torch.manual_seed(0)
    a, b = tf(img), tf(img)
    assert a.shape == b.shape == (3, 48, 48) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_cutout_erases_one_square_of_the_given_side() -> None:
    img = Image.new("RGB", (100, 80), (255, 255, 255))
    torch.manual_seed(0)
    x = build_transform(True, image_size=64, crop="resize", cutout=0.5, **PLAIN)(img)
    zero = (x == 0).all(0)
    assert int(zero.sum()) == 32 * 32
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    assert int(rows[-1] - rows[0]) == 31 and int(cols[-1] - cols[0]) == 31
    assert bool((x[:, ~zero] == 1).all())


def test_transform_for_reads_backbone_preprocessing() -> None:
    img = Image.new("RGB", (50, 40), (255, 0, 0))
    pre = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = transform_for(pre, train=False)(img)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[0], torch.ones(32, 32)) and torch.allclose(x[1], -torch.ones(32, 32))

    class FakeBackbone:
        preprocessing = pre

    y = transform_for(FakeBackbone(), train=False, image_size=16)(img)
    assert y.shape == (3, 16, 16)
    z = transform_for({"image_size": 8, "mean": (0, 0, 0), "std": (1, 1, 1)}, train=True)(img)
    assert z.shape == (3, 8, 8)
    with pytest.raises(TypeError, match="no image_size"):
        transform_for(object(), train=False)


def test_bad_transform_options() -> None:
    with pytest.raises(ValueError, match="crop="):
        build_transform(True, crop="center")
    with pytest.raises(ValueError, match="cutout="):
        build_transform(True, cutout=1.5)
    with pytest.raises(ValueError, match="std"):
        build_transform(False, std=(0.0, 1.0, 1.0))
