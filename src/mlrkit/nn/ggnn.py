"""Gated graph neural network over class nodes (Li et al. 2016; SSGRL sec. 3.2, eq. 4-6)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GatedGNN"]


class GatedGNN(nn.Module):
    """``T`` steps of GRU-style propagation of ``(B, C, D)`` node states over a ``(C, C)`` graph.

    Messages arrive along the graph (``A h``) and against it (``A^T h``), concatenated
    (SSGRL eq. 4); the gates and the update follow SSGRL eq. 5.
    """

    def __init__(self, dim: int, steps: int = 3) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"GatedGNN: steps must be >= 1, got {steps}")
        self.dim, self.steps = dim, steps
        self.w = nn.Linear(2 * dim, 3 * dim)  # W^z, W^r, W for the aggregated message a
        self.u_zr = nn.Linear(dim, 2 * dim, bias=False)  # U^z, U^r
        self.u_h = nn.Linear(dim, dim, bias=False)  # U

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        a_in, a_out = adj, adj.transpose(0, 1)
        d = self.dim
        for _ in range(self.steps):
            a = torch.cat([a_in @ h, a_out @ h], dim=-1)  # SSGRL eq. 4
            wa = self.w(a)
            zr = torch.sigmoid(wa[..., :2 * d] + self.u_zr(h))
            z, r = zr[..., :d], zr[..., d:]  # SSGRL eq. 5: update / reset gates
            cand = torch.tanh(wa[..., 2 * d:] + self.u_h(r * h))
            h = (1 - z) * h + z * cand  # SSGRL eq. 5: h^t = (1 - z) h^{t-1} + z h~
        return h
