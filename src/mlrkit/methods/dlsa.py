"""DLSA: label semantic prior learning (LSPL, a GCN over the label graph), semantic
decoupling (SD, class attention from the alignment of the feature map with the LSPL
output) and self-attention reasoning (SAR, multi-head self-attention across the class
vectors), each switchable for the ablation.

Without LSPL the class semantic vectors are a linear map of the label embeddings; without
SD the class vectors are the global average-pooled feature ``g``, modulated per class by the
LSPL output when LSPL is on (``g * (1 + E^2_c)``, or ``g * E^2_c`` with
``modulation="product"``) and shared by all classes otherwise (then, without SAR, the head
is the plain baseline with a per-class classifier).
When the backbone's channels differ from ``d2`` a learned linear map (a 1x1 convolution)
projects the features to ``d2``; it is applied where it is cheapest (see
``SemanticAlignmentAttention``), with the same result as projecting the map first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.decoupling import ClassWiseLinear, SemanticAlignmentAttention
from ..nn.gcn import GCN
from ..registry import METHODS
from ..structures import Features, Output
from .mlgcn import require_semantics


class SelfAttentionReasoning(nn.Module):
    """Multi-head self-attention over class vectors with a residual (DLSA eq. 4-6), then two
    fully connected layers with ReLU.

    ``scale=False, out_proj=False`` is the paper's text: eq. 4 is a softmax of plain dot
    products ``<W_q v_n, W_k v_o>`` and eq. 6 concatenates the heads' outputs with no output
    projection. ``scale=True`` divides by ``sqrt(d_k)`` and ``out_proj=True`` adds ``W^O``
    (the Transformer forms).
    """

    def __init__(self, dim: int, heads: int = 4, ffn_dim: int | None = None,
                 dropout: float = 0.0, scale: bool = True, out_proj: bool = True,
                 ffn_residual: bool = False) -> None:
        super().__init__()
        self.ffn_residual = bool(ffn_residual)
        if dim % heads:
            raise ValueError(f"SAR: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = bool(scale)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim) if out_proj else None
        self.fc1 = nn.Linear(dim, ffn_dim or dim)
        self.fc2 = nn.Linear(ffn_dim or dim, dim)
        self.dropout = dropout

    def attend(self, v: torch.Tensor) -> torch.Tensor:
        """``concat_h softmax(Q_h K_h^T [/ sqrt(d_k)]) V_h [W^O]`` (DLSA eq. 4-5).

        Written out rather than ``scaled_dot_product_attention``: for C = 80 tokens and
        d_k = 320-512 the fused CPU kernel's backward measured 2x slower (bench_dlsa.py).
        """
        b, c, d = v.shape
        dk = d // self.heads
        q, k, val = self.qkv(v).view(b, c, 3, self.heads, dk).permute(
            2, 0, 3, 1, 4)  # each (B, heads, C, d_k)
        logits = q @ k.transpose(-2, -1)  # DLSA eq. 4: <W_q v_n, W_k v_o>
        attn = torch.softmax(logits * dk ** -0.5 if self.scale else logits, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        o = (attn @ val).transpose(1, 2).reshape(b, c, d)  # DLSA eq. 5, heads concatenated
        return self.out(o) if self.out is not None else o

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        z = v + self.attend(v)  # DLSA eq. 6: residual
        if self.ffn_residual:  # the Transformer form: z + FC2(ReLU(FC1(z)))
            return z + self.fc2(F.relu(self.fc1(z)))
        return F.relu(self.fc2(F.relu(self.fc1(z))))


class MeanFC(nn.Module):
    """``y = W mean_c(v_c) + b``: the mean of the class vectors, then one FC layer to the
    ``C`` scores (DLSA eq. 7 as the text words it)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.fc(v.mean(dim=1))  # DLSA eq. 7


@METHODS.register("dlsa")
class DLSA(nn.Module):
    """DLSA head with module switches ``lspl``, ``sd``, ``sar``.

    LSPL: ``E^2 = A LeakyReLU(A E^0 W^1) W^2`` with ``d1``, ``d2`` (eq. 2; with
    ``gcn_final_act`` the activation also follows the second layer, as eq. 2's sigma);
    SD: ``a_c = sigmoid(E^2_c . F)`` (``/ sqrt(d2)`` with ``align_scale``),
    ``v_c = mean_hw a_c F`` (eq. 3);
    SAR: ``heads``-head self-attention + residual + 2 FC layers (eq. 4-6; ``attn_scale``,
    ``attn_out_proj``: see ``SelfAttentionReasoning``);
    classifier (eq. 7): ``"classwise"`` ``y_c = w_c . v_c + b_c``, or ``"mean_fc"`` the
    paper's "mean computation and a fully connected classification layer",
    ``y = W mean_c(v_c) + b``.
    Small-data options (off by default; docs/methods.md, "Small data"): ``ffn_residual``
    (``z + FC2(ReLU(FC1(z)))`` after eq. 6), ``sd_pool="normalized"`` (eq. 3 divided by
    ``sum_hw a`` instead of ``H W``), ``center_semantics`` (align with ``s_c - mean_c s``).
    """

    def __init__(self, in_dim: int, num_classes: int, label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, lspl: bool = True, sd: bool = True,
                 sar: bool = True, d1: int = 1024, d2: int = 2048, heads: int = 4,
                 ffn_dim: int | None = None, dropout: float = 0.0,
                 negative_slope: float = 0.2, align_scale: bool = False,
                 modulation: str = "residual", attn_scale: bool = True,
                 attn_out_proj: bool = True, classifier: str = "classwise",
                 gcn_final_act: bool = False, sd_pool: str = "mean",
                 ffn_residual: bool = False, center_semantics: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.lspl, self.sd, self.sar = bool(lspl), bool(sd), bool(sar)
        self.d2 = d2
        self.proj = nn.Linear(in_dim, d2) if in_dim != d2 else None  # a 1x1 convolution
        if self.lspl or self.sd:
            emb, graph = require_semantics("dlsa", num_classes, label_embeddings, label_graph,
                                           need_graph=self.lspl)
            self.register_buffer("embeddings", emb)
            self.register_buffer("adj", graph)
            if self.lspl:
                self.gcn = GCN([emb.shape[1], d1, d2], negative_slope=negative_slope,
                               final_act=gcn_final_act)
            else:
                self.embed = nn.Linear(emb.shape[1], d2)
        if modulation not in ("residual", "product"):
            raise ValueError(f"dlsa: modulation must be 'residual' or 'product', "
                             f"got {modulation!r}")
        self.modulation = modulation
        self.center_semantics = bool(center_semantics)
        self.align = SemanticAlignmentAttention(d2, align_scale, sd_pool) if self.sd else None
        self.reason = (SelfAttentionReasoning(d2, heads, ffn_dim, dropout, scale=attn_scale,
                                              out_proj=attn_out_proj, ffn_residual=ffn_residual)
                       if self.sar else None)
        if classifier not in ("classwise", "mean_fc"):
            raise ValueError(f"dlsa: classifier must be 'classwise' or 'mean_fc', "
                             f"got {classifier!r}")
        self.classifier = (ClassWiseLinear(num_classes, d2) if classifier == "classwise"
                           else MeanFC(d2, num_classes))

    def semantics(self) -> torch.Tensor | None:
        """Class semantic vectors ``(C, d2)``: LSPL output ``E^2`` or a linear map of ``E^0``."""
        if self.lspl:
            return self.gcn(self.embeddings, self.adj)  # DLSA eq. 2
        if self.sd:
            return self.embed(self.embeddings)
        return None

    def align_semantics(self, s: torch.Tensor) -> torch.Tensor:
        """The class vectors SD aligns with: ``s`` or, with ``center_semantics``,
        ``s_c - mean_c' s_c'`` (what sets each class apart from the others)."""
        return s - s.mean(dim=0, keepdim=True) if self.center_semantics else s

    def forward(self, features: Features) -> Output:
        fmap = features.map
        s = self.semantics()
        attn = weights = None
        if self.align is not None:
            s = self.align_semantics(s)
            # the maps returned are the alignment scores before the sigmoid: in float32 the
            # sigmoid is exactly 1 above ~17, which ties most cells at the peak
            v, weights, attn = self.align(fmap, s, self.proj, return_logits=True)  # DLSA eq. 3
        else:
            g = fmap.mean(dim=(2, 3))
            g = (self.proj(g) if self.proj is not None else g)[:, None, :]  # (B, 1, d2)
            if s is None:
                v = g.expand(-1, self.num_classes, -1)
            elif self.modulation == "residual":
                v = g * (1 + s[None])  # starts as the pooled feature, E^2 modulates it
            else:
                v = g * s[None]
        if self.reason is not None:
            v = self.reason(v)  # DLSA eq. 4-6
        extras = {} if weights is None else {"attention_weights": weights}
        return Output(logits=self.classifier(v), attention=attn, extras=extras)  # DLSA eq. 7
