"""SD-CSP (Ruan et al., ACM TOMM 2024): semantic decoupling and category-specific prompts on
frozen CLIP towers, for multi-label recognition with partial labels.

* Semantic decoupling (eq. 2-6): low-rank bilinear pooling of every position of the image
  tower's map ``f^g`` with each class's GloVe vector ``x_c``,
  ``f~_{c,wh} = P tanh((U f^g_wh) * (V x_c)) + b`` (eq. 3), attention
  ``a_{c,wh} = softmax_wh(F_att(f~_{c,wh}))`` (eq. 4-5), class vector
  ``f^v_c = sum_wh a_{c,wh} f~_{c,wh}`` (eq. 6), then a linear map ``inter_dim -> E`` into
  the joint space (paper 4.2).
* Category-specific prompts (eq. 7-8): ``[SOS] [V]^1_c .. [V]^M_c [name] . [EOT]`` through
  the frozen text tower, ``f^t_c``.
* Scores (eq. 9): ``logit_c = s cos(f^v_c, f^t_c)``, ``s = 1 / tau`` (default CLIP's logit
  scale), an independent probability per class through the sigmoid of the loss
  (``partial_asl``, eq. 10-11).

Options give the ablation rows of the paper's Table 4: ``class_specific: false`` is
"CoOp w/ sd" (one generic context shared by the classes); ``coop`` is the plain baseline and
``coop`` with ``class_specific: true`` is "CoOp w/ csp".

Eq. 6 pools the fused features ``f~`` (its ``f^g_{c,wh}`` carries a class index, which only
``f~`` has, and the paper's 1024 -> 512 map fits their 1024 channels). Because the attention
sums to 1 over positions and ``P``, ``b`` are affine, ``sum a (P z + b) = P (sum a z) + b``:
only ``z = tanh((U f) * (V x))`` is pooled, and the ``(B, C, HW, inter_dim)`` tensor of
``z`` is formed in bounded blocks, never whole (``_SemanticAttentionPool``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..nn.tracing import tracing
from ..registry import METHODS
from ..structures import Features, Output
from .coop import PromptScorer, clip_backbone
from .mlgcn import require_semantics

__all__ = ["SDCSP", "semantic_attention_pool"]

# elements of one (images, classes, positions, inter_dim) block of tanh values: 16 MiB of
# float32 on a CPU; on a GPU a larger block (256 MiB) keeps the kernels big
BLOCK_CPU = 1 << 22
BLOCK_GPU = 1 << 26


def _blocks(b: int, c: int, per_pair: int, budget: int
            ) -> Iterator[tuple[slice, slice]]:
    """(image slice, class slice) pairs covering ``B x C``; each block holds at most
    ``budget`` elements of ``per_pair`` each (always at least one image-class pair)."""
    pairs = max(1, budget // max(per_pair, 1))
    if pairs >= c:
        step = pairs // c
        for b0 in range(0, b, step):
            yield slice(b0, min(b, b0 + step)), slice(0, c)
    else:
        for b0 in range(b):
            for c0 in range(0, c, pairs):
                yield slice(b0, b0 + 1), slice(c0, min(c, c0 + pairs))


def _block_size(b: int, c: int, per_pair: int, budget: int) -> int:
    """Elements of the largest block ``_blocks`` yields."""
    return min(max(budget, per_pair), b * c * per_pair)


class _SemanticAttentionPool(torch.autograd.Function):
    """``z[b,c,p] = tanh(uf[b,p] * vx[c])`` (d-vectors), ``s = z . w + s0``,
    ``a[b,c] = softmax_p(s[b,c])``, ``zbar[b,c] = sum_p a[b,c,p] z[b,c,p]``.

    Inputs ``uf (B, P, d)``, ``vx (C, d)``, ``w (d,)``, ``s0 (1,)``; outputs ``a (B, C, P)``
    and ``zbar (B, C, d)`` in float32 (float64 for float64 inputs). ``z`` is formed block by
    block in one reused buffer (``_blocks``) and dropped; the backward pass forms each block
    again and reduces it:

    * ``g_a = dL/da + z . dL/dzbar``, ``g_s = a (g_a - sum_p a g_a)`` (softmax);
    * ``dL/dw = sum g_s z``, ``dL/ds0 = sum g_s`` (0 up to rounding: a shift of all
      positions leaves the softmax unchanged; kept so every parameter takes part);
    * ``r = (a dL/dzbar + g_s w) (1 - z^2)``, ``dL/duf[b,p] = sum_c r vx[c]``,
      ``dL/dvx[c] = sum_{b,p} r uf[b,p]``.
    """

    @staticmethod
    def forward(ctx, uf: torch.Tensor, vx: torch.Tensor, w: torch.Tensor,
                s0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.dtypes = (uf.dtype, vx.dtype, w.dtype, s0.dtype)
        # float32 at least (bfloat16 inputs under autocast), float64 when given float64
        dt = torch.promote_types(torch.promote_types(uf.dtype, vx.dtype), torch.float32)
        uf, vx = uf.to(dt).contiguous(), vx.to(dt).contiguous()
        w, s0 = w.to(dt).contiguous(), s0.to(dt).reshape(())
        b, p, d = uf.shape
        c = vx.shape[0]
        budget = BLOCK_GPU if uf.is_cuda else BLOCK_CPU
        a = uf.new_empty(b, c, p)
        zbar = uf.new_empty(b, c, d)
        with torch.autocast(uf.device.type, enabled=False):
            buf = uf.new_empty(_block_size(b, c, p * d, budget))
            for bs, cs in _blocks(b, c, p * d, budget):
                nb, nc = bs.stop - bs.start, cs.stop - cs.start
                z = buf[:nb * nc * p * d].view(nb, nc, p, d)
                torch.mul(uf[bs, None], vx[None, cs, None], out=z)  # SD-CSP eq. 3: U f * V x
                z.tanh_()
                s = torch.mv(z.view(-1, d), w).view(nb, nc, p) + s0  # SD-CSP eq. 4
                ab = torch.softmax(s, dim=-1)  # SD-CSP eq. 5
                a[bs, cs] = ab
                zbar[bs, cs] = torch.bmm(ab.view(nb * nc, 1, p),
                                         z.view(nb * nc, p, d)).view(nb, nc, d)  # SD-CSP eq. 6
        ctx.save_for_backward(uf, vx, w, a)
        return a, zbar

    @staticmethod
    @once_differentiable
    def backward(ctx, ga: torch.Tensor | None, gz: torch.Tensor | None):
        uf, vx, w, a = ctx.saved_tensors
        need_u, need_v, need_w, need_s0 = ctx.needs_input_grad
        b, p, d = uf.shape
        c = vx.shape[0]
        gu = torch.zeros_like(uf) if need_u else None
        gv = torch.zeros_like(vx) if need_v else None
        gw = torch.zeros_like(w) if need_w else None
        gs0 = w.new_zeros(1) if need_s0 else None
        if (ga is None and gz is None) or b * c * p * d == 0:
            return _cast((gu, gv, gw, gs0), ctx.dtypes)
        ga = None if ga is None else ga.to(uf.dtype)
        gz = None if gz is None else gz.to(uf.dtype).contiguous()
        budget = BLOCK_GPU if uf.is_cuda else BLOCK_CPU
        with torch.autocast(uf.device.type, enabled=False):
            n = _block_size(b, c, p * d, budget)
            buf, tmp = uf.new_empty(n), uf.new_empty(n)
            for bs, cs in _blocks(b, c, p * d, budget):
                nb, nc = bs.stop - bs.start, cs.stop - cs.start
                size = nb * nc * p * d
                z = buf[:size].view(nb, nc, p, d)
                torch.mul(uf[bs, None], vx[None, cs, None], out=z)
                z.tanh_()
                ab = a[bs, cs]
                g_a = torch.zeros_like(ab) if ga is None else ga[bs, cs].clone()
                if gz is not None:
                    gzb = gz[bs, cs]
                    g_a += torch.bmm(z.view(nb * nc, p, d),
                                     gzb.reshape(nb * nc, d, 1)).view(nb, nc, p)
                g_s = ab * (g_a - (ab * g_a).sum(-1, keepdim=True))  # softmax backward
                if need_w:
                    gw += torch.mv(z.view(-1, d).t(), g_s.reshape(-1))
                if need_s0:
                    gs0 += g_s.sum()
                if not (need_u or need_v):
                    continue
                q = tmp[:size].view(nb, nc, p, d)  # dL/dz = a dL/dzbar + g_s w
                if gz is not None:  # a rank-2 outer product per pair: one batched matmul
                    lhs = torch.stack([ab, g_s], dim=-1).view(nb * nc, p, 2)
                    rhs = torch.stack([gzb, w.expand(nb, nc, d)], dim=2).view(nb * nc, 2, d)
                    torch.bmm(lhs, rhs, out=q.view(nb * nc, p, d))
                else:
                    torch.mul(g_s[..., None], w, out=q)
                # z <- dL/dz (1 - z^2): the gradient at the tanh input, in place
                torch.ops.aten.tanh_backward.grad_input(q, z, grad_input=z)
                if need_u:
                    torch.mul(z, vx[None, cs, None], out=q)
                    gu[bs] += q.sum(dim=1)
                if need_v:
                    torch.mul(z, uf[bs, None], out=q)
                    gv[cs] += q.sum(dim=(0, 2))
        return _cast((gu, gv, gw, gs0), ctx.dtypes)


def _cast(grads, dtypes):
    return tuple(None if g is None else g.to(dt) for g, dt in zip(grads, dtypes, strict=True))


def semantic_attention_pool(uf: torch.Tensor, vx: torch.Tensor, w: torch.Tensor,
                            s0: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention ``a (B, C, P)`` and pooled ``zbar (B, C, d)`` of
    ``z_{c,p} = tanh(uf_p * vx_c)`` with scores ``z . w + s0`` (see
    ``_SemanticAttentionPool``), in bounded memory, forward and backward."""
    if s0 is None:
        s0 = w.new_zeros(1)
    if tracing():  # an exported graph: the plain form (no Python-side blocks)
        z = torch.tanh(uf[:, None] * vx[None, :, None])  # (B, C, P, d)
        a = torch.softmax(z @ w + s0.reshape(()), dim=-1)  # over the positions P
        return a, (a[..., None] * z).sum(2)
    return _SemanticAttentionPool.apply(uf, vx, w, s0.reshape(1))


@METHODS.register("sdcsp")
class SDCSP(nn.Module):
    """SD-CSP head on a CLIP backbone (``clip_rn101`` at 448 px in the paper).

    Needs ``label_embeddings`` (GloVe-300 in the paper; ML-GCN's COCO file lists its rows in
    sorted class-name order: ``label_embeddings: <file>@sorted`` maps them) and the class
    names. ``U: D -> inter_dim`` and ``V: E_word -> inter_dim`` without bias,
    ``P: inter_dim -> inter_dim`` with bias ``b`` (eq. 3), ``F_att: inter_dim -> 1`` (eq. 4),
    ``proj: inter_dim -> E`` (the joint space); prompts as ``coop``.
    """

    def __init__(self, in_dim: int, num_classes: int, label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, *, class_names: Sequence[str],
                 backbone: Any, n_ctx: int = 16, class_specific: bool = True,
                 inter_dim: int = 1024, init_std: float = 0.02, ctx_init: str | None = None,
                 logit_scale: float | None = None) -> None:
        super().__init__()
        bb = clip_backbone(backbone, "sdcsp")
        emb, _ = require_semantics("sdcsp", num_classes, label_embeddings, None,
                                   need_graph=False)
        self.num_classes = num_classes
        self.register_buffer("embeddings", emb.clone())  # x_c (eq. 2)
        self.u = nn.Linear(in_dim, inter_dim, bias=False)
        self.v = nn.Linear(emb.shape[1], inter_dim, bias=False)
        self.p = nn.Linear(inter_dim, inter_dim)  # P and b
        self.att = nn.Linear(inter_dim, 1)  # F_att
        self.proj = nn.Linear(inter_dim, bb.output_dim)
        self.scorer = PromptScorer(bb, class_names, n_ctx, class_specific, init_std, ctx_init,
                                   logit_scale)

    def decouple(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class vectors ``f^v_c`` in the joint space (B, C, E) and attention (B, C, h, w)."""
        b, _, h, w = fmap.shape
        uf = self.u(fmap.flatten(2).transpose(1, 2))  # (B, HW, d): U f^g_wh (eq. 3)
        vx = self.v(self.embeddings)  # (C, d): V x_c (eq. 3)
        # F_att(P z + b) = (F_att.w P) . z + F_att(b): F_att o P is one vector on z
        w_att = (self.att.weight @ self.p.weight).squeeze(0)
        s0 = self.att(self.p.bias)
        a, zbar = semantic_attention_pool(uf, vx, w_att, s0)  # SD-CSP eq. 3-6
        fv = self.p(zbar.to(uf.dtype))  # SD-CSP eq. 6: sum a (P z + b) = P sum a z + b
        return self.proj(fv), a.view(b, -1, h, w)

    def forward(self, features: Features) -> Output:
        fv, attn = self.decouple(features.map)
        return Output(logits=self.scorer(fv), attention=attn)  # SD-CSP eq. 7-9
