"""Graph convolution over label nodes (Kipf & Welling; ML-GCN sec. 3.2, DLSA eq. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GCN", "GraphConvolution"]


class GraphConvolution(nn.Module):
    """One layer ``H' = A H W (+ b)`` on node features ``(C, in)`` or ``(B, C, in)``."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(out_dim)) if bias else None
        bound = 1.0 / math.sqrt(out_dim)  # ML-GCN's initialization
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        out = adj @ (x @ self.weight)  # ML-GCN eq. 2: H^{l+1} = A H^l W^l
        return out + self.bias if self.bias is not None else out


class GCN(nn.Module):
    """Stacked graph convolutions with LeakyReLU between layers (none after the last unless
    ``final_act``).

    ``dims = [E, d1, d2]`` gives ML-GCN's / DLSA's two-layer network (DLSA eq. 2, whose
    ``sigma`` follows every layer: ``final_act=True``).
    """

    def __init__(self, dims: Sequence[int], negative_slope: float = 0.2,
                 bias: bool = False, final_act: bool = False) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"GCN: need at least [in, out] dims, got {list(dims)}")
        self.layers = nn.ModuleList(GraphConvolution(a, b, bias=bias)
                                    for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.LeakyReLU(negative_slope)
        self.final_act = bool(final_act)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, adj)
            if i < len(self.layers) - 1 or self.final_act:
                x = self.act(x)  # DLSA eq. 2: E^{l+1} = sigma(A E^l W^l)
        return x
