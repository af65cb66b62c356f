"""Image transforms for training and evaluation (torchvision ``transforms.v2``).

Train: a crop policy (random resized crop, or resize then random crop as in ML-GCN, or a
plain square resize), horizontal flip, optional RandAugment and Cutout. Eval: a square resize
to ``image_size``. Both end with float32 ``(3, S, S)`` tensors normalized by ``mean`` / ``std``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROPS = ("random_resized", "resize_crop", "resize")
_PREP_KEYS = ("image_size", "mean", "std", "interpolation")  # read from a Preprocessing
_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST}


def build_transform(train: bool, image_size: int = 448,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    randaugment: bool = False, cutout: float = 0.0,
                    scale: tuple[float, float] = (0.5, 1.0), crop: str = "random_resized",
                    hflip: float = 0.5, resize_ratio: float = 512 / 448,
                    interpolation: str = "bilinear") -> Callable[[Any], torch.Tensor]:
    """A PIL image (or uint8 tensor) -> float32 ``(3, image_size, image_size)`` transform.

    ``crop`` (train only): ``random_resized`` (area fraction in ``scale``, aspect 3/4..4/3),
    ``resize_crop`` (square resize to ``image_size * resize_ratio``, then a random
    ``image_size`` crop: ML-GCN's 512 -> 448), or ``resize`` (square resize only).
    ``cutout``: side of one erased square as a fraction of the image side (0 = off), filled
    with 0 after normalization (the mean colour). ``randaugment``: torchvision's RandAugment
    (2 ops, magnitude 9) on the uint8 image.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}; choose one of {', '.join(CROPS)}")
    if not 0.0 <= cutout < 1.0:
        raise ValueError(f"cutout={cutout} must be in [0, 1)")
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation={interpolation!r}; choose one of {', '.join(_INTERP)}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError("mean and std need 3 values (RGB), std > 0")
    interp = _INTERP[interpolation]
    size = (image_size, image_size)
    ops: list[Any] = [v2.ToImage()]
    if train:
        if crop == "random_resized":
            ops.append(v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=interp,
                                            antialias=True))
        elif crop == "resize_crop":
            big = int(round(image_size * resize_ratio))
            ops += [v2.Resize((big, big), interpolation=interp, antialias=True),
                    v2.RandomCrop(size)]
        else:
            ops.append(v2.Resize(size, interpolation=interp, antialias=True))
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if randaugment:
            ops.append(v2.RandAugment(interpolation=interp))
    else:
        ops.append(v2.Resize(size, interpolation=interp, antialias=True))
    ops += [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std))]
    if train and cutout > 0:
        area = cutout * cutout
        ops.append(v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0.0))
    return v2.Compose(ops)


def transform_for(preprocessing: Any, train: bool, **options: Any,
                  ) -> Callable[[Any], torch.Tensor]:
    """``build_transform`` with ``image_size``, ``mean``, ``std`` and ``interpolation`` from a
    backbone's preprocessing.

    ``preprocessing``: a backbone (its ``.preprocessing``), a ``Preprocessing`` object or a
    mapping with those keys. ``options`` override them and pass the augmentation settings.
    """
    pre = getattr(preprocessing, "preprocessing", preprocessing)
    if isinstance(pre, Mapping):
        base = {k: pre[k] for k in _PREP_KEYS if k in pre}
    else:
        base = {k: getattr(pre, k) for k in _PREP_KEYS if hasattr(pre, k)}
    if not base:
        raise TypeError(f"transform_for: {type(preprocessing).__name__} has no image_size / "
                        "mean / std")
    base.update(options)
    return build_transform(train, **base)


__all__ = ["build_transform", "transform_for", "IMAGENET_MEAN", "IMAGENET_STD"]
