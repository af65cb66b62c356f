"""MS-COCO instances JSON (2014 or 2017) as image-level multi-label targets.

Category ids are mapped to contiguous indices in sorted id order (the order every
multi-label COCO paper uses: 0 = person, ..., 79 = toothbrush); the names are kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..labels import NEGATIVE, POSITIVE, LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset
from .listfile import BadLines

_CROWD = ("positive", "ignore")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotations file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing the {key!r} list of a COCO instances file")
    return data


@DATASETS.register("coco")
def coco(root: str | None = None, split: str | None = None, annotations: str | None = None,
         drop_empty: bool = False, crowd: str = "positive",
         skip_bad: bool = False) -> MultiLabelDataset:
    """COCO instances JSON -> (N, 80) full labels (1 / -1).

    ``annotations``: the instances JSON (default ``root/annotations/instances_<split>.json``);
    ``split``: the image folder under ``root`` (``train2014``, ``val2017``, ...). Images keep
    the JSON order; images without annotations are all-negative unless ``drop_empty``.
    ``crowd``: ``positive`` (crowd boxes count, as in the usual COCO multi-label labels) or
    ``ignore``. Ids are the file names without extension.
    """
    if crowd not in _CROWD:
        raise DataError(f"coco: crowd={crowd!r}; choose one of {', '.join(_CROWD)}")
    if annotations is None:
        if root is None or split is None:
            raise DataError("coco: pass annotations=<instances JSON> (or root= and split= "
                            "with root/annotations/instances_<split>.json)")
        ann_path = Path(root) / "annotations" / f"instances_{split}.json"
    else:
        ann_path = Path(annotations)
    data = _load_json(ann_path)
    bad = BadLines(skip_bad)
    name = ann_path.name

    cats: dict[int, str] = {}
    for k, c in enumerate(data["categories"]):
        try:
            cid, cname = int(c["id"]), str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{ann_path}: categories[{k}] needs an integer 'id' and a "
                            "'name'") from None
        if cid in cats:
            raise DataError(f"{ann_path}: categories[{k}]: duplicate category id {cid}")
        cats[cid] = cname
    cat_ids = sorted(cats)
    col = {cid: j for j, cid in enumerate(cat_ids)}

    files: list[str] = []
    row: dict[int, int] = {}
    for k, im in enumerate(data["images"]):
        try:
            iid, fname = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            bad.report(f"{name}: images[{k}]", "needs an integer 'id' and a 'file_name'")
            continue
        if iid in row:
            bad.report(f"{name}: images[{k}]", f"duplicate image id {iid}")
            continue
        row[iid] = len(files)
        files.append(fname)

    rows: list[int] = []
    cols: list[int] = []
    for k, ann in enumerate(data.get("annotations", [])):
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            bad.report(f"{name}: annotations[{k}]", "needs integer 'image_id' and "
                       "'category_id'")
            continue
        if crowd == "ignore" and ann.get("iscrowd", 0):
            continue
        r, j = row.get(iid), col.get(cid)
        if r is None:
            bad.report(f"{name}: annotations[{k}]", f"image_id {iid} is not in 'images'")
            continue
        if j is None:
            bad.report(f"{name}: annotations[{k}]", f"category_id {cid} is not in "
                       f"'categories' (known ids {cat_ids[0]}..{cat_ids[-1]})")
            continue
        rows.append(r)
        cols.append(j)

    targets = np.full((len(files), len(cat_ids)), NEGATIVE, dtype=np.int8)
    targets[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = POSITIVE
    keep = np.ones(len(files), dtype=bool)
    if drop_empty:
        keep = (targets == POSITIVE).any(axis=1)
    img_dir = Path(root) if root is not None else ann_path.parent
    if split:  # root/<split> (COCO layout), else root/images/<split> (YOLO-style layout)
        alt = img_dir / "images" / split
        img_dir = alt if not (img_dir / split).is_dir() and alt.is_dir() else img_dir / split
    prefix = f"{img_dir}{os.sep}"
    kept = np.flatnonzero(keep)
    paths = [prefix + files[i] for i in kept]
    ids = [os.path.splitext(os.path.basename(files[i]))[0] for i in kept]
    info: dict[str, Any] = {
        "dataset": "coco", "annotations": str(ann_path), "split": split, "crowd": crowd,
        "drop_empty": drop_empty, "num_empty": int((~(targets == POSITIVE).any(axis=1)).sum()),
        "category_ids": cat_ids}
    bad.record(info)
    return MultiLabelDataset(paths, torch.from_numpy(targets[kept]),
                             LabelSpace(tuple(cats[c] for c in cat_ids)), ids=ids, info=info)


__all__ = ["coco"]
