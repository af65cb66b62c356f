"""Learned text prompts for a CLIP text tower (CoOp; class-specific contexts as in SD-CSP).

For class c the prompt is ``[SOS] v_1 ... v_M [name tokens] . [EOT]``: the M context vectors
are learned, the other token embeddings stay fixed. It is built the CoOp way: tokenize
``"X X ... X name."`` and put the context vectors where the M ``X`` embeddings were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..backbones.clip import ClipTextTower

__all__ = ["PromptLearner"]


class PromptLearner(nn.Module):
    """Context vectors (generic (M, width) or class-specific (C, M, width)) + frozen tokens.

    ``forward()`` -> text features (C, output_dim) from ``text.encode``. The text tower is
    held as a plain reference (``self.text``), not a submodule: its weights belong to the
    backbone and are saved there once. The state dict holds ``ctx`` and the buffers
    ``token_prefix`` (C, 1, width: [SOS]), ``token_suffix`` (C, L - 1 - M, width: name, ".",
    [EOT], padding up to the longest prompt) and ``eot_index`` (C,).
    """

    def __init__(self, text: ClipTextTower, class_names: Sequence[str], n_ctx: int = 16,
                 class_specific: bool = False, init_std: float = 0.02,
                 init_words: str | None = None) -> None:
        super().__init__()
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError("PromptLearner: class_names must be a non-empty list of names")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"PromptLearner: n_ctx must be an int >= 1, got {n_ctx!r}")
        object.__setattr__(self, "text", text)  # a reference, not a registered submodule
        self.n_ctx = n_ctx
        self.class_specific = bool(class_specific)
        names = [" ".join(str(n).replace("_", " ").split()) for n in class_names]
        if any(not n for n in names):
            raise ValueError("PromptLearner: empty class name")
        self.class_names = names

        placeholder = " ".join(["X"] * n_ctx)
        prompts = [f"{placeholder} {name}." for name in names]
        limit = text.context_length
        ids = text.tokenize(prompts, context_length=limit + 1)  # +1 shows a cut prompt
        eot = ids.argmax(dim=-1)
        too_long = [(names[i], int(eot[i]) + 1) for i in range(len(names)) if eot[i] >= limit]
        if too_long:
            name, count = too_long[0]
            raise ValueError(f"PromptLearner: the prompt for {name!r} needs {count}+ tokens "
                             f"with n_ctx={n_ctx}, the text tower holds {limit}; "
                             "shorten the name or lower n_ctx")
        x_id = int(text.tokenize(["X"])[0, 1])
        if not bool((ids[:, 1:1 + n_ctx] == x_id).all()):
            raise RuntimeError("PromptLearner: the tokenizer did not keep one token per 'X'")
        length = int(eot.max()) + 1
        ids = ids[:, :length]
        with torch.no_grad():
            emb = text.embed(ids)  # (C, L, width)
        self.register_buffer("token_prefix", emb[:, :1].detach().clone())
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:].detach().clone())
        self.register_buffer("eot_index", eot.to(emb.device))
        self.register_buffer("token_ids", ids.to(emb.device), persistent=False)

        width = emb.shape[2]
        if init_words is not None:
            ctx = self._word_vectors(init_words)
        else:
            ctx = torch.empty(n_ctx, width, device=emb.device, dtype=emb.dtype)
            nn.init.normal_(ctx, std=init_std)
        if self.class_specific:
            ctx = ctx.unsqueeze(0).repeat(len(names), 1, 1)
            if init_words is None:
                nn.init.normal_(ctx, std=init_std)  # independent per class
        self.ctx = nn.Parameter(ctx)

    def _word_vectors(self, words: str) -> torch.Tensor:
        ids = self.text.tokenize([words])
        count = int(ids.argmax(dim=-1)[0]) - 1
        if count != self.n_ctx:
            raise ValueError(f"PromptLearner: init_words {words!r} is {count} tokens, "
                             f"n_ctx is {self.n_ctx}; set n_ctx={count}")
        with torch.no_grad():
            return self.text.embed(ids[:, 1:1 + count])[0].detach().clone()

    @property
    def num_classes(self) -> int:
        return int(self.token_prefix.shape[0])

    def refresh(self) -> None:
        """Recompute the frozen token embeddings from the text tower's current weights (after
        loading other CLIP weights into the tower without loading this module's state)."""
        with torch.no_grad():
            emb = self.text.embed(self.token_ids)
        self.token_prefix.copy_(emb[:, :1])
        self.token_suffix.copy_(emb[:, 1 + self.n_ctx:])

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (C, L, width) and EOT positions (C,)."""
        ctx = self.ctx
        if not self.class_specific:
            ctx = ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        return torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1), self.eot_index

    def forward(self) -> torch.Tensor:
        """Text features (C, output_dim) of the C prompts (not normalized)."""
        emb, eot = self.prompt_embeddings()
        return self.text.encode(emb, eot)

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, n_ctx={self.n_ctx}, "
                f"class_specific={self.class_specific}")
