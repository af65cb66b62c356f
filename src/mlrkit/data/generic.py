"""Bring-your-own-data label files: CSV and JSON Lines, with class names.

CSV (``csv``): ``path,label1;label2;...`` per row, an optional third column of *unknown*
labels (``path,labels,unknown``); a header row is detected when its first field is one of
``path``, ``image``, ``file``, ``filename``. JSON Lines (``jsonl``): one object per line,
``{"image": "a.jpg", "labels": ["cat", "dog"], "unknown": ["person"]}`` (``unknown``
optional). Labels not listed are negatives. Class names are ``names=`` (a list or a names
file) or, when not given, the sorted set of names found in the file.
"""

from __future__ import annotations

import csv as _csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..labels import NEGATIVE, POSITIVE, UNKNOWN, LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset
from .listfile import BadLines, resolve_file, resolve_names

_HEADER_FIELDS = {"path", "image", "file", "filename", "file_name", "image_path"}

Row = tuple[int, str, list[str], list[str]]  # line, image, positive names, unknown names


def _build(rows: list[Row], path: Path, names: Sequence[str] | str | None,
           image_dir: str | None, root: str | None, bad: BadLines, kind: str,
           ) -> MultiLabelDataset:
    fixed = names is not None
    if fixed:
        label_names = resolve_names(names, None, str(path))
    else:
        label_names = tuple(sorted({n for _, _, pos, unk in rows for n in (*pos, *unk)}))
        if not label_names:
            raise DataError(f"{path}: no labels found; pass names= to declare the classes")
    col = {n: j for j, n in enumerate(label_names)}
    targets = np.full((len(rows), len(label_names)), NEGATIVE, dtype=np.int8)
    keep: list[int] = []
    images: list[str] = []
    first: dict[str, int] = {}
    for r, (lineno, image, pos, unk) in enumerate(rows):
        where = f"{path.name}:{lineno}"
        unknown = [n for n in (*pos, *unk) if n not in col]
        if unknown:
            bad.report(where, f"unknown class name {unknown[0]!r}; known names are set by "
                       "names=")
            continue
        both = set(pos) & set(unk)
        if both:
            bad.report(where, f"class {sorted(both)[0]!r} is both a label and unknown")
            continue
        if image in first:
            bad.report(where, f"duplicate image {image!r} (first on line {first[image]})")
            continue
        first[image] = lineno
        targets[r, [col[n] for n in pos]] = POSITIVE
        targets[r, [col[n] for n in unk]] = UNKNOWN
        keep.append(r)
        images.append(image)
    base = Path(image_dir) if image_dir is not None else (
        Path(root) if root is not None and Path(root).is_dir() else path.parent)
    paths = [str(base / im) for im in images]
    ids = [os.path.splitext(im.replace("\\", "/"))[0] for im in images]
    info: dict[str, Any] = {"dataset": kind, "labels_file": str(path), "image_dir": str(base),
                            "names_from": "names=" if fixed else "data (sorted)"}
    bad.record(info)
    return MultiLabelDataset(paths, torch.from_numpy(targets[keep]), LabelSpace(label_names),
                             ids=ids, info=info)


def _split_names(field: str, sep: str) -> list[str]:
    return [s.strip() for s in field.split(sep) if s.strip()]


@DATASETS.register("csv")
def csv_file(root: str | None = None, labels_file: str | None = None,
             names: Sequence[str] | str | None = None, image_dir: str | None = None,
             delimiter: str = ",", label_sep: str = ";", header: bool | None = None,
             skip_bad: bool = False) -> MultiLabelDataset:
    """A CSV of ``path,label1;label2[,unknown1;unknown2]`` rows (header optional).

    Ids are the image paths without extension; images are found under ``image_dir``
    (default ``root``, else the CSV's folder).
    """
    path = resolve_file(labels_file, root, "csv dataset")
    bad = BadLines(skip_bad)
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = list(_csv.reader(f, delimiter=delimiter))
    rows: list[Row] = []
    for lineno, fields in enumerate(lines, 1):
        if not fields or not any(s.strip() for s in fields):
            continue
        if lineno == 1 and (header or (header is None and
                                       fields[0].strip().lower() in _HEADER_FIELDS)):
            continue
        if len(fields) > 3 or not fields[0].strip():
            bad.report(f"{path.name}:{lineno}", f"malformed row {delimiter.join(fields)[:60]!r};"
                       f" expected 'path{delimiter}label{label_sep}label"
                       f"[{delimiter}unknown{label_sep}...]'")
            continue
        pos = _split_names(fields[1], label_sep) if len(fields) > 1 else []
        unk = _split_names(fields[2], label_sep) if len(fields) > 2 else []
        rows.append((lineno, fields[0].strip(), pos, unk))
    return _build(rows, path, names, image_dir, root, bad, "csv")


@DATASETS.register("jsonl")
def jsonl_file(root: str | None = None, labels_file: str | None = None,
               names: Sequence[str] | str | None = None, image_dir: str | None = None,
               skip_bad: bool = False) -> MultiLabelDataset:
    """JSON Lines ``{"image": ..., "labels": [...], "unknown": [...]}`` (``unknown`` optional).

    Labels are class names, or integer indices into ``names=``.
    """
    path = resolve_file(labels_file, root, "jsonl dataset")
    fixed = (resolve_names(names, None, str(path)) if names is not None else None)
    bad = BadLines(skip_bad)
    rows: list[Row] = []
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.report(where, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
            bad.report(where, "expected an object with a string 'image' field")
            continue
        fields = []
        for key in ("labels", "unknown"):
            vals = obj.get(key, [])
            if not isinstance(vals, list):
                bad.report(where, f"'{key}' must be a list of class names")
                break
            try:
                fields.append([_label_name(v, fixed) for v in vals])
            except (TypeError, IndexError) as e:
                bad.report(where, f"'{key}': {e}")
                break
        else:
            rows.append((lineno, obj["image"], fields[0], fields[1]))
    return _build(rows, path, fixed, image_dir, root, bad, "jsonl")


def _label_name(v: Any, names: tuple[str, ...] | None) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        if names is None:
            raise TypeError(f"class index {v} needs names= to be interpreted")
        if not 0 <= v < len(names):
            raise IndexError(f"class index {v} out of range 0..{len(names) - 1}")
        return names[v]
    raise TypeError(f"label {v!r} is neither a class name nor an index")


__all__ = ["csv_file", "jsonl_file"]
