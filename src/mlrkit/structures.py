"""What flows between rooms: backbone ``Features``, method ``Output``, label ``Semantics``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Features:
    """What a backbone returns: a feature map and optionally a pooled vector and tokens."""

    map: torch.Tensor  # (B, D, H, W)
    pooled: torch.Tensor | None = None  # (B, D)
    tokens: torch.Tensor | None = None  # (B, N, D), e.g. ViT patch tokens


@dataclass
class Output:
    """What a method head returns."""

    logits: torch.Tensor  # (B, C)
    attention: torch.Tensor | None = None  # (B, C, H, W)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Semantics:
    """Label semantics a head may use: embeddings (C, E) and a graph (C, C)."""

    embeddings: torch.Tensor | None = None
    graph: torch.Tensor | None = None
