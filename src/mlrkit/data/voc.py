"""Pascal VOC 2007 / 2012 classification labels from the standard VOCdevkit layout.

``root`` is the year folder (``.../VOCdevkit/VOC2007``). Labels come from the per-class
split files ``ImageSets/Main/{cls}_{split}.txt`` (``id value``, value 1 present, -1 absent,
0 present only as *difficult*); when those are missing, from ``Annotations/<id>.xml`` with the
same rule (a class is positive if it has a non-difficult object, 0 if all its objects are
difficult). Images are ``JPEGImages/<id>.jpg``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..labels import NEGATIVE, POSITIVE, UNKNOWN, LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset
from .listfile import BadLines

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
_SPLITS = {"2007": ("train", "val", "trainval", "test"), "2012": ("train", "val", "trainval")}
_DIFFICULT = {"ignore": UNKNOWN, "positive": POSITIVE, "negative": NEGATIVE}
_FILE_VALUES = {"1": POSITIVE, "-1": NEGATIVE, "0": UNKNOWN}


def _read_ids(path: Path, bad: BadLines) -> list[str]:
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1:
            bad.report(f"{path}:{lineno}", f"expected one image id, got {line!r}")
            continue
        if parts[0] in seen:
            bad.report(f"{path}:{lineno}",
                       f"duplicate image id {parts[0]!r} (first on line {seen[parts[0]]})")
            continue
        seen[parts[0]] = lineno
        ids.append(parts[0])
    if not ids:
        raise DataError(f"{path}: no image ids")
    return ids


def _from_split_files(main: Path, split: str, ids: list[str], bad: BadLines) -> np.ndarray:
    """Raw values (1 / -1 / 0=difficult-only) as an (N, C) int8 array."""
    row = {i: r for r, i in enumerate(ids)}
    raw = np.full((len(ids), len(VOC_CLASSES)), 2, dtype=np.int8)  # 2 = not yet seen
    for c, cls in enumerate(VOC_CLASSES):
        path = main / f"{cls}_{split}.txt"
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in _FILE_VALUES:
                bad.report(f"{path}:{lineno}", f"malformed line {line!r}; expected "
                           "'<image id> <1|-1|0>'")
                continue
            r = row.get(parts[0])
            if r is None:
                bad.report(f"{path}:{lineno}", f"image id {parts[0]!r} is not in {split}.txt")
                continue
            raw[r, c] = _FILE_VALUES[parts[1]]
    missing = np.argwhere(raw == 2)
    if len(missing):
        r, c = missing[0]
        bad.report(f"{main / f'{VOC_CLASSES[c]}_{split}.txt'}",
                   f"no value for image {ids[r]!r} ({len(missing)} missing entries in all)")
        raw[raw == 2] = UNKNOWN
    return raw


def _from_annotations(ann_dir: Path, ids: list[str], bad: BadLines) -> np.ndarray:
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    raw = np.full((len(ids), len(VOC_CLASSES)), NEGATIVE, dtype=np.int8)
    for r, image_id in enumerate(ids):
        path = ann_dir / f"{image_id}.xml"
        try:
            tree = ET.parse(path)
        except FileNotFoundError:
            bad.report(str(path), "annotation file not found")
            raw[r] = UNKNOWN
            continue
        except ET.ParseError as e:
            bad.report(str(path), f"not valid XML ({e})")
            raw[r] = UNKNOWN
            continue
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            c = index.get(name)
            if c is None:
                bad.report(str(path), f"unknown class name {name!r}; VOC classes are "
                           f"{', '.join(VOC_CLASSES)}")
                continue
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            if not difficult:
                raw[r, c] = POSITIVE
            elif raw[r, c] == NEGATIVE:
                raw[r, c] = UNKNOWN  # difficult-only so far
    return raw


def load_voc(root: str | Path | None, split: str, year: str, difficult: str = "ignore",
             image_dir: str | None = None, skip_bad: bool = False) -> MultiLabelDataset:
    """Shared VOC loader; see ``voc2007`` / ``voc2012``."""
    if root is None:
        raise DataError(f"voc{year}: pass root=<path to VOCdevkit/VOC{year}>")
    root = Path(root)
    if split not in _SPLITS[year]:
        raise DataError(f"voc{year}: unknown split {split!r}; choose one of "
                        f"{', '.join(_SPLITS[year])}")
    if difficult not in _DIFFICULT:
        raise DataError(f"voc{year}: difficult={difficult!r}; choose ignore, positive or "
                        "negative")
    bad = BadLines(skip_bad)
    main = root / "ImageSets" / "Main"
    split_file = main / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"{split_file}: split file not found (is root the VOC{year} folder "
                        "of a VOCdevkit?)")
    ids = _read_ids(split_file, bad)
    have_split_files = all((main / f"{c}_{split}.txt").is_file() for c in VOC_CLASSES)
    if have_split_files:
        raw, source = _from_split_files(main, split, ids, bad), "ImageSets/Main"
    elif (root / "Annotations").is_dir():
        raw, source = _from_annotations(root / "Annotations", ids, bad), "Annotations"
    else:
        missing = next(c for c in VOC_CLASSES if not (main / f"{c}_{split}.txt").is_file())
        raise DataError(f"{main / f'{missing}_{split}.txt'}: class split file not found and "
                        f"no {root / 'Annotations'} folder to read labels from")
    # raw value 0 marks a difficult-only class; map it by the chosen policy
    targets = np.where(raw == UNKNOWN, np.int8(_DIFFICULT[difficult]), raw).astype(np.int8)
    img_dir = Path(image_dir) if image_dir is not None else root / "JPEGImages"
    prefix = f"{img_dir}{os.sep}"
    paths = [f"{prefix}{i}.jpg" for i in ids]
    info: dict[str, Any] = {"dataset": f"voc{year}", "split": split, "difficult": difficult,
                            "label_source": source,
                            "num_difficult_only": int((raw == UNKNOWN).sum())}
    bad.record(info)
    return MultiLabelDataset(paths, torch.from_numpy(targets), LabelSpace(VOC_CLASSES),
                             ids=ids, info=info)


@DATASETS.register("voc2007")
def voc2007(root: str | None = None, split: str = "trainval", difficult: str = "ignore",
            image_dir: str | None = None, skip_bad: bool = False) -> MultiLabelDataset:
    """Pascal VOC 2007 (splits train, val, trainval, test).

    ``difficult``: ``ignore`` (difficult-only classes are unknown, 0; default), ``positive``
    (as in ML-GCN's label statistics) or ``negative``.
    """
    return load_voc(root, split or "trainval", "2007", difficult, image_dir, skip_bad)


@DATASETS.register("voc2012")
def voc2012(root: str | None = None, split: str = "trainval", difficult: str = "ignore",
            image_dir: str | None = None, skip_bad: bool = False) -> MultiLabelDataset:
    """Pascal VOC 2012 (splits train, val, trainval); ``difficult`` as for ``voc2007``."""
    return load_voc(root, split or "trainval", "2012", difficult, image_dir, skip_bad)


__all__ = ["VOC_CLASSES", "load_voc", "voc2007", "voc2012"]
