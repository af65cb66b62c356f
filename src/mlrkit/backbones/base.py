"""Backbone contract: images (B, 3, H, W) -> ``Features`` with ``out_dim`` and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..structures import Features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """The input a backbone's weights expect.

    ``interpolation`` (``bilinear``, ``bicubic`` or ``nearest``) is the resize filter the
    transforms use. ``crop_pct`` records the centre-crop fraction the weights were evaluated
    with on ImageNet (timm's ``crop_pct``); mlrkit's evaluation transform resizes the whole
    image (a multi-label image's objects reach its borders), so it is informational.
    """

    image_size: int = 448
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


class Backbone(nn.Module):
    """Base class. Subclasses set ``out_dim``, ``preprocessing`` and implement ``forward_map``."""

    out_dim: int
    preprocessing: Preprocessing = Preprocessing()
    weights_id: str = "random"  # names the weights, part of the feature-cache key

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_images(self, images: torch.Tensor, name: str) -> None:
        """Raise a clear error unless ``images`` is a (B, 3, H, W) batch."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{name}: expected images (B, 3, H, W), got {tuple(images.shape)}")

    def forward(self, images: torch.Tensor) -> Features:
        if self.frozen:
            with torch.no_grad():
                fmap = self.forward_map(images)
        else:
            fmap = self.forward_map(images)
        return Features(map=fmap, pooled=None)

    def freeze(self, frozen: bool = True) -> Backbone:
        """Stop gradients and keep BatchNorm statistics fixed (eval mode) while frozen."""
        self.frozen = frozen
        for p in self.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.eval()
        return self

    def freeze_except(self, prefixes: list[str]) -> Backbone:
        """Stop gradients of every parameter whose name starts with none of ``prefixes``;
        the BatchNorm layers outside them stay in eval mode (their running statistics keep
        the pretrained values), as SSGRL's release does (``resnet.eval(); layer4.train()``)."""
        names = [n for n, _ in self.named_parameters()]
        for pre in prefixes:
            if not any(n.startswith(pre) for n in names):
                tops = sorted({".".join(n.split(".")[:2]) for n in names})
                raise ValueError(f"model.backbone_trainable: no backbone parameter starts with "
                                 f"{pre!r}; names start with: {', '.join(tops[:12])}")
        for n, p in self.named_parameters():
            p.requires_grad_(any(n.startswith(pre) for pre in prefixes))
        self._trainable = list(prefixes)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode and not self.frozen)
        keep = getattr(self, "_trainable", None)
        if mode and keep is not None:  # frozen parts: BatchNorm statistics stay as loaded
            for name, m in self.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                        name.startswith(pre) for pre in keep):
                    m.eval()
        return self


class CachedFeatures(Backbone):
    """Stand-in backbone for heads trained from a feature cache: the input already is the map."""

    def __init__(self, out_dim: int, preprocessing: Preprocessing | None = None,
                 weights_id: str = "cached") -> None:
        super().__init__()
        self.out_dim = out_dim
        if preprocessing is not None:
            self.preprocessing = preprocessing
        self.weights_id = weights_id

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.out_dim:
            raise ValueError(f"cached features: expected (B, {self.out_dim}, H, W), "
                             f"got {tuple(images.shape)}")
        return images.float()
