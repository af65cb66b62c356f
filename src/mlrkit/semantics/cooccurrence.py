"""Label co-occurrence statistics (the ML-GCN / DLSA label graph source).

Only positives (``targets == 1``) count; unknown (0) and negative (-1) entries are ignored.
"""

from __future__ import annotations

import numpy as np
import torch


def _positive_matrix(targets: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(targets)
    if t.dim() != 2:
        raise ValueError(f"targets: expected shape (N, C), got {tuple(t.shape)}")
    return (t == 1).to(torch.float64)


def cooccurrence(targets: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class positive counts ``(C,)`` and pairwise co-occurrence counts ``(C, C)``.

    ``pairs[i, j]`` is the number of images where classes i and j are both positive
    (ML-GCN eq. 6 numerator ``M_ij``), computed as the matrix product ``P^T P`` of the 0/1
    positive matrix; the diagonal is set to 0. Both are int64.
    """
    p = _positive_matrix(targets)
    # ML-GCN sec. 3.3: M_ij = #images with both L_i and L_j, as one (C, N) @ (N, C) product
    pairs = (p.T @ p).round().to(torch.int64)
    counts = pairs.diagonal().clone()
    pairs.fill_diagonal_(0)
    return counts, pairs


def conditional_probability(targets: torch.Tensor | np.ndarray,
                            eps: float = 1e-12) -> torch.Tensor:
    """``P(L_j | L_i) = M_ij / N_i`` as a ``(C, C)`` float tensor (ML-GCN eq. 6).

    Rows of classes without positives are 0.
    """
    counts, pairs = cooccurrence(targets)
    # ML-GCN eq. 6: P_ij = M_ij / N_i
    return pairs.double() / counts.double().clamp_min(eps).unsqueeze(1)


__all__ = ["cooccurrence", "conditional_probability"]
