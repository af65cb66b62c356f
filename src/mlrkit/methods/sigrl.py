"""SigRL (Zhang et al., 2025): semantic-guided representation learning for zero-shot and
single-positive multi-label recognition.

On patch features ``F (B, P, D)`` (a CLIP ViT's projected patch tokens), a global feature
``g (B, D)`` (its projected class token) and label embeddings ``H (C, D)`` in the same space:

* GMC (eq. 2-4): a two-layer GATv2 on the complete label graph, ``H^ = GAT(H)``;
* SDA (eq. 5-7): per class ``c`` and channel, attention over patches
  ``a_c = softmax_P(FC(tanh(F * h_c)))`` (B, P, D), class features ``m_c = sum_p a_cp * F_p``;
* relation (eq. 8-9): ``T = M Norm(ReLU(M^T H))`` (the reference code's channel relation) or
  ``T = Norm(ReLU(cos(M, H))) M`` (the paper's class relation, ``relation="class"``);
* VFR (eq. 10-12): ``O = FC([T, H^])``; ``a^_c = softmax_P(FC(tanh(F * o_c)))``;
  reconstructed patches ``M^_p = F_p * sum_c a^_cp``;
* score (eq. 13): global ``<h_c, g>`` and local mean of the top-k patches of
  ``<h_c, M^_p>``; with ``score_norm="l2"`` (the reference code) each is L2-normalized over the
  scored classes and the two are averaged, with ``"none"`` they are added (the paper's text).

The head scores any label set: ``forward(features, label_embeddings)`` with a ``(C', E)``
tensor runs the graph, SDA, VFR and the score on those ``C'`` labels; without it, the stored
training embeddings are used. SDA and VFR form ``(B, P, C, D)`` tensors; they are computed in
class chunks (``class_chunk``) and, when gradients are needed, recomputed chunk by chunk in
the backward pass, so peak memory does not hold more than one chunk of them.

Inputs that do not share a space (a CNN map of any width, GloVe / MiniLM label embeddings of
any width) are projected by learned linear maps into a joint space of ``joint_dim``
features: ``project_visual`` for the map and the pooled feature, ``project_labels`` for the
label embeddings. ``variant="mkt"`` is the MKT / SigRL-ablation baseline (global + top-k on
the raw patches, no GAT, SDA or VFR); ``variant="projection"`` scores the global feature
alone.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..nn.gat import GATv2
from ..registry import METHODS
from ..structures import Features, Output
from .mlgcn import require_semantics

__all__ = ["SigRL", "sda_pool", "vfr_attention_sum"]

# elements of one (B, P, classes, D) block of SDA / VFR activations; 2^25 floats = 128 MiB
SIGRL_BLOCK = 1 << 25

VARIANTS = ("full", "mkt", "projection")


def _patch_attention(u: torch.Tensor, q: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """``a[b, p, c, :] = softmax_p(FC(tanh(u[b, p] * q[b, c])))`` for ``u (B, P, D)``,
    ``q (B or 1, c, D)`` -> ``(B, P, c, D)``: one attention weight per patch, class and
    channel, normalized over the patches."""
    t = torch.tanh(u[:, :, None, :] * q[:, None, :, :].to(u.dtype))  # eq. 5 / 10: tanh(F * h)
    return torch.softmax(F.linear(t, weight, bias), dim=1)  # eq. 5 / 10 FC, eq. 7 / 11 softmax


def sda_pool(u: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    """Category-specific features ``m[b, c] = sum_p a[b, p, c] * u[b, p]`` (B, c, D)
    (SigRL eq. 5-7) for patches ``u (B, P, D)`` and label embeddings ``h (c, D)``."""
    a = _patch_attention(u, h[None], weight, bias)
    return (a * u[:, :, None, :]).sum(1)  # SigRL eq. 6 (faster than einsum here on CPU)


def vfr_attention_sum(u: torch.Tensor, o: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``sum_c a^[b, p, c]`` (B, P, D) for patches ``u (B, P, D)`` and per-image class
    vectors ``o (B, c, D)`` (SigRL eq. 10-11, summed over the classes for eq. 12)."""
    return _patch_attention(u, o, weight, bias).sum(2)


def _chunks(n: int, step: int) -> list[slice]:
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _int_option(name: str, value: Any, minimum: int) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < minimum:
        raise ValueError(f"sigrl: {name} must be an integer >= {minimum}, got {value!r}")
    return n


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@METHODS.register("sigrl")
class SigRL(nn.Module):
    """SigRL head (``variant="full"``) and its two baselines (``"mkt"``, ``"projection"``).

    Options: ``joint_dim`` (default: the label embedding width), ``project_visual`` /
    ``project_labels`` (default: project exactly when the width differs from ``joint_dim``),
    ``topk`` (16), ``score_norm`` (``"l2"`` | ``"none"``), ``relation`` (``"channel"`` |
    ``"class"``), ``vfr_reduce`` (``"sum"`` over classes as the reference code, or
    ``"mean"``), GAT ``gat_hidden`` (128), ``gat_heads`` (4), ``gat_dropout`` (0.3), and
    ``class_chunk`` (None: chunks of at most ``SIGRL_BLOCK`` elements; 0: no chunking, the
    equations as written; n: n classes per chunk), ``visual_init`` (``auto``: CLIP's dense
    projection on a CLIP ResNet, else random; ``clip_dense``; ``random``).
    """

    def __init__(self, in_dim: int, num_classes: int,
                 label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, variant: str = "full",
                 joint_dim: int | None = None, project_visual: bool | None = None,
                 project_labels: bool | None = None, topk: int = 16, score_norm: str = "l2",
                 relation: str = "channel", vfr_reduce: str = "sum", gat_hidden: int = 128,
                 gat_heads: int = 4, gat_dropout: float = 0.3,
                 class_chunk: int | None = None, backbone: Any = None,
                 visual_init: str = "auto") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"sigrl: variant must be one of {', '.join(VARIANTS)}, "
                             f"got {variant!r}")
        for name, val, allowed in (("score_norm", score_norm, ("l2", "none")),
                                   ("relation", relation, ("channel", "class")),
                                   ("vfr_reduce", vfr_reduce, ("sum", "mean"))):
            if val not in allowed:
                raise ValueError(f"sigrl: {name} must be one of {', '.join(allowed)}, "
                                 f"got {val!r}")
        topk = _int_option("topk", topk, 1)
        if class_chunk is not None:
            class_chunk = _int_option("class_chunk", class_chunk, 0)
        if joint_dim is not None:
            joint_dim = _int_option("joint_dim", joint_dim, 1)
        if label_graph is not None:
            raise ValueError("sigrl: takes no label_graph (its GAT runs on the complete graph "
                             "of the scored labels); leave model.label_graph unset")
        emb, _ = require_semantics("sigrl", num_classes, label_embeddings, None,
                                   need_graph=False)
        self.num_classes = num_classes
        self.variant, self.score_norm = variant, score_norm
        self.relation, self.vfr_reduce = relation, vfr_reduce
        self.topk, self.class_chunk = topk, class_chunk
        self.in_dim, self.emb_dim = int(in_dim), int(emb.shape[1])
        self.joint_dim = j = self.emb_dim if joint_dim is None else joint_dim
        self.register_buffer("embeddings", emb)
        self.visual_proj = self._projection("project_visual", project_visual, self.in_dim,
                                            "features' width (in_dim)")
        self.label_proj = self._projection("project_labels", project_labels, self.emb_dim,
                                           "label embeddings' width")
        if visual_init not in ("auto", "random", "clip_dense"):
            raise ValueError(f"sigrl: visual_init must be auto, random or clip_dense, got "
                             f"{visual_init!r}")
        self._init_visual(backbone, visual_init)
        if variant == "full":
            self.gat = GATv2(j, gat_hidden, j, heads=gat_heads, dropout=gat_dropout)
            self.sda_fc = nn.Linear(j, j)  # SigRL eq. 5 FC
            self.vfr_in = nn.Linear(2 * j, j, bias=False)  # O = FC([T, H^])
            self.vfr_fc = nn.Linear(j, j)  # SigRL eq. 10 FC

    def _projection(self, name: str, on: bool | None, width: int,
                    what: str) -> nn.Linear | None:
        if on is None:
            on = width != self.joint_dim
        if not on and width != self.joint_dim:
            raise ValueError(f"sigrl: {name}=false needs the {what} {width} to equal "
                             f"joint_dim {self.joint_dim}")
        return nn.Linear(width, self.joint_dim) if on else None

    def _init_visual(self, backbone: Any, how: str) -> None:
        """``clip_dense`` (``auto`` on a CLIP ResNet): start the patch projection as CLIP's
        own dense projection, the attention pool's value and output maps composed into one
        affine map ``W = W_c W_v``, ``b = W_c b_v + b_c`` (DualCoOp's dense features), so
        the local scores start in CLIP's joint space; the pooled feature is then CLIP's
        attention-pool output, already in that space."""
        pool = getattr(getattr(backbone, "visual", None), "attnpool", None)
        fits = (pool is not None and self.visual_proj is not None
                and pool.v_proj.in_features == self.in_dim
                and pool.c_proj.out_features == self.joint_dim)
        if how == "clip_dense" and not fits:
            raise ValueError("sigrl: visual_init=clip_dense needs a CLIP ResNet backbone whose "
                             f"map width ({self.in_dim}) and joint space ({self.joint_dim}) "
                             "match its attention pool")
        if how == "random" or not fits:
            return
        with torch.no_grad():
            wv, bv = pool.v_proj.weight.float(), pool.v_proj.bias.float()
            wc, bc = pool.c_proj.weight.float(), pool.c_proj.bias.float()
            self.visual_proj.weight.copy_(wc @ wv)
            self.visual_proj.bias.copy_(wc @ bv + bc)

    # ------------------------------------------------------------------------ pieces
    def label_features(self, label_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """The scored label embeddings in the joint space ``(C', joint_dim)``."""
        h = self.embeddings if label_embeddings is None else self._check_labels(label_embeddings)
        return self.label_proj(h) if self.label_proj is not None else h

    def _check_labels(self, emb: Any) -> torch.Tensor:
        e = torch.as_tensor(emb).to(self.embeddings.device, self.embeddings.dtype)
        if e.dim() != 2 or e.shape[0] < 1 or e.shape[1] != self.emb_dim:
            raise ValueError(f"sigrl: label_embeddings must have shape (C, {self.emb_dim}) with "
                             f"C >= 1, got {tuple(e.shape)}")
        if not torch.isfinite(e).all():
            raise ValueError("sigrl: label_embeddings contain NaN or inf")
        return e

    def _step(self, b: int, p: int, d: int, c: int) -> int:
        """Classes per SDA / VFR chunk."""
        if self.class_chunk == 0:
            return c
        if self.class_chunk is None:
            return max(1, SIGRL_BLOCK // max(1, b * p * d))
        return self.class_chunk

    def sda(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Semantic decoupling attention (SigRL eq. 5-7): ``M (B, C, D)``."""
        c = h.shape[0]
        step = self._step(u.shape[0], u.shape[1], u.shape[2], c)
        w, bias = self.sda_fc.weight, self.sda_fc.bias
        if step >= c:
            return sda_pool(u, h, w, bias)
        recompute = _needs_grad(u, h, w, bias)
        out = [checkpoint(sda_pool, u, h[cs], w, bias, use_reentrant=False) if recompute
               else sda_pool(u, h[cs], w, bias) for cs in _chunks(c, step)]
        return torch.cat(out, dim=1)

    def relate(self, m: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Text-visual relation (SigRL eq. 8-9): semantic decoupled features ``T (B, C, D)``."""
        if self.relation == "class":
            q = F.relu(F.normalize(m, dim=-1) @ F.normalize(h, dim=-1).T)  # eq. 8 (B, C, C)
            return F.normalize(q, dim=-1) @ m  # eq. 9: T^i = Norm(Q^i) M
        # the reference code: (M^T H) (B, D, D), ReLU, rows L2-normalized, then M times it
        r = torch.einsum("bcd,ce->bde", m, h.to(m.dtype))
        return m @ F.normalize(F.relu(r), dim=-1)

    def vfr(self, u: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Visual feature reconstruction (SigRL eq. 10-12): ``M^ (B, P, D)``."""
        c = o.shape[1]
        step = self._step(u.shape[0], u.shape[1], u.shape[2], c)
        w, bias = self.vfr_fc.weight, self.vfr_fc.bias
        if step >= c:
            s = vfr_attention_sum(u, o, w, bias)
        else:
            recompute = _needs_grad(u, o, w, bias)
            s = None
            for cs in _chunks(c, step):
                part = (checkpoint(vfr_attention_sum, u, o[:, cs], w, bias, use_reentrant=False)
                        if recompute else vfr_attention_sum(u, o[:, cs], w, bias))
                s = part if s is None else s + part
        if self.vfr_reduce == "mean":
            s = s / c
        return u * s  # SigRL eq. 12: M^_p = sum_c a^_cp * F_p

    def _visual(self, v: torch.Tensor) -> torch.Tensor:
        return self.visual_proj(v) if self.visual_proj is not None else v

    def _norm(self, s: torch.Tensor) -> torch.Tensor:
        return F.normalize(s, dim=-1) if self.score_norm == "l2" else s

    # ----------------------------------------------------------------------- forward
    def forward(self, features: Features,
                label_embeddings: torch.Tensor | None = None) -> Output:
        """Scores ``(B, C')`` for the given label embeddings ``(C', E)``, else the stored ones.

        ``Output.attention``: the local scores ``<h_c, M^_p>`` per patch ``(B, C', h, w)``
        (``None`` for ``variant="projection"``). ``Output.extras``: ``global_feature`` (the
        global feature in the joint space, ``F_class`` of SigRL eq. 13 and 16),
        ``global_scores`` and ``local_scores`` (B, C') before normalization.
        """
        fmap = features.map
        if fmap.dim() != 4 or fmap.shape[1] != self.in_dim:
            raise ValueError(f"sigrl: features.map must be (B, {self.in_dim}, H, W), got "
                             f"{tuple(fmap.shape)}")
        bsz, _, hh, ww = fmap.shape
        h = self.label_features(label_embeddings)  # (C, D)
        pooled = features.pooled
        if pooled is None:
            g = self._visual(fmap.mean(dim=(2, 3)))
        elif pooled.shape == (bsz, self.in_dim):
            g = self._visual(pooled)
        elif pooled.shape == (bsz, self.joint_dim):  # already in the joint space (CLIP RN)
            g = pooled
        else:
            raise ValueError(f"sigrl: features.pooled must be ({bsz}, {self.in_dim}) or "
                             f"({bsz}, {self.joint_dim}), got {tuple(pooled.shape)}")
        glob = g @ h.to(g.dtype).T  # SigRL eq. 13, global term <h_i, F_class>
        extras: dict[str, Any] = {"global_feature": g, "global_scores": glob}
        if self.variant == "projection":
            return Output(logits=self._norm(glob).float(), attention=None, extras=extras)

        u = fmap.flatten(2).transpose(1, 2)  # (B, P, in_dim)
        if self.visual_proj is not None:
            u = self.visual_proj(u)
        if self.variant == "full":
            hg = self.gat(h)  # SigRL eq. 2-4 on the complete graph of the scored labels
            m = self.sda(u, h)  # eq. 5-7
            t = self.relate(m, h)  # eq. 8-9
            o = self.vfr_in(torch.cat([t, hg.to(t.dtype).expand(bsz, -1, -1)], dim=-1))
            u = self.vfr(u, o)  # eq. 10-12
        per_patch = u @ h.to(u.dtype).T  # (B, P, C): <h_i, M^_p>
        k = min(self.topk, per_patch.shape[1])
        local = per_patch.topk(k, dim=1).values.mean(dim=1)  # eq. 13, top-k mean pooling
        extras["local_scores"] = local
        logits = self._norm(glob) + self._norm(local)
        if self.score_norm == "l2":
            logits = logits / 2  # the reference code's (s_global + s_local) / 2
        attention = per_patch.transpose(1, 2).reshape(bsz, -1, hh, ww)
        return Output(logits=logits.float(), attention=attention, extras=extras)
