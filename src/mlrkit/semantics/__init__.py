"""Label semantics: embeddings (GloVe files, GloVe-50, sentence encoder) and label graphs."""

from __future__ import annotations

from .embeddings import label_embeddings
from .graphs import (
    binarize,
    conditional_probability,
    cooccurrence_graph,
    cosine_graph,
    label_graph,
    normalized_adjacency,
    reweight,
    validate_graph,
)

try:
    from .cooccurrence import cooccurrence
except ModuleNotFoundError as _e:  # written by the datasets module; absent in partial checkouts
    if _e.name != f"{__name__}.cooccurrence":
        raise

__all__ = ["binarize", "conditional_probability", "cooccurrence", "cooccurrence_graph",
           "cosine_graph", "label_embeddings", "label_graph", "normalized_adjacency",
           "reweight", "validate_graph"]
