"""Parameter groups of the optimizer: lr multipliers by name prefix, no decay on 1-D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlrkit.config import load_config
from mlrkit.engine.optim import build_optimizer


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)


def _groups(opt: torch.optim.Optimizer, net: nn.Module) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight decay) as the optimizer holds it."""
    where = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    return {n: where[id(p)] for n, p in net.named_parameters() if id(p) in where}


def test_longest_prefix_wins_and_1d_parameters_skip_decay():
    net = _Net()
    cfg = load_config(None, ["optim.name=adamw", "optim.lr=1.0", "optim.weight_decay=0.05",
                             "optim.backbone_lr_mult=0.1", "optim.no_decay_1d=true",
                             "optim.lr_mult={backbone.2: 0.65, backbone.2.bias: 0.5}"]).optim
    got = _groups(build_optimizer(net, cfg), net)
    assert got == {
        "backbone.0.weight": (0.1, 0.05), "backbone.0.bias": (0.1, 0.0),
        "backbone.1.weight": (0.1, 0.0), "backbone.1.bias": (0.1, 0.0),
        "backbone.2.weight": (0.65, 0.05), "backbone.2.bias": (0.5, 0.0),
        "head.weight": (1.0, 0.05), "head.bias": (1.0, 0.0)}


def test_defaults_keep_two_groups_and_skip_frozen():
    net = _Net()
    net.backbone[0].requires_grad_(False)
    opt = build_optimizer(net, load_config(None, ["optim.lr=0.2"]).optim)
    assert [g["name"] for g in opt.param_groups] == ["head", "backbone"]
    got = _groups(opt, net)
    assert "backbone.0.weight" not in got and got["head.bias"] == (0.2, 0.0)


def test_unknown_prefix_is_named():
    with pytest.raises(ValueError, match="optim.lr_mult.*'backbone.9'"):
        build_optimizer(_Net(), load_config(None, ["optim.lr_mult={backbone.9: 0.5}"]).optim)
