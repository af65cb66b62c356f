"""Semantic decoupling: class-specific attention over feature-map positions, and the
class-wise classifier that scores the resulting class vectors.

* ``LowRankBilinearAttention``: SSGRL eq. 1-3 (label-embedding-guided, softmax over positions).
* ``SemanticAlignmentAttention``: DLSA eq. 3 (alignment with the class semantic vectors,
  sigmoid-normalized).
* ``ClassWiseLinear``: one weight vector per class (SSGRL eq. 8, DLSA eq. 7).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .tracing import tracing

__all__ = ["ClassWiseLinear", "LowRankBilinearAttention", "SemanticAlignmentAttention",
           "attention_pool"]


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype when autocast is on for its device (cast once here rather
    than by every matmul that reads it), else ``x`` unchanged."""
    dev = x.device.type
    return x.to(torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else x


def attention_pool(fmap: torch.Tensor, attention: torch.Tensor,
                   normalize: bool = False) -> torch.Tensor:
    """Class vectors ``v[b, c] = sum_hw a[b, c, hw] f[b, :, hw]`` ``(B, C, D)``.

    With ``normalize`` the sum is divided by the number of positions ``H W``. One batched
    matmul against the transposed view of the (B, D, HW) map (no copy of the map).
    """
    b, _, h, w = fmap.shape
    f = fmap.flatten(2)
    v = torch.bmm(attention.flatten(2).to(f.dtype), f.transpose(1, 2))  # SSGRL eq. 3 / DLSA eq. 3
    return v / (h * w) if normalize else v


# elements of one (images, classes, positions, d) block of tanh values; 2^22 floats = 16 MiB
BILINEAR_BLOCK = 1 << 22


def _bilinear_blocks(b: int, c: int, per_class: int,
                     budget: int) -> list[tuple[slice, slice]]:
    """(image slice, class slice) pairs covering ``B x C`` in order, each with at most
    ``budget`` elements at ``per_class`` elements per (image, class) pair, but never less than
    one pair: several whole images per block when one image fits, else one image and a run
    of its classes. Each block of a ``(B, C, ...)`` tensor is then one contiguous piece."""
    per_image = c * per_class
    if per_image <= budget:
        step = max(1, budget // max(per_image, 1))
        return [(slice(b0, min(b, b0 + step)), slice(0, c)) for b0 in range(0, b, step)]
    step = max(1, budget // max(per_class, 1))
    return [(slice(b0, b0 + 1), slice(c0, min(c, c0 + step)))
            for b0 in range(b) for c0 in range(0, c, step)]


def _block(buf: torch.Tensor, *shape: int) -> torch.Tensor:
    """The first ``prod(shape)`` elements of the flat buffer ``buf``, viewed as ``shape``."""
    return buf[:math.prod(shape)].view(shape)


class _TanhBilinearScores(torch.autograd.Function):
    """``s[b, c, p] = sum_k tanh(uf[b, p, k] * vx[c, k]) w[k]`` for ``uf (B, P, d)``,
    ``vx (C, d)``, ``w (d,)`` -> ``(B, C, P)``.

    The ``B x C x P x d`` tanh values ``t`` are never held as one tensor: blocks of them (see
    ``_bilinear_blocks``) are formed in one reused buffer, reduced and dropped. Forward, a
    block is laid out ``(images, classes, P, d)`` and reduced against ``w`` by one
    matrix-vector product. Backward forms each block again (one product and one tanh: cheaper
    than keeping all of ``t`` alive between the passes), laid out ``(images, d, classes, P)``
    so that every reduction is a batched matrix product over ``d`` and no second block-size
    temporary is needed. With ``g = dL/ds``:

    * ``dL/dw[k] = sum_{b,c,p} g[b,c,p] t[b,c,p,k]``;
    * ``r = g (1 - t^2)`` (the gradient at the tanh's input, written over ``t``), then
      ``dL/duf[b,p,k] = sum_c r[b,c,p,k] vx[c,k] w[k]`` and
      ``dL/dvx[c,k] = w[k] sum_{b,p} r[b,c,p,k] uf[b,p,k]``.

    It computes in the inputs' common dtype with autocast off inside (under bfloat16
    autocast the linear layers before it already give bfloat16); the gradients of ``vx`` and
    ``w`` are summed over the blocks in float32; each gradient is returned in its input's
    dtype.
    """

    @staticmethod
    def forward(ctx, uf: torch.Tensor, vx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.dtypes = (uf.dtype, vx.dtype, w.dtype)
        dt = torch.promote_types(torch.promote_types(uf.dtype, vx.dtype), w.dtype)
        uf, vx, w = uf.to(dt).contiguous(), vx.to(dt).contiguous(), w.to(dt).contiguous()
        ctx.save_for_backward(uf, vx, w)
        b, p, d = uf.shape
        c = vx.shape[0]
        if b * c * p * d == 0:
            return uf.new_zeros(b, c, p)
        blocks = _bilinear_blocks(b, c, p * d, BILINEAR_BLOCK)
        s = uf.new_empty(b, c, p)
        with torch.autocast(uf.device.type, enabled=False):
            buf = uf.new_empty(_largest(blocks, p * d))
            for bs, cs in blocks:
                t = _block(buf, bs.stop - bs.start, cs.stop - cs.start, p, d)
                torch.mul(uf[bs, None], vx[None, cs, None], out=t)  # SSGRL eq. 1: (U f) * (V x)
                t.tanh_()
                torch.mv(t.view(-1, d), w, out=s[bs, cs].view(-1))  # a contiguous piece of s
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s: torch.Tensor):
        uf, vx, w = ctx.saved_tensors
        need_u, need_v, need_w = ctx.needs_input_grad[:3]
        b, p, d = uf.shape
        c = vx.shape[0]
        if b * c * p * d == 0 or not (need_u or need_v or need_w):
            zero = (torch.zeros_like(uf), torch.zeros_like(vx), torch.zeros_like(w))
            return _cast_grads(tuple(z if n else None for z, n in
                                     zip(zero, (need_u, need_v, need_w), strict=True)),
                               ctx.dtypes)
        g = grad_s.to(uf.dtype).contiguous()
        uf_t = uf.transpose(1, 2).contiguous()  # (B, d, P)
        vx_t = vx.t().contiguous()  # (d, C)
        wv_t = (vx * w).t().contiguous()  # (d, C): the w factor of dL/duf on the class side
        gu_t = torch.zeros_like(uf_t) if need_u else None  # (B, d, P)
        gv_t = vx.new_zeros(d, c, dtype=torch.float32) if need_v else None
        gw = w.new_zeros(d, dtype=torch.float32) if need_w else None
        blocks = _bilinear_blocks(b, c, p * d, BILINEAR_BLOCK)
        with torch.autocast(uf.device.type, enabled=False):
            buf = uf.new_empty(_largest(blocks, p * d))
            for bs, cs in blocks:
                nb, nc = bs.stop - bs.start, cs.stop - cs.start
                t = _block(buf, nb, d, nc, p)  # t[i, k, j, q] for image bs[i], class cs[j]
                torch.mul(uf_t[bs, :, None, :], vx_t[None, :, cs, None], out=t)
                t.tanh_()
                gb = g[bs, cs]  # (nb, nc, p)
                if need_w:
                    gw += torch.bmm(t.view(nb, d, nc * p), gb.reshape(nb, nc * p, 1)).sum(0).view(d)
                if not (need_u or need_v):
                    continue
                torch.ops.aten.tanh_backward.grad_input(gb[:, None].expand_as(t), t,
                                                         grad_input=t)  # t <- g (1 - t^2)
                if need_u:  # sum over the block's classes, per (image, k): batched mat-vec
                    gu_t[bs].view(nb * d, p, 1).baddbmm_(
                        t.view(nb * d, nc, p).transpose(1, 2),
                        wv_t[:, cs].expand(nb, d, nc).reshape(nb * d, nc, 1))
                if need_v:  # sum over positions, per (image, k)
                    gv_t[:, cs] += torch.bmm(t.view(nb * d, nc, p),
                                             uf_t[bs].view(nb * d, p, 1)).view(nb, d, nc).sum(0)
        gu = gu_t.transpose(1, 2).contiguous() if need_u else None
        gv = (gv_t * w[:, None]).t().contiguous() if need_v else None
        return _cast_grads((gu, gv, gw), ctx.dtypes)


def _largest(blocks: list[tuple[slice, slice]], per_class: int) -> int:
    return max((bs.stop - bs.start) * (cs.stop - cs.start) * per_class for bs, cs in blocks)


def _cast_grads(grads: tuple[torch.Tensor | None, ...],
                dtypes: tuple[torch.dtype, ...]) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if gr is None else gr.to(dt) for gr, dt in zip(grads, dtypes, strict=True))


class LowRankBilinearAttention(nn.Module):
    """SSGRL semantic decoupling.

    ``f'_{c,hw} = P tanh((U f_hw) * (V x_c)) + b`` (eq. 1), ``a_{c,hw} = softmax_hw(f_a(f'))``
    (eq. 2) and ``v_c = sum_hw a_{c,hw} f_hw`` (eq. 3). ``f_a`` is linear, as in the SSGRL
    release, so ``f_a o P`` collapses into one vector ``w`` (and a scalar): the score is
    ``sum_k tanh(...)_k w_k + b'``, no ``d x d`` matmul per position and class.

    The ``B x C x HW x d`` tanh values are formed and reduced in blocks of at most
    ``BILINEAR_BLOCK`` elements, forward and backward (``_TanhBilinearScores``), instead of
    as one tensor: at the coco128 CPU setting (16 images, C = 80, 196 positions, d = 256)
    that tensor is 256 MiB; formed whole, a training step allocated six tensors of that size
    (two forward, one of them kept for the backward, four backward) and made ten passes over
    them, which took most of the step on a 2-core CPU.
    """

    def __init__(self, feat_dim: int, embed_dim: int, inter_dim: int = 1024) -> None:
        super().__init__()
        self.u = nn.Linear(feat_dim, inter_dim, bias=False)
        self.v = nn.Linear(embed_dim, inter_dim, bias=False)
        self.p = nn.Linear(inter_dim, inter_dim)
        self.fa = nn.Linear(inter_dim, 1)

    def scores(self, fmap: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Unnormalized attention logits ``(B, C, H, W)``."""
        b, _, h, w = fmap.shape
        uf = self.u(fmap.flatten(2).transpose(1, 2))  # (B, HW, d)
        vx = self.v(embeddings)  # (C, d)
        w_eff = (self.p.weight.T @ self.fa.weight.T).squeeze(-1)  # f_a(P z + b) = z.w_eff + b_eff
        b_eff = self.fa(self.p.bias)  # (1,)
        if tracing():  # an exported graph: the plain form (no Python-side blocks)
            s = torch.tanh(uf[:, None] * vx[None, :, None]) @ w_eff + b_eff
        else:
            s = _TanhBilinearScores.apply(uf, vx, w_eff) + b_eff  # SSGRL eq. 1, f_a of eq. 2
        return s.view(b, -1, h, w)

    def forward(self, fmap: torch.Tensor,
                embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return class vectors ``(B, C, D)`` and attention maps ``(B, C, H, W)``."""
        s = self.scores(fmap, embeddings)
        a = torch.softmax(s.flatten(2), dim=-1).view_as(s)  # SSGRL eq. 2
        return attention_pool(fmap, a), a


class SemanticAlignmentAttention(nn.Module):
    """DLSA semantic decoupling (eq. 3).

    ``a_{c,hw} = sigmoid(s_c . f_hw)`` aligns each position of the feature map with the class
    semantic vector ``s_c`` (the LSPL output ``E^2``); the class vector is the
    attention-weighted mean ``v_c = 1/(HW) sum_hw a_{c,hw} f_hw`` (the mean keeps the scale of
    global pooling). ``scale=True`` divides the alignment by ``sqrt(D)``.

    ``pool="normalized"`` divides by the attention's own mass instead,
    ``v_c = sum_hw a_{c,hw} f_hw / sum_hw a_{c,hw}``: a weighted mean whose scale no longer
    grows with the weights, so raising every weight to 1 (which turns the maps into global
    average pooling) earns nothing (docs/methods.md, DLSA, "Options for small data").
    """

    def __init__(self, dim: int, scale: bool = False, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "normalized"):
            raise ValueError(f"semantic alignment: pool must be 'mean' or 'normalized', "
                             f"got {pool!r}")
        self.dim = dim
        self.scale = 1.0 / math.sqrt(dim) if scale else 1.0
        self.pool = pool

    def _pool(self, fmap: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """DLSA eq. 3 with the chosen normalisation: ``/ HW`` or ``/ sum_hw a``."""
        if self.pool == "mean":
            return attention_pool(fmap, a, normalize=True)
        mass = a.flatten(2).sum(-1, keepdim=True).float().clamp_min(1e-6)
        return attention_pool(fmap, a) / mass.to(fmap.dtype)

    def forward(self, fmap: torch.Tensor, semantics: torch.Tensor,
                proj: nn.Linear | None = None, return_logits: bool = False
                ) -> tuple[torch.Tensor, ...]:
        """``fmap`` (B, D, H, W), ``semantics`` (C, D) -> vectors (B, C, D), maps (B, C, H, W)
        and, with ``return_logits``, the alignment scores before the sigmoid (B, C, H, W).

        With ``proj`` (a ``Linear(D_in, D)``) the map has ``D_in`` channels and is read as
        ``proj(f_hw)``. The projection is linear, so it is moved to the cheaper side: onto the
        C class vectors (``s_c . (P f + b) = (P^T s_c) . f + s_c . b`` and ``sum_hw a P f =
        P sum_hw a f``) when C < H W, else onto the H W positions; both are exact.
        """
        b, _, h, w = fmap.shape
        fmap = autocast_input(fmap)  # read twice below: cast once
        if proj is not None and semantics.shape[0] >= h * w:
            fmap = (torch.matmul(proj.weight, fmap.flatten(2))
                    + proj.bias[:, None]).view(b, -1, h, w)
            proj = None
        if proj is None:
            if semantics.shape[-1] != fmap.shape[1]:
                raise ValueError(f"semantic alignment: class vectors have {semantics.shape[-1]}"
                                 f" dims, the feature map {fmap.shape[1]} channels")
            logits = (self._align(semantics, fmap) * self.scale).view(b, -1, h, w)
            a = torch.sigmoid(logits)
            v = self._pool(fmap, a)  # DLSA eq. 3
            return (v, a, logits) if return_logits else (v, a)
        s_in = semantics @ proj.weight  # (C, D_in): P^T s_c
        logits = ((self._align(s_in, fmap) + (semantics @ proj.bias)[:, None])
                  * self.scale).view(b, -1, h, w)
        a = torch.sigmoid(logits)
        u = self._pool(fmap, a)  # (B, C, D_in)
        # the bias enters with the pooled weights' mass: a.mean over positions for "mean", 1
        # for "normalized" (a weighted mean of P f + b is P (weighted mean f) + b)
        mass = a.mean(dim=(2, 3))[..., None] if self.pool == "mean" else 1.0
        v = u @ proj.weight.T + mass * proj.bias  # DLSA eq. 3
        return (v, a, logits) if return_logits else (v, a)

    @staticmethod
    def _align(semantics: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        """``s_c . f_hw`` for all b, c, hw: (B, C, HW), one batched matmul on the (B, D, HW)
        map as it is stored (the class vectors are broadcast, the map is not copied)."""
        s = semantics.to(fmap.dtype).expand(fmap.shape[0], -1, -1)
        return torch.bmm(s, fmap.flatten(2))


class ClassWiseLinear(nn.Module):
    """Per-class classifier ``y_c = w_c . v_c + b_c`` on class vectors ``(B, C, D)``.

    The dot products run in float32 even under autocast (they are B C D multiply-adds, a
    negligible cost): bfloat16 scores keep 8 significant bits and would tie many images in
    the ranking that AP is computed from.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        with torch.autocast(v.device.type, enabled=False):
            v = v.to(self.weight.dtype)
            return torch.einsum("bcd,cd->bc", v, self.weight) + self.bias  # DLSA eq. 7
