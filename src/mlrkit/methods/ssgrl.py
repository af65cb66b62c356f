"""SSGRL (Chen et al., ICCV 2019): semantic decoupling by low-rank bilinear attention guided
by label embeddings, gated graph propagation over the co-occurrence graph, and a per-class
classifier. The baseline DLSA compares with."""

from __future__ import annotations

import torch
from torch import nn

from ..nn.decoupling import ClassWiseLinear, LowRankBilinearAttention
from ..nn.ggnn import GatedGNN
from ..registry import METHODS
from ..structures import Features, Output
from .mlgcn import require_semantics


@METHODS.register("ssgrl")
class SSGRL(nn.Module):
    """SSGRL head.

    Class vectors ``f_c`` from ``LowRankBilinearAttention`` (eq. 1-3) initialize the GGNN
    (``h^0_c = f_c``), ``steps`` propagation steps over the graph (eq. 4-6), output
    ``o_c = tanh(f_o([h^T_c, h^0_c]))`` (eq. 7) and ``s_c = w_c . o_c + b_c`` (eq. 8).
    The graph is used as given: ``A`` for incoming and ``A^T`` for outgoing messages
    (SSGRL uses the conditional probabilities, ``label_graph: conditional``).
    """

    def __init__(self, in_dim: int, num_classes: int, label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, inter_dim: int = 1024,
                 out_dim: int | None = None, steps: int = 3,
                 proj_dim: int | None = None) -> None:
        super().__init__()
        emb, graph = require_semantics("ssgrl", num_classes, label_embeddings, label_graph)
        self.num_classes = num_classes
        # optional 1x1 convolution of the backbone map to proj_dim channels: the GGNN works at
        # the map's width, so a narrower map makes it affordable on a CPU
        self.proj = nn.Conv2d(in_dim, proj_dim, 1) if proj_dim else None
        in_dim = proj_dim or in_dim
        out_dim = out_dim or in_dim
        self.register_buffer("embeddings", emb)
        self.register_buffer("adj", graph)
        self.decouple = LowRankBilinearAttention(in_dim, emb.shape[1], inter_dim)
        self.ggnn = GatedGNN(in_dim, steps)
        self.fo = nn.Linear(2 * in_dim, out_dim)
        self.classifier = ClassWiseLinear(num_classes, out_dim)

    def forward(self, features: Features) -> Output:
        fmap = features.map if self.proj is None else self.proj(features.map)
        f, attn = self.decouple(fmap, self.embeddings)  # SSGRL eq. 1-3
        h = self.ggnn(f, self.adj)  # SSGRL eq. 4-6
        o = torch.tanh(self.fo(torch.cat([h, f], dim=-1)))  # SSGRL eq. 7
        return Output(logits=self.classifier(o), attention=attn)  # SSGRL eq. 8
