"""Label-list files: one image per line, ``file, idx idx ...`` (or ``file,idx idx``).

This is the format of the COCO-2014 and NUS-WIDE label files published with several
multi-label papers (a listed index is a positive of that image). Also the shared helpers of
the label-file loaders: class-name resolution and the bad-line collector behind ``skip_bad``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..labels import NEGATIVE, POSITIVE, UNKNOWN, LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset

SKIP_HINT = "fix the line, or pass skip_bad=True to skip bad lines"


class BadLines:
    """Collects ``file:line: reason`` problems; raises ``DataError`` unless ``skip_bad``."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = bool(skip_bad)
        self.items: list[str] = []

    def report(self, where: str, reason: str) -> None:
        msg = f"{where}: {reason}"
        if not self.skip_bad:
            raise DataError(f"{msg} ({SKIP_HINT})")
        self.items.append(msg)

    def record(self, info: dict[str, Any]) -> None:
        info["skip_bad"] = self.skip_bad
        info["skipped"] = list(self.items)


def read_names_file(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line) or a YAML file with a ``names`` key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: names file not found")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _names_from_yaml(path)
    names = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: no class names (expected one name per line)")
    return tuple(names)


def _names_from_yaml(path: Path) -> tuple[str, ...]:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    names = cfg.get("names") if isinstance(cfg, dict) else None
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: 'names' keys must be class indices 0..C-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: 'names' keys must be 0..{len(keys) - 1} without gaps")
        by_int = {int(k): v for k, v in names.items()}
        return tuple(str(by_int[i]) for i in keys)
    if isinstance(names, list) and names:
        return tuple(str(n) for n in names)
    raise DataError(f"{path}: no 'names' list or mapping (YOLO data.yaml style) found")


def resolve_names(names: Sequence[str] | str | Path | None, num_classes: int | None,
                  source: str) -> tuple[str, ...]:
    """Class names from ``names`` (a list or a names file) or ``num_classes`` ("0".."C-1")."""
    if names is None:
        if num_classes is None:
            raise DataError(f"{source}: pass names= (a list or a names file) or num_classes= "
                            "so that class indices can be interpreted")
        if int(num_classes) <= 0:
            raise DataError(f"{source}: num_classes must be positive, got {num_classes}")
        return tuple(str(i) for i in range(int(num_classes)))
    if isinstance(names, (str, Path)):
        out = read_names_file(names)
    else:
        out = tuple(str(n) for n in names)
    if num_classes is not None and len(out) != int(num_classes):
        raise DataError(f"{source}: {len(out)} names given but num_classes={num_classes}")
    return out


def resolve_file(path: str | Path | None, root: str | Path | None, what: str) -> Path:
    """``path`` as given, or relative to ``root``; ``root`` itself when it is a file."""
    if path is None:
        if root is not None and Path(root).is_file():
            return Path(root)
        raise DataError(f"{what}: no labels file given (pass labels_file=...)")
    p = Path(path)
    if not p.is_absolute() and not p.exists() and root is not None and (Path(root) / p).exists():
        p = Path(root) / p
    if not p.is_file():
        raise DataError(f"{p}: labels file not found")
    return p


def parse_index_list(path: Path, num_classes: int, bad: BadLines,
                     ) -> tuple[list[str], list[list[int]]]:
    """Parse ``file, idx idx ...`` lines; return file names and per-line positive indices.

    Bad lines (no comma, non-integer index, index out of range, duplicate file) are reported
    through ``bad`` as ``file:line: reason``. Blank lines are ignored.
    """
    files: list[str] = []
    indices: list[list[int]] = []
    first_line: dict[str, int] = {}
    name = path.name
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        head, sep, rest = line.partition(",")
        fname = head.strip()
        if not sep or not fname:
            bad.report(f"{name}:{lineno}", f"malformed line {line[:60]!r}; expected "
                       "'file, idx idx ...'")
            continue
        try:
            idx = [int(tok) for tok in rest.split()]
        except ValueError:
            tok = next(t for t in rest.split() if not _is_int(t))
            bad.report(f"{name}:{lineno}", f"class index {tok!r} is not an integer")
            continue
        out = [i for i in idx if not 0 <= i < num_classes]
        if out:
            bad.report(f"{name}:{lineno}",
                       f"class index {out[0]} out of range 0..{num_classes - 1}")
            continue
        if fname in first_line:
            bad.report(f"{name}:{lineno}",
                       f"duplicate image {fname!r} (first on line {first_line[fname]})")
            continue
        first_line[fname] = lineno
        files.append(fname)
        indices.append(idx)
    return files, indices


def _is_int(tok: str) -> bool:
    try:
        int(tok)
    except ValueError:
        return False
    return True


def targets_from_indices(indices: Sequence[Sequence[int]], num_classes: int,
                         unlisted: int = NEGATIVE) -> torch.Tensor:
    """(N, C) int8 targets: listed indices positive, the rest ``unlisted`` (-1 or 0)."""
    n = len(indices)
    out = np.full((n, num_classes), unlisted, dtype=np.int8)
    lengths = np.fromiter((len(i) for i in indices), dtype=np.int64, count=n)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.fromiter((j for idx in indices for j in idx), dtype=np.int64,
                       count=int(lengths.sum()))
    out[rows, cols] = POSITIVE
    return torch.from_numpy(out)


_UNLISTED = {"negative": NEGATIVE, "unknown": UNKNOWN}


def unlisted_value(unlisted: str) -> int:
    try:
        return _UNLISTED[unlisted]
    except KeyError:
        raise ValueError(f"unlisted={unlisted!r}: choose 'negative' (full labels) or "
                         "'unknown' (positive-only partial labels)") from None


@DATASETS.register("list")
def list_file(root: str | None = None, split: str | None = None,
              labels_file: str | None = None, names: Sequence[str] | str | None = None,
              num_classes: int | None = None, image_dir: str | None = None,
              unlisted: str = "negative", skip_bad: bool = False) -> MultiLabelDataset:
    """A ``file, idx idx ...`` label list (e.g. ``coco_train_full.txt``, ``nus_val.txt``).

    ``unlisted``: what a class not listed on a line is, ``negative`` (full labels, default)
    or ``unknown`` (files that list only the kept positives). Images are looked up in
    ``image_dir`` (default ``root``, else the labels file's folder; ``split`` appends a
    sub-folder). Ids are the file names without extension.
    """
    path = resolve_file(labels_file, root, "list dataset")
    labels = LabelSpace(resolve_names(names, num_classes, str(path)))
    value = unlisted_value(unlisted)
    bad = BadLines(skip_bad)
    files, indices = parse_index_list(path, len(labels), bad)
    targets = targets_from_indices(indices, len(labels), value)
    base = Path(image_dir) if image_dir is not None else (
        Path(root) if root is not None and Path(root).is_dir() else path.parent)
    if split:
        base = base / split
    prefix = f"{base}{os.sep}"
    paths = [prefix + f for f in files]  # strings: cheaper than Path objects for 100k rows
    ids = [os.path.splitext(os.path.basename(f))[0] for f in files]
    info: dict[str, Any] = {"dataset": "list", "labels_file": str(path), "unlisted": unlisted,
                            "image_dir": str(base)}
    bad.record(info)
    return MultiLabelDataset(paths, targets, labels, ids=ids, info=info)


__all__ = ["BadLines", "list_file", "parse_index_list", "read_names_file", "resolve_names",
           "targets_from_indices"]
