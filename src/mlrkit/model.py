"""Model = backbone + method head, and the ``create_model`` factory."""

from __future__ import annotations

import dataclasses
import inspect
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .backbones.base import Backbone
from .registry import METHODS
from .structures import Features, Output


class MLRModel(nn.Module):
    """A backbone feeding a method head.

    ``forward`` takes images (B, 3, H, W) or ready ``Features`` (e.g. read from a feature
    cache), and returns the head's ``Output``.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, method: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.method = method
        self.prior_bias: nn.Parameter | None = None

    def add_prior_bias(self) -> None:
        """Add a learnable per-class offset to the logits (zeros until
        :meth:`init_prior_bias`): ``y_c = head(x)_c + b_c``."""
        if self.open_vocabulary:
            raise ValueError(f"method {self.method!r} scores any label set; a per-class "
                             "prior bias needs a fixed one")
        self.prior_bias = nn.Parameter(torch.zeros(self.num_classes))

    @torch.no_grad()
    def init_prior_bias(self, targets: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """Start the offsets at ``log(p_c / (1 - p_c))``, ``p_c`` the share of positives among
        the known labels (``1`` / ``-1``; ``0`` is unknown) of class ``c`` in ``targets``
        (N, C), clamped to ``[eps, 1 - eps]`` (Lin et al. 2017's prior initialisation, per
        class). Returns them."""
        if self.prior_bias is None:
            raise ValueError("init_prior_bias: the model has no prior bias (add_prior_bias)")
        t = torch.as_tensor(targets, dtype=torch.float32)
        if t.dim() != 2 or t.shape[1] != self.num_classes:
            raise ValueError(f"init_prior_bias: targets must be (N, {self.num_classes}), "
                             f"got {tuple(t.shape)}")
        known = (t != 0).float()
        p = ((t > 0).float().sum(0) / known.sum(0).clamp_min(1)).clamp(eps, 1 - eps)
        self.prior_bias.copy_(torch.log(p / (1 - p)).to(self.prior_bias))
        return self.prior_bias.detach().clone()

    @property
    def num_classes(self) -> int:
        return int(self.head.num_classes)

    @property
    def open_vocabulary(self) -> bool:
        """True when the head scores any label set handed to ``forward`` (zero-shot)."""
        import inspect

        return "label_embeddings" in inspect.signature(self.head.forward).parameters

    def forward(self, x: torch.Tensor | Features,
                label_embeddings: torch.Tensor | None = None) -> Output:
        """The head's output for images or ready features; ``label_embeddings`` (C', E)
        makes an open-vocabulary head score that label set instead of its own."""
        feats = x if isinstance(x, Features) else self.backbone(x)
        if label_embeddings is None:
            out = self.head(feats)
            if self.prior_bias is not None:
                out = dataclasses.replace(out, logits=out.logits + self.prior_bias)
            return out
        if not self.open_vocabulary:
            raise ValueError(f"method {self.method!r} scores the fixed label set it was "
                             "trained on; it takes no label embeddings at inference")
        return self.head(feats, label_embeddings=label_embeddings)


def list_models() -> list[str]:
    """Names of the registered methods and baselines."""
    from . import methods  # noqa: F401  (registers)

    return METHODS.names()


def create_model(
    name: str,
    backbone: str | Backbone = "resnet101",
    pretrained: bool | str = False,
    num_classes: int | None = None,
    label_embeddings: torch.Tensor | None = None,
    label_graph: torch.Tensor | None = None,
    freeze_backbone: bool = False,
    in_dim: int | None = None,
    class_names: Sequence[str] | None = None,
    **method_options: Any,
) -> MLRModel:
    """Build ``backbone`` + the method head registered as ``name``.

    ``backbone`` is a registered backbone name, a ``Backbone`` instance, or ``"cached"``
    (then ``in_dim`` gives the channel count of the cached feature maps). ``pretrained`` is
    ``True`` for the library's own weights or a path to a local weight file.

    Heads whose ``__init__`` takes ``class_names`` get the class names (vision-language
    heads tokenize them); heads that take ``backbone`` get the backbone instance (to use a
    part of it, e.g. a CLIP text tower, without holding a second copy of its weights).
    """
    from . import methods  # noqa: F401  (registers)
    from .backbones import create_backbone
    from .backbones.base import CachedFeatures

    head_cls = METHODS.get(name)
    _check_method_options(head_cls, method_options)
    if num_classes is not None:
        num_classes = _positive_count(num_classes)
    if isinstance(backbone, Backbone):
        bb = backbone
    elif backbone == "cached":
        if in_dim is None:
            raise ValueError("create_model: backbone='cached' needs in_dim")
        bb = CachedFeatures(in_dim)
    else:
        bb = create_backbone(backbone, pretrained=pretrained)
    if freeze_backbone:
        bb.freeze()
    if num_classes is None:
        if label_embeddings is not None:
            num_classes = int(label_embeddings.shape[0])
            if num_classes < 1:
                raise ValueError("create_model: num_classes is 0 (label_embeddings has no rows)")
        else:
            raise ValueError("create_model: give num_classes (or label_embeddings)")
    if label_embeddings is not None:
        label_embeddings = torch.as_tensor(label_embeddings, dtype=torch.float32)
        if label_embeddings.dim() != 2 or label_embeddings.shape[0] != num_classes:
            raise ValueError(f"label_embeddings: expected shape ({num_classes}, E), "
                             f"got {tuple(label_embeddings.shape)}")
    if label_graph is not None:
        label_graph = torch.as_tensor(label_graph, dtype=torch.float32)
        if label_graph.shape != (num_classes, num_classes):
            raise ValueError(f"label_graph: expected shape ({num_classes}, {num_classes}), "
                             f"got {tuple(label_graph.shape)}")
        if not torch.isfinite(label_graph).all():
            raise ValueError("label_graph: contains NaN or inf")
    extra: dict[str, Any] = {}
    params = inspect.signature(head_cls.__init__).parameters
    if "class_names" in params:
        if class_names is None:
            raise ValueError(f"create_model: method {name!r} needs class_names")
        if len(class_names) != num_classes:
            raise ValueError(f"class_names: {len(class_names)} names for {num_classes} classes")
        extra["class_names"] = [str(n) for n in class_names]
    if "backbone" in params:
        extra["backbone"] = bb
    head = head_cls(in_dim=bb.out_dim, num_classes=num_classes,
                    label_embeddings=label_embeddings, label_graph=label_graph,
                    **extra, **method_options)
    return MLRModel(bb, head, name)


def _positive_count(num_classes: Any) -> int:
    try:
        n = operator.index(num_classes)
    except TypeError:
        n = 0
    if n < 1 or isinstance(num_classes, bool):
        raise ValueError(f"create_model: num_classes must be a positive integer, "
                         f"got {num_classes!r}")
    return n


# given by create_model itself, never through method options
_HEAD_ARGS = frozenset({"self", "in_dim", "num_classes", "label_embeddings", "label_graph",
                        "class_names", "backbone"})


def method_option_names(head_cls: type) -> list[str] | None:
    """The options a head class takes (sorted), or None when it takes any keyword."""
    params = inspect.signature(head_cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.name not in _HEAD_ARGS
                  and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 inspect.Parameter.KEYWORD_ONLY))


class UnknownOptionError(ValueError):
    """A method option the head does not take; the message starts with ``options.<key>``."""


def _check_method_options(head_cls: type, options: dict[str, Any]) -> None:
    allowed = method_option_names(head_cls)
    if allowed is None:
        return
    for key in options:
        if key not in allowed:
            raise UnknownOptionError(f"options.{key}: unknown key; "
                                     f"allowed: {', '.join(allowed)}")
