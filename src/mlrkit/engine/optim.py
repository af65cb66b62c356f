"""Optimizers (with a backbone learning-rate multiplier) and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, SchedConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over the trainable parameters.

    Learning rate: ``lr`` times a multiplier: the one of the longest prefix of the
    parameter's name in ``lr_mult`` (e.g. ``backbone.visual.transformer.resblocks.11``:
    layer-wise decay), else ``backbone_lr_mult`` for backbone parameters, else 1. With
    ``no_decay_1d`` parameters of one dimension (biases, norm scales) get no weight decay.
    """
    backbone = getattr(model, "backbone", None)
    bb_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    names = [n for n, _ in model.named_parameters()]
    for pre in cfg.lr_mult:
        if not any(n.startswith(pre) for n in names):
            raise ValueError(f"optim.lr_mult: no model parameter starts with {pre!r}")
    groups: dict[tuple[str, float, bool], list[nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        match = max((pre for pre in cfg.lr_mult if n.startswith(pre)), key=len, default=None)
        if match is not None:
            key, mult = f"lr_mult:{match}", float(cfg.lr_mult[match])
        elif id(p) in bb_ids:
            key, mult = "backbone", cfg.backbone_lr_mult
        else:
            key, mult = "head", 1.0
        decay = not (cfg.no_decay_1d and p.dim() <= 1)
        groups.setdefault((key, mult, decay), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    order = sorted(groups, key=lambda k: (k[0] != "head", k[0] != "backbone", k[0], not k[2]))
    param_groups = [{"params": groups[k], "lr": cfg.lr * k[1],
                     "name": k[0] if k[2] else f"{k[0]} (no decay)",
                     **({} if k[2] else {"weight_decay": 0.0})} for k in order]
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=betas,
                                weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)


class Schedule:
    """Wraps a torch scheduler and knows whether it steps per batch, per epoch or on a metric."""

    def __init__(self, sched: object | None, per: str) -> None:
        self.sched = sched
        self.per = per  # "batch" | "epoch" | "metric" | "none"

    def step_batch(self) -> None:
        if self.per == "batch":
            self.sched.step()  # type: ignore[union-attr]

    def step_epoch(self, metric: float | None) -> None:
        if self.per == "epoch":
            self.sched.step()  # type: ignore[union-attr]
        elif self.per == "metric" and metric is not None:
            self.sched.step(metric)  # type: ignore[union-attr]

    def state_dict(self) -> dict:
        return self.sched.state_dict() if self.sched is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.sched is not None and state:
            self.sched.load_state_dict(state)


def build_scheduler(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int,
                    steps_per_epoch: int) -> Schedule:
    """step (per epoch), cosine with linear warm-up (per batch), one-cycle (per batch),
    reduce-on-plateau on validation mAP (per epoch)."""
    total = max(1, epochs * steps_per_epoch)
    if cfg.name == "none":
        return Schedule(None, "none")
    if cfg.name == "step":
        return Schedule(torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma), "epoch")
    if cfg.name == "cosine":
        warm = int(round(cfg.warmup_epochs * steps_per_epoch))
        base = [g["lr"] for g in opt.param_groups]
        floors = [cfg.min_lr / b if b > 0 else 0.0 for b in base]

        def make(floor: float):
            def f(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                t = (step - warm) / max(1, total - warm)
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
            return f

        return Schedule(torch.optim.lr_scheduler.LambdaLR(opt, [make(f) for f in floors]),
                        "batch")
    if cfg.name == "onecycle":
        max_lr = [g["lr"] for g in opt.param_groups]
        return Schedule(torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=max_lr, total_steps=total, pct_start=cfg.pct_start), "batch")
    if cfg.name == "plateau":
        return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=cfg.factor, patience=cfg.patience), "metric")
    raise ValueError(f"sched.name: unknown schedule {cfg.name!r}")
