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


class LowRankBilinearAttention(nn.Module):
    """SSGRL semantic decoupling.

    ``f'_{c,hw} = P tanh((U f_hw) * (V x_c)) + b`` (eq. 1), ``a_{c,hw} = softmax_hw(f_a(f'))``
    (eq. 2) and ``v_c = sum_hw a_{c,hw} f_hw`` (eq. 3). ``f_a`` is linear, as in the SSGRL
    release, so ``f_a o P`` collapses into one vector and the ``(B, C, HW, d)`` product is
    reduced without a ``d x d`` matmul per position and class.
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
        z = torch.tanh(uf[:, None, :, :] * vx[None, :, None, :])  # SSGRL eq. 1, (B, C, HW, d)
        w_eff = self.p.weight.T @ self.fa.weight.T  # (d, 1): f_a(P z + b) = z.w_eff + b_eff
        b_eff = self.fa(self.p.bias)  # (1,)
        s = (z @ w_eff).squeeze(-1) + b_eff
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
    """

    def __init__(self, dim: int, scale: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.scale = 1.0 / math.sqrt(dim) if scale else 1.0

    def forward(self, fmap: torch.Tensor, semantics: torch.Tensor,
                proj: nn.Linear | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``fmap`` (B, D, H, W), ``semantics`` (C, D) -> vectors (B, C, D), maps (B, C, H, W).

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
            a = torch.sigmoid(self._align(semantics, fmap) * self.scale).view(b, -1, h, w)
            return attention_pool(fmap, a, normalize=True), a  # DLSA eq. 3
        s_in = semantics @ proj.weight  # (C, D_in): P^T s_c
        logits = self._align(s_in, fmap) + (semantics @ proj.bias)[:, None]
        a = torch.sigmoid(logits * self.scale).view(b, -1, h, w)
        u = attention_pool(fmap, a, normalize=True)  # (B, C, D_in)
        v = u @ proj.weight.T + a.mean(dim=(2, 3))[..., None] * proj.bias  # DLSA eq. 3
        return v, a

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
