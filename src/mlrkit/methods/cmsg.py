"""CMSG: cross-modality semantic guidance for multi-label image recognition.

Pipeline (choices where the paper is silent are listed in docs/methods.md):

1. project the backbone map ``(B, D, H, W)`` to ``d = hidden_dim`` (1x1 conv) and add a 2-D
   sine positional encoding to the keys;
2. form class-specific features by attention pooling with one query per class, the query
   being the projected label embedding (learned queries when no embeddings are given);
3. SGA: ``layers`` layers of multi-head masked self-attention over the class features, the
   semantic correlation matrix ``A`` entering the scores (``-inf`` where ``A_ij = 0``;
   ``+ log A_ij`` elsewhere in the default ``correlation_mode="weight"``), each + FFN;
4. SAA: ``layers`` layers of multi-head cross-attention, class features as queries and the
   spatial map as keys / values, each + FFN;
5. per-class linear classifier ``logit_c = <w_c, h_c> + b_c``.

``A`` is the cosine similarity of the label embeddings, binarized at ``tau`` (ML-GCN eq. 7)
and re-weighted with ``p`` (ML-GCN eq. 8), or a ``label_graph`` passed in, used as is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.attention import (
    ClassAttentionPooling,
    CrossAttentionLayer,
    SelfAttentionLayer,
    correlation_bias,
    sine_position_encoding,
)
from ..nn.decoupling import ClassWiseLinear
from ..registry import METHODS
from ..structures import Features, Output

__all__ = ["CMSG", "semantic_correlation"]


def semantic_correlation(label_embeddings: torch.Tensor, tau: float = 0.4,
                         p: float = 0.2) -> torch.Tensor:
    """Semantic correlation matrix ``(C, C)`` from label embeddings ``(C, E)``.

    Cosine similarity, binarized at ``tau`` (ML-GCN eq. 7), re-weighted with ``p``
    (ML-GCN eq. 8: neighbours of a class share weight ``p``, the class itself keeps ``1 - p``).
    """
    from ..semantics.graphs import binarize, cosine_graph, reweight

    return reweight(binarize(cosine_graph(label_embeddings), tau), p)


@METHODS.register("cmsg")
class CMSG(nn.Module):
    """CMSG head: class formation -> SGA (masked self-attention) -> SAA (cross-attention).

    Options: ``hidden_dim`` (d), ``heads``, ``layers`` (for both SGA and SAA unless
    ``sga_layers`` / ``saa_layers`` are given), ``ff_dim`` (default ``4 d``), ``dropout``,
    ``tau`` / ``p`` (correlation matrix), switches ``sga`` / ``saa`` / ``correlation``
    (ablations), ``correlation_mode`` (``"weight"`` or ``"mask"``), ``return_attention``.

    ``Output.attention`` is the class formation's attention over positions (one query per
    class from its label embedding): the class-specific map. The last SAA cross-attention
    (averaged over heads) goes to ``extras["saa_attention"]``: its class queries are nearly
    alike after SGA, so its maps are nearly one map per image (docs/methods.md, "Pointing
    game").
    """

    def __init__(self, in_dim: int, num_classes: int,
                 label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, *, hidden_dim: int = 512,
                 heads: int = 4, layers: int = 1, sga_layers: int | None = None,
                 saa_layers: int | None = None, ff_dim: int | None = None,
                 dropout: float = 0.1, tau: float = 0.4, p: float = 0.2, sga: bool = True,
                 saa: bool = True, correlation: bool = True, correlation_mode: str = "weight",
                 return_attention: bool = True) -> None:
        super().__init__()
        if hidden_dim % heads != 0 or hidden_dim % 4 != 0:
            raise ValueError(f"cmsg: hidden_dim {hidden_dim} must be divisible by heads "
                             f"({heads}) and by 4 (sine positional encoding)")
        n_sga = layers if sga_layers is None else sga_layers
        n_saa = layers if saa_layers is None else saa_layers
        if min(n_sga, n_saa) < 0:
            raise ValueError(f"cmsg: layers must be >= 0, got sga {n_sga}, saa {n_saa}")
        if correlation_mode not in ("weight", "mask"):
            raise ValueError(f"cmsg: correlation_mode must be 'weight' or 'mask', "
                             f"got {correlation_mode!r}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.use_sga, self.use_saa = bool(sga) and n_sga > 0, bool(saa) and n_saa > 0
        self.use_correlation = bool(correlation) and self.use_sga
        self.correlation_mode = correlation_mode
        self.return_attention = return_attention
        ff = 4 * hidden_dim if ff_dim is None else ff_dim

        self.input_proj = nn.Conv2d(in_dim, hidden_dim, kernel_size=1)
        if label_embeddings is not None:
            emb = torch.as_tensor(label_embeddings, dtype=torch.float32)
            if emb.dim() != 2 or emb.shape[0] != num_classes:
                raise ValueError(f"cmsg: label_embeddings must be ({num_classes}, E), "
                                 f"got {tuple(emb.shape)}")
            self.register_buffer("label_embeddings", emb)
            self.query_proj: nn.Module | None = nn.Linear(emb.shape[1], hidden_dim)
            self.class_queries = None
        else:
            self.register_buffer("label_embeddings", None)
            self.query_proj = None
            self.class_queries = nn.Parameter(torch.randn(num_classes, hidden_dim) * 0.02)
        self.formation = ClassAttentionPooling(hidden_dim)

        if self.use_correlation:
            if label_graph is not None:
                A = torch.as_tensor(label_graph, dtype=torch.float32)
                if A.shape != (num_classes, num_classes):
                    raise ValueError(f"cmsg: label_graph must be ({num_classes}, {num_classes}),"
                                     f" got {tuple(A.shape)}")
            elif label_embeddings is not None:
                A = semantic_correlation(self.label_embeddings, tau=tau, p=p)
            else:
                raise ValueError("cmsg: the correlation matrix needs label_embeddings or a "
                                 "label_graph (model.label_embeddings: glove50 in the config), "
                                 "or set options.correlation: false")
            correlation_bias(A, correlation_mode)  # validates: finite, no empty row
            self.register_buffer("correlation", A)
        else:
            self.register_buffer("correlation", None)

        self.sga_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, heads, ff, dropout)
            for _ in range(n_sga if self.use_sga else 0))
        self.saa_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, heads, ff, dropout)
            for _ in range(n_saa if self.use_saa else 0))
        self.classifier = ClassWiseLinear(num_classes, hidden_dim)

    def queries(self) -> torch.Tensor:
        """The formation queries ``(C, d)``."""
        if self.query_proj is not None:
            return self.query_proj(self.label_embeddings)
        return self.class_queries

    def forward(self, features: Features) -> Output:
        fmap = features.map
        if fmap.dim() != 4:
            raise ValueError(f"cmsg: expected a feature map (B, D, H, W), got {tuple(fmap.shape)}")
        x = self.input_proj(fmap)
        b, d, h, w = x.shape
        memory = x.flatten(2).transpose(1, 2)  # (B, N, d)
        pos = sine_position_encoding(h, w, d, device=x.device, dtype=x.dtype)[None]

        hc, attn = self.formation(self.queries(), memory, pos)  # (B, C, d), (B, C, N)

        bias = None
        if self.use_correlation:
            bias = correlation_bias(self.correlation, self.correlation_mode, validate=False)
        for layer in self.sga_layers:
            hc, _ = layer(hc, attn_mask=bias)

        n_saa = len(self.saa_layers)
        saa_attn = None
        for i, layer in enumerate(self.saa_layers):
            last = self.return_attention and i == n_saa - 1
            hc, a = layer(hc, memory, pos, need_weights=last)
            if last:
                saa_attn = a.reshape(b, self.num_classes, h, w)

        logits = self.classifier(hc)
        attention = attn.reshape(b, self.num_classes, h, w) if self.return_attention else None
        extras = {"class_features": hc}
        if saa_attn is not None:
            extras["saa_attention"] = saa_attn
        return Output(logits=logits, attention=attention, extras=extras)
