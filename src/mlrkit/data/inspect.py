"""Label statistics of a dataset as text (``mlrkit data inspect``)."""

from __future__ import annotations

from typing import Any

import torch

from ..labels import NEGATIVE, POSITIVE, UNKNOWN
from .base import MultiLabelDataset


def label_stats(targets: torch.Tensor) -> dict[str, Any]:
    """Counts over an (N, C) target matrix: per-image positives, per-class counts, unknowns."""
    t = torch.as_tensor(targets)
    pos = t == POSITIVE
    per_image = pos.sum(1)
    n, c = t.shape
    return {
        "images": n, "classes": c,
        "labels_per_image_mean": float(per_image.double().mean()) if n else 0.0,
        "labels_per_image_min": int(per_image.min()) if n else 0,
        "labels_per_image_max": int(per_image.max()) if n else 0,
        "images_without_positive": int((per_image == 0).sum()),
        "positives_per_class": pos.sum(0).tolist(),
        "negatives_per_class": (t == NEGATIVE).sum(0).tolist(),
        "unknown_per_class": (t == UNKNOWN).sum(0).tolist(),
        "unknown_fraction": float((t == UNKNOWN).double().mean()) if t.numel() else 0.0,
    }


def summarize(dataset: MultiLabelDataset, max_classes: int | None = None) -> str:
    """A readable report: images, labels per image, per-class counts, unknown fraction.

    ``max_classes`` limits the per-class table to the most frequent classes.
    """
    s = label_stats(dataset.targets)
    names = dataset.labels.names
    lines = [
        f"dataset: {dataset.info.get('dataset', type(dataset).__name__)}",
        f"images: {s['images']}",
        f"classes: {s['classes']}"
        + (f" ({int(dataset.labels.seen.sum())} seen, {int(dataset.labels.unseen.sum())} unseen)"
           if bool(dataset.labels.unseen.any()) else ""),
        f"positives per image: mean {s['labels_per_image_mean']:.3f}, "
        f"min {s['labels_per_image_min']}, max {s['labels_per_image_max']}",
        f"images without a positive: {s['images_without_positive']}",
        f"unknown fraction: {s['unknown_fraction']:.4f}",
    ]
    skipped = dataset.info.get("skipped") or []
    if skipped:
        lines.append(f"skipped bad lines: {len(skipped)} (first: {skipped[0]})")
    order = sorted(range(len(names)), key=lambda j: (-s["positives_per_class"][j], j))
    if max_classes is not None:
        order = order[:max_classes]
    width = max((len(names[j]) for j in order), default=5)
    lines.append(f"{'class':<{width}}  {'positive':>8}  {'negative':>8}  {'unknown':>8}")
    for j in order:
        lines.append(f"{names[j]:<{width}}  {s['positives_per_class'][j]:>8}  "
                     f"{s['negatives_per_class'][j]:>8}  {s['unknown_per_class'][j]:>8}")
    return "\n".join(lines)


__all__ = ["label_stats", "summarize"]
