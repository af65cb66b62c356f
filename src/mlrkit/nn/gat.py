"""Graph attention over label nodes: GATv2 (Brody et al., ICLR 2022), as SigRL's graph-based
multi-label correlation module (SigRL eq. 2-4) runs it.

One layer, for nodes ``h_1..h_N`` and heads ``k = 1..K``:

* ``e^k_ij = a^T LeakyReLU(W^k_t h_i + W^k_s h_j)`` for every neighbour ``j`` of ``i``;
* ``alpha^k_ij = softmax_j(e^k_ij)`` over the neighbours of ``i``;
* ``h'^k_i = sum_j alpha^k_ij W^k_s h_j``; the heads are concatenated or averaged.

With ``share_weights`` (the SigRL reference setting) ``W_t = W_s``. The attention vector
``a`` is one vector shared by all heads, as in the implementation SigRL uses (labml's
GATv2 layer); set ``shared_attention=False`` for one vector per head as in the GATv2 paper.
Without an adjacency mask the graph is complete with self-loops (SigRL's label graph).

The ``(N, N, K, F)`` tensor of pre-activation sums is formed in blocks of target rows (at
most ``block_elements`` elements each) and, when gradients are needed and there is more
than one block, recomputed in the backward pass (activation checkpointing), so memory
grows as ``N^2 K`` (the attention scores), not ``N^2 K F``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["GATv2", "GATv2Layer"]

# elements of one (rows, N, heads, F) block of pre-activation sums; 2^25 floats = 128 MiB
GAT_BLOCK = 1 << 25


def _edge_scores(gt: torch.Tensor, gs: torch.Tensor, att: torch.Tensor,
                 slope: float) -> torch.Tensor:
    """``e[i, j, k] = sum_f att[k, f] LeakyReLU(gt[i, k, f] + gs[j, k, f])`` -> (r, N, K)."""
    z = gt[:, None] + gs[None]  # (r, N, K, F)
    # in place on the sum (autograd's in-place backward needs a positive slope)
    z = F.leaky_relu_(z, slope) if slope > 0 else F.leaky_relu(z, slope)
    if att.shape[0] == 1:  # one vector for all heads: a matrix-vector product
        return z @ att[0]  # GATv2: e_ij = a^T LeakyReLU(W_t h_i + W_s h_j)
    return torch.einsum("rnkf,kf->rnk", z, att)


class GATv2Layer(nn.Module):
    """One GATv2 layer on node features ``(N, in_dim)`` -> ``(N, out_dim)``.

    ``concat=True``: ``out_dim`` is split over the ``heads`` (``out_dim / heads`` each) and the
    heads are concatenated; ``concat=False``: every head has ``out_dim`` features and the
    heads are averaged. ``dropout`` applies to the attention coefficients in training.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, concat: bool = True,
                 dropout: float = 0.0, negative_slope: float = 0.2, share_weights: bool = True,
                 shared_attention: bool = True, block_elements: int = GAT_BLOCK) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"GATv2Layer: heads must be >= 1, got {heads}")
        if concat and out_dim % heads:
            raise ValueError(f"GATv2Layer: out_dim {out_dim} is not divisible by {heads} heads")
        self.heads, self.concat = int(heads), bool(concat)
        self.head_dim = out_dim // heads if concat else out_dim
        self.negative_slope = float(negative_slope)
        self.dropout = float(dropout)
        self.block_elements = int(block_elements)
        self.lin_s = nn.Linear(in_dim, self.heads * self.head_dim, bias=False)  # W_s
        self.lin_t = None if share_weights else nn.Linear(
            in_dim, self.heads * self.head_dim, bias=False)  # W_t (None: W_t = W_s)
        # a: one vector (labml / SigRL) or one per head; nn.Linear's initialization
        self.att = nn.Linear(self.head_dim, 1 if shared_attention else self.heads, bias=False)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge scores ``e (N, N, K)`` (target i, neighbour j, head k) and ``W_s x (N, K, F)``."""
        n = x.shape[0]
        gs = self.lin_s(x).view(n, self.heads, self.head_dim)
        gt = gs if self.lin_t is None else self.lin_t(x).view(n, self.heads, self.head_dim)
        att = self.att.weight.to(gs.dtype)  # (1 or K, F): broadcasts over heads
        per_row = max(1, n * self.heads * self.head_dim)
        step = max(1, self.block_elements // per_row)
        if step >= n:
            return _edge_scores(gt, gs, att, self.negative_slope), gs
        blocks = []
        recompute = torch.is_grad_enabled() and any(
            t.requires_grad for t in (gt, gs, att))
        for i0 in range(0, n, step):
            rows = gt[i0:i0 + step]
            if recompute:
                blocks.append(checkpoint(_edge_scores, rows, gs, att, self.negative_slope,
                                         use_reentrant=False))
            else:
                blocks.append(_edge_scores(rows, gs, att, self.negative_slope))
        return torch.cat(blocks), gs

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None) -> torch.Tensor:
        """``x (N, in_dim)``; ``adj`` an optional (N, N) mask (nonzero: ``j`` is a neighbour
        of ``i``; every node needs one), None: the complete graph with self-loops."""
        e, gs = self.scores(x)
        if adj is not None:
            if adj.shape != e.shape[:2]:
                raise ValueError(f"GATv2Layer: adj must be {tuple(e.shape[:2])}, got "
                                 f"{tuple(adj.shape)}")
            e = e.masked_fill((adj == 0)[..., None], float("-inf"))
        alpha = torch.softmax(e, dim=1)  # softmax over the neighbours j
        if self.training and self.dropout > 0:
            alpha = F.dropout(alpha, self.dropout)
        out = torch.einsum("ijk,jkf->ikf", alpha.to(gs.dtype), gs)  # sum_j alpha_ij W_s h_j
        return out.flatten(1) if self.concat else out.mean(1)


class GATv2(nn.Module):
    """Two GATv2 layers as SigRL's reference code builds them: dropout on the input,
    ``heads``-head layer to ``hidden`` features (heads concatenated), ELU, dropout, then a
    one-head layer to ``out_dim`` (no activation after it). Dropout ``dropout`` everywhere
    (also on the attention coefficients)."""

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 512, heads: int = 4,
                 dropout: float = 0.3, negative_slope: float = 0.2, share_weights: bool = True,
                 shared_attention: bool = True, block_elements: int = GAT_BLOCK) -> None:
        super().__init__()
        kw = dict(dropout=dropout, negative_slope=negative_slope, share_weights=share_weights,
                  shared_attention=shared_attention, block_elements=block_elements)
        self.layer1 = GATv2Layer(in_dim, hidden, heads, concat=True, **kw)
        self.layer2 = GATv2Layer(hidden, out_dim, 1, concat=True, **kw)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor, adj: torch.Tensor | None = None) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)
        x = F.elu(self.layer1(x, adj))  # SigRL eq. 4 (sigma = ELU between the layers)
        x = F.dropout(x, self.dropout, self.training)
        return self.layer2(x, adj)
