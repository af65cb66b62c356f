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
    """The input a backbone's weights expect."""

    image_size: int = 448
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


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
        """Stop gradients of every parameter whose name starts with none of ``prefixes``
        (BatchNorm layers stay in train mode, as in SSGRL's release)."""
        names = [n for n, _ in self.named_parameters()]
        for pre in prefixes:
            if not any(n.startswith(pre) for n in names):
                tops = sorted({".".join(n.split(".")[:2]) for n in names})
                raise ValueError(f"model.backbone_trainable: no backbone parameter starts with "
                                 f"{pre!r}; names start with: {', '.join(tops[:12])}")
        for n, p in self.named_parameters():
            p.requires_grad_(any(n.startswith(pre) for pre in prefixes))
        return self

    def train(self, mode: bool = True) -> Backbone:
        return super().train(mode and not self.frozen)


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
