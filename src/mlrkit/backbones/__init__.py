"""Image encoders returning feature maps; importing this package registers every one."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..registry import BACKBONES, UnknownNameError
from .base import Backbone, CachedFeatures, Preprocessing

_MODULES = ["cnn", "efficientnet_lite", "clip"]
TIMM_PREFIX = "timm:"  # create_backbone("timm:<name>"): any timm model (timm_backbone.py)

for _m in _MODULES:
    try:
        import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as e:  # optional backbone module not written yet
        if e.name != f"{__name__}.{_m}":
            raise


def create_backbone(name: str, pretrained: bool | str = False, **options: Any) -> Backbone:
    """Build the backbone registered as ``name``, or ``timm:<model>`` for any timm model;
    ``pretrained`` may be a local weight path."""
    if name.startswith(TIMM_PREFIX):
        from .timm_backbone import create_timm_backbone

        return create_timm_backbone(name[len(TIMM_PREFIX):], pretrained=pretrained, **options)
    try:
        factory = BACKBONES.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e}; or timm:<name> for any timm model") from None
    return factory(pretrained=pretrained, **options)


def list_backbones() -> list[str]:
    return BACKBONES.names()


__all__ = ["Backbone", "CachedFeatures", "Preprocessing", "create_backbone", "list_backbones"]
