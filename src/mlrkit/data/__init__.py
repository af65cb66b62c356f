"""Datasets, label protocols, transforms and the feature cache."""

from __future__ import annotations

from importlib import import_module
from inspect import signature
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


def holdout_split(ids: list[str], fold: str, fraction: float, seed: int) -> list[int]:
    """Indices of the ``train`` or ``val`` fold of a deterministic split by image id.

    Each id gets a key ``sha256(f"{seed}:{id}")``; the ``round(fraction * N)`` smallest keys
    form ``val``. The split depends on the ids alone, not on their order.
    """
    import hashlib

    if fold not in ("train", "val"):
        raise ValueError(f"fold: expected 'train' or 'val', got {fold!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {fraction}")
    keys = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in ids]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    n_val = int(round(fraction * len(ids)))
    chosen = set(order[:n_val]) if fold == "val" else set(order[n_val:])
    return [i for i in range(len(ids)) if i in chosen]


def kfold_split(ids: list[str], folds: int, index: int, part: str, seed: int = 0) -> list[int]:
    """Indices of the ``train`` (every fold but ``index``) or ``test`` (fold ``index``) part
    of a ``folds``-fold split by image id.

    Ids are ordered by ``sha256(f"cv{seed}:{id}")`` and dealt to folds round-robin, so fold
    sizes differ by at most one and the split depends on the ids alone, not their order.
    """
    import hashlib

    if part not in ("train", "test"):
        raise ValueError(f"cv_part: expected 'train' or 'test', got {part!r}")
    if folds < 2 or not 0 <= index < folds:
        raise ValueError(f"cv: need folds >= 2 and 0 <= index < folds, got folds={folds}, "
                         f"index={index}")
    keys = [hashlib.sha256(f"cv{seed}:{i}".encode()).hexdigest() for i in ids]
    order = sorted(range(len(ids)), key=keys.__getitem__)
    test = {i for r, i in enumerate(order) if r % folds == index}
    return [i for i in range(len(ids)) if (i in test) == (part == "test")]


def load_dataset(name: str, root: str | None = None, split: str | None = None,
                 fold: str | None = None, val_fraction: float = 0.25, fold_seed: int = 0,
                 cv_folds: int | None = None, cv_index: int = 0, cv_part: str = "train",
                 cv_seed: int = 0, **options: Any) -> MultiLabelDataset:
    """Load the dataset registered as ``name`` (e.g. ``voc2007``, ``coco``, ``list``).

    ``cv_folds=K, cv_index=i, cv_part="train"|"test"`` keeps one part of a K-fold split by
    image id (``kfold_split``); then ``fold="train"|"val"`` carves a deterministic hold-out
    split (``val_fraction`` of the images, chosen by a hash of their ids and ``fold_seed``)
    from what is left: cross-validation with an inner validation split.
    """
    if cv_folds is not None:
        ds = load_dataset(name, root=root, split=split, **options)
        ds = ds.subset(kfold_split(ds.ids, cv_folds, cv_index, cv_part, cv_seed))
        ds.info.update({"cv_folds": cv_folds, "cv_index": cv_index, "cv_part": cv_part,
                        "cv_seed": cv_seed})
        if fold is None:
            return ds
        sub = ds.subset(holdout_split(ds.ids, fold, val_fraction, fold_seed))
        sub.info.update({"fold": fold, "val_fraction": val_fraction, "fold_seed": fold_seed})
        return sub
    if fold is not None:
        ds = load_dataset(name, root=root, split=split, **options)
        sub = ds.subset(holdout_split(ds.ids, fold, val_fraction, fold_seed))
        sub.info.update({"fold": fold, "val_fraction": val_fraction, "fold_seed": fold_seed})
        return sub
    fn = DATASETS.get(name)
    params = signature(fn).parameters
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


__all__ = ["DataError", "MultiLabelDataset", "holdout_split", "kfold_split", "list_datasets",
           "load_dataset"]
