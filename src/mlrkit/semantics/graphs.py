"""Label graphs: conditional co-occurrence probabilities (DLSA eq. 1, ML-GCN), cosine graphs.

Every function takes and returns ``torch.Tensor`` (float32, on CPU unless given otherwise).
A graph is a ``(C, C)`` matrix whose row ``i`` holds the weights with which node ``i``
gathers from the other nodes (``H' = A @ H``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "binarize", "conditional_probability", "cooccurrence_graph", "cosine_graph", "label_graph",
    "load_adj_file", "normalized_adjacency", "release_graph", "reweight", "validate_graph",
]


def _as_float(x: torch.Tensor | np.ndarray | Sequence[float], name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not a numeric array ({e})") from None
    return t.to(torch.float32)


def validate_graph(A: torch.Tensor | np.ndarray, num_classes: int | None = None,
                   name: str = "label graph") -> torch.Tensor:
    """Check that ``A`` is a usable ``(C, C)`` graph and return it as float32.

    Raises ``ValueError`` for a wrong shape, NaN / inf entries, or a row with no weight at
    all (a node that would receive nothing, making a degree normalization divide by zero).
    """
    A = _as_float(A, name)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name}: expected a square (C, C) matrix, got shape {tuple(A.shape)}")
    if num_classes is not None and A.shape[0] != num_classes:
        raise ValueError(f"{name}: expected ({num_classes}, {num_classes}) for {num_classes} "
                         f"classes, got {tuple(A.shape)}; build the graph on the same label space")
    bad = ~torch.isfinite(A)
    if bool(bad.any()):
        r, c = bad.nonzero()[0].tolist()
        raise ValueError(f"{name}: {int(bad.sum())} NaN/inf entries (first at row {r}, column "
                         f"{c}); check the counts it was computed from")
    zero = (A.abs().sum(1) == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"{name}: all-zero row(s) {zero[:10]}{' ...' if len(zero) > 10 else ''}"
                         "; add self-loops (see reweight) or drop these classes")
    return A


def conditional_probability(counts: torch.Tensor | np.ndarray,
                            pairs: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``P[i, j] = P(L_j | L_i) = O_ij / O_i`` (DLSA eq. 1; ML-GCN sec. 3.3).

    ``counts`` (C,) is the positive count ``O_i`` of each class, ``pairs`` (C, C) the
    co-occurrence counts ``O_ij``. The diagonal is set to 0 (self-loops are added by
    ``reweight``); a class that never occurs gets a zero row.
    """
    n = _as_float(counts, "counts").to(torch.float64).flatten()
    o = _as_float(pairs, "pairs").to(torch.float64)
    c = n.numel()
    if o.shape != (c, c):
        raise ValueError(f"pairs: expected shape ({c}, {c}) to match {c} counts, "
                         f"got {tuple(o.shape)}")
    if bool((n < 0).any()) or bool((o < 0).any()):
        raise ValueError("counts/pairs: negative co-occurrence counts")
    if not (torch.isfinite(n).all() and torch.isfinite(o).all()):
        raise ValueError("counts/pairs: NaN or inf counts")
    P = o / n.clamp_min(1.0)[:, None]  # DLSA eq. 1: P(L_j | L_i) = O_ij / O_i
    P.fill_diagonal_(0.0)
    return P.to(torch.float32)


def binarize(P: torch.Tensor, tau: float = 0.4) -> torch.Tensor:
    """``A_ij = 1 if P_ij >= tau else 0`` (ML-GCN eq. 7, the noise-removing threshold)."""
    P = _as_float(P, "P")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"binarize: tau must lie in [0, 1], got {tau}")
    return (P >= tau).to(torch.float32)  # ML-GCN eq. 7


def reweight(A: torch.Tensor, p: float = 0.2) -> torch.Tensor:
    """Re-weighted adjacency of ML-GCN eq. 8.

    Off-diagonal entries of row ``i`` are scaled to sum to ``p``; the diagonal is ``1 - p``.
    A row without off-diagonal neighbours keeps only its self-loop with weight 1 (so every
    row sums to 1).
    """
    A = _as_float(A, "A")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"reweight: p must lie in [0, 1], got {p}")
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    off = A * (1 - eye)
    s = off.sum(1, keepdim=True)
    has = s > 0
    out = torch.where(has, off * p / s.clamp_min(1e-12), torch.zeros_like(off))  # ML-GCN eq. 8
    diag = torch.where(has.squeeze(1), torch.full_like(s.squeeze(1), 1 - p),
                       torch.ones_like(s.squeeze(1)))
    return out + torch.diag(diag)


def normalized_adjacency(A: torch.Tensor) -> torch.Tensor:
    """Symmetric degree normalization ``D^-1/2 A D^-1/2`` with ``D_ii = sum_j A_ij`` (GCN eq. 2).

    Raises ``ValueError`` on a row with zero degree.
    """
    A = validate_graph(A, name="adjacency")
    d = A.sum(1)
    if bool((d <= 0).any()):
        rows = (d <= 0).nonzero().flatten().tolist()[:10]
        raise ValueError(f"adjacency: rows {rows} have non-positive degree; cannot normalize")
    r = d.rsqrt()
    return r[:, None] * A * r[None, :]  # D^-1/2 A D^-1/2


def cosine_graph(embeddings: torch.Tensor | np.ndarray, tau: float | None = None) -> torch.Tensor:
    """Cosine similarity of label embeddings ``(C, E) -> (C, C)``.

    With ``tau`` given, entries below ``tau`` are set to 0 (the others keep their similarity);
    the diagonal is always 1.
    """
    E = _as_float(embeddings, "embeddings")
    if E.dim() != 2:
        raise ValueError(f"embeddings: expected shape (C, E), got {tuple(E.shape)}")
    norms = E.norm(dim=1)
    if bool((norms == 0).any()):
        rows = (norms == 0).nonzero().flatten().tolist()[:10]
        raise ValueError(f"embeddings: rows {rows} are all zero; cosine similarity is undefined")
    En = E / norms[:, None]
    S = (En @ En.T).clamp(-1.0, 1.0)
    if tau is not None:
        S = torch.where(S >= tau, S, torch.zeros_like(S))
    S.fill_diagonal_(1.0)
    return S


def _cooccurrence(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from .cooccurrence import cooccurrence

    counts, pairs = cooccurrence(targets)
    return torch.as_tensor(counts), torch.as_tensor(pairs)


def cooccurrence_graph(targets: torch.Tensor, tau: float = 0.4, p: float = 0.2,
                       normalize: bool = True) -> torch.Tensor:
    """GCN adjacency from training targets as ML-GCN builds it.

    Positive co-occurrence counts (``targets == 1``; unknown 0 entries count as absent) ->
    conditional probability (DLSA eq. 1) -> binarize at ``tau`` (ML-GCN eq. 7) ->
    re-weight with ``p`` (ML-GCN eq. 8) -> ``D^-1/2 A D^-1/2`` when ``normalize``.
    """
    counts, pairs = _cooccurrence(targets)
    A = reweight(binarize(conditional_probability(counts, pairs), tau), p)
    return normalized_adjacency(A) if normalize else A


def release_graph(counts: torch.Tensor | np.ndarray, pairs: torch.Tensor | np.ndarray,
                  tau: float = 0.4, p: float = 0.25) -> torch.Tensor:
    """The adjacency ML-GCN's released code builds (not its paper's eq. 8).

    Binarize ``P(L_j | L_i)`` at ``tau``; scale each *column* to sum to ``p`` (0.25 in the
    release); add the identity (diagonal 1, not ``1 - p``); then ``(A D)^T D`` with
    ``D = diag(rowsum(A)^-1/2)``, i.e. ``D A^T D``: normalized and transposed.
    """
    B = binarize(conditional_probability(counts, pairs), tau).to(torch.float64)
    A = B * p / (B.sum(0, keepdim=True) + 1e-6)  # column sums, as the release
    A = A + torch.eye(A.shape[0], dtype=A.dtype)
    d = A.sum(1).rsqrt()
    return (d[:, None] * A.T * d[None, :]).to(torch.float32)  # (A D)^T D


def load_adj_file(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an ML-GCN style ``adj.pkl`` (dict with ``nums`` (C,) and ``adj`` (C, C))."""
    from ..io import safe_load_pickle

    d = safe_load_pickle(path)
    if not isinstance(d, dict) or "nums" not in d or "adj" not in d:
        keys = list(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{path}: expected a dict with keys 'nums' and 'adj', got {keys}")
    nums = torch.as_tensor(np.asarray(d["nums"], dtype=np.float64)).flatten()
    adj = torch.as_tensor(np.asarray(d["adj"], dtype=np.float64))
    if adj.shape != (nums.numel(), nums.numel()):
        raise ValueError(f"{path}: 'adj' has shape {tuple(adj.shape)} but 'nums' has "
                         f"{nums.numel()} entries")
    return nums, adj


def label_graph(source: str | os.PathLike[str], targets: torch.Tensor | None = None,
                names: Sequence[str] | None = None, tau: float = 0.4, p: float = 0.2,
                normalize: bool = True) -> torch.Tensor:
    """One entry point for a method's label graph ``(C, C)``.

    ``source`` is ``"cooccurrence"`` (from the training ``targets``), ``"conditional"``
    (the conditional probabilities ``P(L_j | L_i)`` of the targets with a unit diagonal, the
    graph SSGRL propagates over; ``tau`` / ``p`` / ``normalize`` unused),
    ``"conditional_normalized"`` (the same, then ``D^-1/2 A D^-1/2``: DLSA's normalized
    matrix of eq. 2, every co-occurring pair an edge), ``"mlgcn_release"`` (ML-GCN's
    released-code graph, ``release_graph``, from the targets; ``"mlgcn_release:<adj.pkl>"``
    from an adj file), ``"cosine:<embedding
    source>"`` (cosine similarity of ``label_embeddings(<embedding source>, names)``,
    thresholded at ``tau``), or a path: an ML-GCN ``adj.pkl`` (``nums`` / ``adj`` counts, turned
    into a graph like ``"cooccurrence"``) or a ``(C, C)`` ``.npy`` matrix used as given (e.g. a
    relation matrix). ``tau`` / ``p`` / ``normalize`` follow ``cooccurrence_graph``.
    """
    src = str(source)
    c = len(names) if names is not None else None
    if src == "cooccurrence":
        if targets is None:
            raise ValueError("label_graph('cooccurrence'): give the training targets")
        A = cooccurrence_graph(targets, tau=tau, p=p, normalize=normalize)
    elif src in ("conditional", "conditional_normalized"):
        if targets is None:
            raise ValueError(f"label_graph({src!r}): give the training targets")
        A = conditional_probability(*_cooccurrence(targets))
        A.fill_diagonal_(1.0)
        if src == "conditional_normalized":  # DLSA eq. 1-2: M-hat, no threshold, no re-weight
            A = normalized_adjacency(A)
    elif src == "mlgcn_release" or src.startswith("mlgcn_release:"):
        if ":" in src:  # counts from an ML-GCN adj.pkl
            counts, pairs = load_adj_file(src.split(":", 1)[1])
        elif targets is None:
            raise ValueError(f"label_graph({src!r}): give the training targets")
        else:
            counts, pairs = _cooccurrence(targets)
        A = release_graph(counts, pairs, tau=tau)
    elif src.startswith("cosine:"):
        if names is None:
            raise ValueError(f"label_graph({src!r}): give the class names")
        from .embeddings import label_embeddings

        A = cosine_graph(label_embeddings(src[len("cosine:"):], names), tau=tau)
        if normalize:
            A = normalized_adjacency(A.clamp_min(0.0))
    else:
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(
                f"label graph {src!r}: no such file; use 'cooccurrence', 'cosine:<source>', "
                "or a path to an adj .pkl (nums/adj) or a (C, C) .npy")
        if path.suffix == ".pkl":
            nums, adj = load_adj_file(path)
            A = reweight(binarize(conditional_probability(nums, adj), tau), p)
            if normalize:
                A = normalized_adjacency(A)
        elif path.suffix == ".npy":
            A = torch.as_tensor(np.load(path, allow_pickle=False)).to(torch.float32)
        else:
            raise ValueError(f"{path}: unsupported graph file type {path.suffix!r} "
                             "(use .pkl with nums/adj or .npy)")
    A = validate_graph(A, c, name=f"label graph {src!r}")
    return A
