"""YOLO detection label folders as image-level multi-label targets.

Layout: ``root/labels/<split>/<stem>.txt`` (one object per line, ``class x y w h`` or a
polygon; only the first column, the class index, is used) and ``root/images/<split>/``.
An image without a label file is a background image (all negative), and a label file
without an image is left out (listed in ``info["labels_without_image"]``), as in YOLO
training; a folder without images (labels only) gives one row per label file.
Class names come from ``names=`` or ``root/data.yaml`` / ``root/config.yaml`` (``names``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..labels import NEGATIVE, POSITIVE, LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset
from .listfile import BadLines, read_names_file, resolve_names

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _yolo_names(root: Path, names: Sequence[str] | str | None) -> tuple[str, ...]:
    if names is not None:
        return resolve_names(names, None, str(root))
    for fname in ("data.yaml", "config.yaml", "dataset.yaml"):
        if (root / fname).is_file():
            return read_names_file(root / fname)
    raise DataError(f"{root}: no data.yaml or config.yaml with 'names'; pass names= "
                    "(a list or a names file)")


@DATASETS.register("yolo")
def yolo(root: str | None = None, split: str | None = None,
         names: Sequence[str] | str | None = None,
         skip_bad: bool = False) -> MultiLabelDataset:
    """YOLO labels -> (N, C) full labels; ids are the file stems, sorted."""
    if root is None:
        raise DataError("yolo: pass root=<folder with images/ and labels/>")
    base = Path(root)
    labels = LabelSpace(_yolo_names(base, names))
    c = len(labels)
    label_dir = base / "labels" / split if split else base / "labels"
    image_dir = base / "images" / split if split else base / "images"
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder not found")
    bad = BadLines(skip_bad)

    images: dict[str, str] = {}
    if image_dir.is_dir():
        for entry in os.scandir(image_dir):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS:
                if stem in images:
                    bad.report(str(image_dir), f"two images with stem {stem!r}")
                    continue
                images[stem] = entry.path
    label_files = {os.path.splitext(e.name)[0]: e.path for e in os.scandir(label_dir)
                   if e.name.endswith(".txt")}
    # the images define the rows (as in YOLO training); labels-only folders use the labels
    stems = sorted(images) if images else sorted(label_files)
    if not stems:
        raise DataError(f"{label_dir}: no label files and no images in {image_dir}")
    orphans = sorted(set(label_files) - set(stems))

    targets = np.full((len(stems), c), NEGATIVE, dtype=np.int8)
    for r, stem in enumerate(stems):
        path = label_files.get(stem)
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for lineno, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{lineno}"
            try:
                k = int(parts[0])
            except ValueError:
                bad.report(where, f"class index {parts[0]!r} is not an integer")
                continue
            if len(parts) < 5:
                bad.report(where, f"malformed line {line!r}; expected 'class x y w h'")
                continue
            if not 0 <= k < c:
                bad.report(where, f"class index {k} out of range 0..{c - 1}")
                continue
            targets[r, k] = POSITIVE
    paths = [images.get(s, os.path.join(image_dir, s + ".jpg")) for s in stems]
    info: dict[str, Any] = {"dataset": "yolo", "root": str(base), "split": split,
                            "num_background": int(sum(s not in label_files for s in stems)),
                            "labels_without_image": orphans}
    bad.record(info)
    return MultiLabelDataset(paths, torch.from_numpy(targets), labels, ids=stems, info=info)


def load_yolo_boxes(ds: MultiLabelDataset) -> list[np.ndarray]:
    """The boxes of a ``yolo`` dataset (or a subset / fold of one), aligned with ``ds.ids``.

    One float64 array ``(K, 5)`` per row: ``(class, x1, y1, x2, y2)``, normalized xyxy
    clipped to [0, 1] (YOLO's ``cx cy w h`` turned into corners; a polygon line gives the
    box around its points). An image without a label file gets ``(0, 5)``. Lines the loader
    did not count as labels (blank, bad class, fewer than 5 columns) are left out; a label
    line whose coordinates do not parse raises ``DataError`` naming it.
    """
    if ds.info.get("dataset") != "yolo":
        raise DataError(f"load_yolo_boxes: expected a yolo dataset, got "
                        f"{ds.info.get('dataset')!r}")
    base, split = Path(ds.info["root"]), ds.info.get("split")
    label_dir = base / "labels" / split if split else base / "labels"
    c = len(ds.labels)
    out = []
    for stem in ds.ids:
        path = label_dir / f"{stem}.txt"
        rows: list[list[float]] = []
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            for lineno, line in enumerate(lines, 1):
                parts = line.split()
                if len(parts) < 5:
                    continue
                try:
                    k = int(parts[0])
                except ValueError:
                    continue
                if not 0 <= k < c:
                    continue
                try:
                    v = np.array([float(p) for p in parts[1:]])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: coordinates of {line!r} are not "
                                    "numbers") from None
                if len(v) == 4:
                    (cx, cy, w, h) = v
                    rows.append([k, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                elif len(v) >= 6 and len(v) % 2 == 0:
                    xy = v.reshape(-1, 2)
                    rows.append([k, *xy.min(0), *xy.max(0)])
                else:
                    raise DataError(f"{path}:{lineno}: {len(v)} coordinates; expected 4 "
                                    "(cx cy w h) or an even number >= 6 (a polygon)")
        a = np.array(rows, dtype=np.float64).reshape(-1, 5)
        a[:, 1:] = np.clip(a[:, 1:], 0.0, 1.0)
        out.append(a)
    return out


__all__ = ["yolo", "load_yolo_boxes", "IMAGE_EXTENSIONS"]
