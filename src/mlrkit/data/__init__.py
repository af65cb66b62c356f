"""Datasets, label protocols, transforms and the feature cache."""

from __future__ import annotations

import inspect
from importlib import import_module
from typing import Any

from ..registry import DATASETS
from .base import DataError, MultiLabelDataset

_MODULES = ["voc", "coco", "listfile", "yolo", "nuswide", "generic", "mosaic"]

for _m in _MODULES:
    try:
        import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as e:  # loader module not written yet
        if e.name != f"{__name__}.{_m}":
            raise


def load_dataset(name: str, root: str | None = None, split: str | None = None,
                 **options: Any) -> MultiLabelDataset:
    """Load the dataset registered as ``name`` (e.g. ``voc2007``, ``coco``, ``list``)."""
    fn = DATASETS.get(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in options if k not in params]
        if bad:
            allowed = [p for p in params if p not in ("root", "split")]
            raise TypeError(f"dataset {name!r}: unknown option(s) {', '.join(bad)}; "
                            f"allowed: root, split, {', '.join(allowed)}")
    kwargs = dict(options)
    if "root" in params:
        kwargs["root"] = root
    elif root is not None:
        raise TypeError(f"dataset {name!r} takes no root")
    if "split" in params:
        kwargs["split"] = split
    elif split is not None:
        raise TypeError(f"dataset {name!r} takes no split")
    return fn(**kwargs)


def list_datasets() -> list[str]:
    return DATASETS.names()


__all__ = ["DataError", "MultiLabelDataset", "load_dataset", "list_datasets"]
