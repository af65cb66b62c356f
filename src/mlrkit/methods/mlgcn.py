"""ML-GCN (Chen et al., CVPR 2019): a two-layer GCN over label embeddings, on the re-weighted
co-occurrence graph, produces one classifier per class; ``logits = pooled . W^T``."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.gcn import GCN
from ..registry import METHODS
from ..semantics.graphs import validate_graph
from ..structures import Features, Output


def require_semantics(method: str, num_classes: int, label_embeddings: torch.Tensor | None,
                      label_graph: torch.Tensor | None, need_graph: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check and return the label embeddings ``(C, E)`` and graph ``(C, C)`` a method needs."""
    if label_embeddings is None:
        raise ValueError(f"{method}: needs label_embeddings (C, E), e.g. model.label_embeddings:"
                         " glove50, minilm or a .pkl/.npy file")
    emb = torch.as_tensor(label_embeddings, dtype=torch.float32)
    if emb.dim() != 2 or emb.shape[0] != num_classes:
        raise ValueError(f"{method}: label_embeddings must have shape ({num_classes}, E), "
                         f"got {tuple(emb.shape)}")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{method}: label_embeddings contain NaN or inf")
    graph = None
    if need_graph:
        if label_graph is None:
            raise ValueError(f"{method}: needs label_graph (C, C), e.g. model.label_graph: "
                             "cooccurrence")
        graph = validate_graph(label_graph, num_classes, name=f"{method} label_graph")
    return emb, graph


@METHODS.register("mlgcn")
class MLGCN(nn.Module):
    """ML-GCN head: image vector ``x`` (global max pooling, ML-GCN sec. 3.4) and GCN classifiers
    ``W = GCN(E, A)`` ``(C, D)``; ``y = W x`` (ML-GCN eq. 4)."""

    def __init__(self, in_dim: int, num_classes: int, label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, d1: int = 1024, pooling: str = "max",
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"mlgcn: pooling must be 'max' or 'avg', got {pooling!r}")
        emb, graph = require_semantics("mlgcn", num_classes, label_embeddings, label_graph)
        self.num_classes = num_classes
        self.pooling = pooling
        self.register_buffer("embeddings", emb)
        self.register_buffer("adj", graph)
        self.gcn = GCN([emb.shape[1], d1, in_dim], negative_slope=negative_slope)

    def classifiers(self) -> torch.Tensor:
        """The GCN-generated classifiers ``W`` (C, D)."""
        return self.gcn(self.embeddings, self.adj)

    def forward(self, features: Features) -> Output:
        fmap = features.map
        x = fmap.amax(dim=(2, 3)) if self.pooling == "max" else fmap.mean(dim=(2, 3))
        w = self.classifiers()
        return Output(logits=x @ w.T)  # ML-GCN eq. 4: y = W x
