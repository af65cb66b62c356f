"""Baseline: backbone + global average (or max) pooling + one linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import METHODS
from ..structures import Features, Output


@METHODS.register("baseline")
class Baseline(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, pooling: str = "avg",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in ("avg", "max"):
            raise ValueError(f"baseline: pooling must be 'avg' or 'max', got {pooling!r}")
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: Features) -> Output:
        fmap = features.map
        pooled = fmap.mean(dim=(2, 3)) if self.pooling == "avg" else fmap.amax(dim=(2, 3))
        return Output(logits=self.fc(self.dropout(pooled)))
