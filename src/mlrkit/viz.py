"""Figures: precision-recall curves and per-class AP bars (PNG, matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def precision_recall_curve(scores: torch.Tensor, targets: torch.Tensor, c: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of class ``c`` at every score cut (targets 0 are left out)."""
    s, t = scores[:, c], targets[:, c]
    keep = t != 0
    s, t = s[keep], (t[keep] > 0).float()
    order = torch.argsort(s, descending=True)
    tp = torch.cumsum(t[order], 0)
    k = torch.arange(1, len(order) + 1, dtype=torch.float32)
    n_pos = max(float(t.sum()), 1.0)
    return (tp / k).numpy(), (tp / n_pos).numpy()


def plot_pr_curves(scores: torch.Tensor, targets: torch.Tensor, names: Sequence[str],
                   path: str | Path, title: str = "Precision-recall per class") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    for c, name in enumerate(names):
        prec, rec = precision_recall_curve(scores, targets, c)
        ax.plot(rec, prec, lw=1.2, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class_ap(ap: Sequence[float], names: Sequence[str], path: str | Path,
                      title: str = "Average precision per class (%)") -> Path:
    plt = _plt()
    vals = np.asarray(ap, dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
    ax.bar(range(len(names)), np.nan_to_num(vals), color="#3b75af")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AP")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
