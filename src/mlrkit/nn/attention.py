"""Attention building blocks: multi-head (masked) attention, transformer layers, sine positions.

Shapes: class / query sequences are ``(B, L, d)``, flattened feature maps ``(B, N, d)`` with
``N = H * W``. ``attn_mask`` arguments are additive float biases broadcastable to
``(B, heads, Lq, Lk)`` (``-inf`` = no attention) or boolean (``True`` = may attend), as in
``torch.nn.functional.scaled_dot_product_attention``.

The fast path runs ``scaled_dot_product_attention``; ``need_weights=True`` computes the same
attention explicitly and also returns its weights (averaged over heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClassAttentionPooling", "CrossAttentionLayer", "FeedForward", "MultiHeadAttention",
    "SelfAttentionLayer", "correlation_bias", "sine_position_encoding",
]


def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0,
                           normalize: bool = True, scale: float = 2 * math.pi,
                           device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2-D sine positional encoding of DETR (used by Query2Label), ``(H * W, dim)``.

    Rows ``y = 1..H`` and columns ``x = 1..W`` are (optionally) scaled to ``(0, scale]``; the
    first ``dim / 2`` channels encode ``y``, the last ``dim / 2`` encode ``x``, each as
    ``sin(pos / T^(2i/F))`` on even and ``cos(pos / T^(2i/F))`` on odd channels
    (``F = dim / 2``, ``i`` = channel index // 2). ``dim`` must be divisible by 4.
    """
    if dim % 4 != 0:
        raise ValueError(f"sine_position_encoding: dim must be divisible by 4, got {dim}")
    npf = dim // 2
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    if normalize:
        eps = 1e-6
        y = y / (height + eps) * scale
        x = x / (width + eps) * scale
    i = torch.arange(npf, device=device, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)  # DETR sine PE
    even = (torch.arange(npf, device=device) % 2 == 0)
    py = y[:, None] / freq  # (H, F)
    px = x[:, None] / freq  # (W, F)
    py = torch.where(even, py.sin(), py.cos())
    px = torch.where(even, px.sin(), px.cos())
    pos = torch.cat([py[:, None, :].expand(height, width, npf),
                     px[None, :, :].expand(height, width, npf)], dim=-1)
    return pos.reshape(height * width, dim).to(dtype)


def correlation_bias(A: torch.Tensor, mode: str = "weight", validate: bool = True) -> torch.Tensor:
    """Additive attention bias ``(C, C)`` from a label correlation matrix ``A``.

    A pair ``(i, j)`` is correlated when ``A_ij > 0``; uncorrelated pairs get ``-inf`` (no
    attention, the mask of masked multi-head attention). ``mode="mask"`` adds ``0`` to
    correlated pairs (binary mask); ``mode="weight"`` adds ``log A_ij``, so that
    ``softmax(s + log A)_ij = A_ij exp(s_ij) / sum_k A_ik exp(s_ik)``: the correlation
    weights multiply the unnormalized attention. ``validate=False`` skips the checks (and their
    device synchronization) for a matrix already validated.
    """
    if mode not in ("mask", "weight"):
        raise ValueError(f"correlation_bias: mode must be 'mask' or 'weight', got {mode!r}")
    edge = A > 0
    if validate:
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"correlation matrix: expected (C, C), got {tuple(A.shape)}")
        if not bool(torch.isfinite(A).all()):
            raise ValueError("correlation matrix: contains NaN or inf")
        empty = (~edge.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"correlation matrix: rows {empty[:10]} have no positive entry, so "
                             "those classes could attend to nothing; add self-loops (a positive "
                             "diagonal)")
    neg_inf = torch.full_like(A, float("-inf"))
    if mode == "mask":
        return torch.where(edge, torch.zeros_like(A), neg_inf)
    return torch.where(edge, A.clamp_min(1e-30).log(), neg_inf)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with separate query/key/value projections.

    ``softmax(Q K^T / sqrt(d_h) + M) V`` per head (Transformer eq. 1); ``M`` is ``attn_mask``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention: dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, n, dh)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, need_weights: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(out (B, Lq, d), weights (B, Lq, Lk) averaged over heads or None)``."""
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if attn_mask is not None:
                if attn_mask.dtype == torch.bool:
                    scores = scores.masked_fill(~attn_mask, float("-inf"))
                else:
                    scores = scores + attn_mask
            w = scores.softmax(dim=-1)
            weights = w.mean(dim=1)
            out = F.dropout(w, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        b, _, lq, _ = out.shape
        out = out.transpose(1, 2).reshape(b, lq, self.dim)
        return self.out_proj(out), weights


class FeedForward(nn.Module):
    """Position-wise FFN ``W_2 dropout(ReLU(W_1 x))`` (Transformer eq. 2)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class _AttentionBlock(nn.Module):
    """Attention + FFN, each with residual and post-LayerNorm (the DETR layer layout)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ff_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def _residual(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(a))
        return self.norm2(x + self.drop(self.ffn(x)))


class SelfAttentionLayer(_AttentionBlock):
    """(Masked) multi-head self-attention + FFN, each with residual and post-LayerNorm."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, w = self.attn(x, x, x, attn_mask=attn_mask, need_weights=need_weights)
        return self._residual(x, a), w


class CrossAttentionLayer(_AttentionBlock):
    """Multi-head cross-attention (queries ``x``; keys ``memory + pos``, values ``memory``,
    as in the DETR decoder) + FFN, each with residual and post-LayerNorm."""

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = memory if pos is None else memory + pos
        a, w = self.attn(x, key, memory, need_weights=need_weights)
        return self._residual(x, a), w


class ClassAttentionPooling(nn.Module):
    """Class-specific features by attention pooling of a feature map with one query per class.

    ``a_c = softmax_n(q_c . W_k (x_n + p_n) / sqrt(d))``, ``h_c = sum_n a_cn x_n``: the
    single-head query-to-position attention of ML-Decoder / Query2Label, with queries
    ``q_c`` given per call (e.g. projected label embeddings or learned class queries).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.k_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.k_proj.weight)
        nn.init.zeros_(self.k_proj.bias)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries`` (C, d) or (B, C, d), ``memory`` (B, N, d) -> (h (B, C, d), a (B, C, N))."""
        k = self.k_proj(memory if pos is None else memory + pos)
        if queries.dim() == 2:
            scores = torch.einsum("cd,bnd->bcn", queries, k)
        else:
            scores = torch.einsum("bcd,bnd->bcn", queries, k)
        a = (scores / math.sqrt(self.dim)).softmax(dim=-1)
        return a @ memory, a
