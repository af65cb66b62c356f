"""Image encoders returning feature maps; importing this package registers every one."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..registry import BACKBONES
from .base import Backbone, CachedFeatures, Preprocessing

_MODULES = ["cnn", "efficientnet_lite", "clip"]

for _m in _MODULES:
    try:
        import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as e:  # optional backbone module not written yet
        if e.name != f"{__name__}.{_m}":
            raise


def create_backbone(name: str, pretrained: bool | str = False, **options: Any) -> Backbone:
    """Build the backbone registered as ``name``; ``pretrained`` may be a local weight path."""
    return BACKBONES.get(name)(pretrained=pretrained, **options)


def list_backbones() -> list[str]:
    return BACKBONES.names()


__all__ = ["Backbone", "CachedFeatures", "Preprocessing", "create_backbone", "list_backbones"]
