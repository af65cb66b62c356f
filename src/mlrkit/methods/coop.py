"""CoOp (Zhou et al., IJCV 2022) as a multi-label baseline on frozen CLIP towers, and the
prompt-and-score part it shares with SD-CSP.

A prompt ``[SOS] v_1 .. v_M [name] . [EOT]`` per class goes through CLIP's frozen text tower
(``nn.prompts.PromptLearner``); the class score is the scaled cosine similarity of an image
feature with the class's text feature, ``logit_c = s cos(f^v, f^t_c)``, read as an
independent probability ``sigmoid(logit_c)`` by the multi-label losses (SD-CSP eq. 9, see
``docs/methods.md``). ``coop`` scores the global image feature (CLIP's attention-pool output)
against every class; ``class_specific: true`` gives each class its own context vectors
(SD-CSP's ablation row "CoOp w/ csp").
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.prompts import PromptLearner
from ..nn.tracing import tracing
from ..registry import METHODS
from ..structures import Features, Output

__all__ = ["CoOp", "PromptScorer", "clip_backbone"]


def clip_backbone(backbone: Any, method: str) -> Any:
    """``backbone`` if it is a CLIP image tower with a text tower, else a clear error."""
    need = ("text", "output_dim", "logit_scale", "pool")
    if backbone is None or not all(hasattr(backbone, a) for a in need):
        name = type(backbone).__name__
        raise ValueError(f"{method}: needs a CLIP backbone (clip_rn50, clip_rn101, clip_vitb16) "
                         f"that carries its text tower; got {name}")
    return backbone


class PromptScorer(nn.Module):
    """Learned prompts -> text features ``f^t_c`` (C, E) -> scaled cosine scores.

    ``logit_scale`` (the inverse temperature ``1 / tau``) is a buffer saved with the head:
    by default the CLIP tower's own ``exp(logit_scale)`` (100 for the OpenAI weights), so a
    model rebuilt from a checkpoint scores with the value it was trained with. The text
    features are recomputed on every call with gradients on; with gradients off (evaluation,
    prediction) they are computed once and reused until a prompt or text-tower tensor changes
    (tracked by the tensors' version counters and storage, which every optimizer step,
    ``load_state_dict`` and ``.to()`` change).
    """

    def __init__(self, backbone: Any, class_names: Sequence[str], n_ctx: int = 16,
                 class_specific: bool = False, init_std: float = 0.02,
                 ctx_init: str | None = None, logit_scale: float | None = None) -> None:
        super().__init__()
        self.prompts = PromptLearner(backbone.text, class_names, n_ctx=n_ctx,
                                     class_specific=class_specific, init_std=init_std,
                                     init_words=ctx_init)
        object.__setattr__(self, "_text", backbone.text)  # the backbone's, not registered here
        scale = float(backbone.logit_scale if logit_scale is None else logit_scale)
        if not scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {scale}")
        self.register_buffer("logit_scale", torch.tensor(scale))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _state_key(self, device: torch.device) -> tuple:
        dev = device.type
        tensors = [*self.prompts.parameters(), *self.prompts.buffers(),
                   *self._text.parameters(), *self._text.buffers()]
        return (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev),
                *((t.data_ptr(), t._version) for t in tensors))

    def text_features(self) -> torch.Tensor:
        """Unit-norm text features ``f^t_c`` (C, E) in float32 (SD-CSP eq. 7-8)."""
        if torch.is_grad_enabled() or tracing():  # no cache in training or in an export
            self._cache = None
            return self._normalized(self.prompts())
        key = self._state_key(self.prompts.ctx.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._normalized(self.prompts()))
        return self._cache[1]

    @staticmethod
    def _normalized(t: torch.Tensor) -> torch.Tensor:
        return F.normalize(t.float(), dim=-1)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from image features (B, E) (one per image, scored against every
        class) or (B, C, E) (one per class, scored against its own class's text feature)."""
        t = self.text_features()
        with torch.autocast(visual.device.type, enabled=False):
            v = F.normalize(visual.float(), dim=-1)
            if v.dim() == 2:
                cos = v @ t.T
            else:
                cos = torch.einsum("bce,ce->bc", v, t)  # <f^v_c, f^t_c>
            return self.logit_scale * cos  # SD-CSP eq. 9: logit = cos / tau


@METHODS.register("coop")
class CoOp(nn.Module):
    """CoOp on frozen CLIP towers: ``logit_c = s cos(g, f^t_c)`` with ``g`` the image tower's
    global feature (``Features.pooled``; from a cached map, the tower's attention pool
    ``backbone.pool(map)``). Options: ``n_ctx`` context tokens (16), ``class_specific``
    (one context per class: SD-CSP's "CoOp w/ csp"), ``init_std`` of the Gaussian context
    init, ``ctx_init`` (initial words instead, e.g. "a photo of a" with ``n_ctx: 4``) and
    ``logit_scale`` (default: the tower's).
    """

    def __init__(self, in_dim: int, num_classes: int, label_embeddings: torch.Tensor | None = None,
                 label_graph: torch.Tensor | None = None, *, class_names: Sequence[str],
                 backbone: Any, n_ctx: int = 16, class_specific: bool = False,
                 init_std: float = 0.02, ctx_init: str | None = None,
                 logit_scale: float | None = None) -> None:
        super().__init__()
        bb = clip_backbone(backbone, "coop")
        self.num_classes = num_classes
        object.__setattr__(self, "_backbone", bb)  # reached for pool(); owned by MLRModel
        self.scorer = PromptScorer(bb, class_names, n_ctx, class_specific, init_std, ctx_init,
                                   logit_scale)

    def forward(self, features: Features) -> Output:
        g = features.pooled
        if g is None:
            with torch.no_grad() if self._backbone.frozen else nullcontext():
                g = self._backbone.pool(features.map)  # CLIP's attention pool
        return Output(logits=self.scorer(g))

