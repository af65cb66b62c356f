"""Label embeddings from a CLIP text tower: each class name is put into a prompt template,
encoded, and the rows are scaled to unit length.

The SigRL / MKT reference code fills ``"There is a {} in the scene"`` (one template, no
ensemble, no final period) and feeds the projected EOT feature to the head without
normalising it; it ships the resulting matrix as a file that cannot be regenerated. mlrkit
computes it itself and normalises the rows (CLIP compares features by cosine; without it a
class's score would scale with its text feature's length).

Results are cached under ``cache_dir()`` as the raw (unnormalised) features, keyed by the
architecture, a sha256 of the text tower's state dict (the weights' content, however they
were loaded), the template and the ordered names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_write

__all__ = ["DEFAULT_TEMPLATE", "clip_label_embeddings", "encode_prompts", "load_text_tower",
           "prompt_texts"]

DEFAULT_TEMPLATE = "There is a {} in the scene"  # MKT / SigRL: models/prompt_model.py
_CACHE_VERSION = "1"
_RANDOM = {"", "none", "false", "random"}

Weights = str | os.PathLike[str] | bool | nn.Module | None


def prompt_texts(names: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """``template`` with ``{}`` replaced by each name (underscores as spaces, runs of white
    space collapsed, as the prompt learner does)."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"label template must hold exactly one '{{}}' for the class name, "
                         f"got {template!r}")
    out = []
    for n in names:
        name = " ".join(str(n).replace("_", " ").split())
        if not name:
            raise ValueError(f"label template: empty class name {n!r}")
        out.append(template.replace("{}", name))
    return out


def _text_tower(obj: nn.Module) -> nn.Module:
    from ..backbones.clip import ClipTextTower

    tower = getattr(obj, "text", obj)
    if not isinstance(tower, ClipTextTower):
        raise TypeError(f"CLIP label embeddings: {type(obj).__name__} is neither a CLIP "
                        "backbone nor its text tower")
    return tower


def load_text_tower(model: str = "clip_vitb16", weights: Weights = None) -> nn.Module:
    """The ``ClipTextTower`` of the CLIP backbone ``model`` with ``weights``: a local weight
    file, an open_clip tag, ``None`` / ``True`` for open_clip's ``"openai"`` weights
    (downloaded or cached; offline, the error names the file to fetch), or a module (a
    CLIP backbone or its ``.text``) used as it is. Random weights are refused."""
    from ..backbones.clip import ARCHS, ClipWeightsNotFound, build_clip

    if model not in ARCHS:
        raise ValueError(f"CLIP label embeddings: unknown CLIP model {model!r}; "
                         f"known: {', '.join(ARCHS)}")
    if isinstance(weights, nn.Module):
        other = getattr(weights, "name", model)
        if other != model:
            raise ValueError(f"CLIP label embeddings: the module given as weights is "
                             f"{other!r}, not {model!r}")
        return _text_tower(weights)
    if weights is None or weights is True:
        weights = "openai"
    if weights is False or (isinstance(weights, str) and weights.strip().lower() in _RANDOM):
        raise ValueError(f"CLIP label embeddings ({model}): random weights would give "
                         "meaningless label embeddings; give a weight file or an open_clip tag")
    try:
        return build_clip(model, pretrained=weights).text
    except ClipWeightsNotFound as e:
        raise ClipWeightsNotFound(f"{e}; for label embeddings give that file as `weights=` "
                                  "(`mlrkit embed-labels --weights FILE`)") from None


def encode_prompts(tower: nn.Module, texts: Sequence[str], batch_size: int = 256,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Raw text features ``(K, output_dim)`` float32 on the CPU, no gradients, in batches of
    prompts of similar length (each batch runs up to its longest prompt's EOT)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = tower.tokenize(list(texts))
    too_long = [t for t, row in zip(texts, ids) if int(row[-1]) != 0]
    if too_long:  # the tokenizer cuts silently; a cut prompt would embed another text
        raise ValueError(f"CLIP label embeddings: {len(too_long)} prompt(s) do not fit the "
                         f"text context of {tower.context_length} tokens: {too_long[:3]}")
    order = torch.argsort(ids.argmax(dim=-1), stable=True)  # EOT = highest id
    out = torch.empty(len(texts), tower.output_dim)
    if device is not None:
        tower = tower.to(device)
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = tower.encode_text(ids[rows]).float().cpu()
    finally:
        tower.train(was_training)
    return out


def _cache_file(model: str, tower: nn.Module, template: str, names: Sequence[str]) -> Path:
    from ..backbones.clip import ARCHS
    from ..data.cache import weights_digest
    from .embeddings import cache_dir

    key = {"version": _CACHE_VERSION, "model": model, "arch": ARCHS.get(model, model),
           "text_weights": weights_digest(tower), "template": template, "names": list(names)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / f"clip-{model}-{digest}.npy"


def clip_label_embeddings(names: Sequence[str], model: str = "clip_vitb16",
                          weights: Weights = None, template: str | None = None,
                          cache: bool = True, device: str | torch.device | None = None,
                          normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
    """Embeddings ``(C, D)`` float32 of ``names`` from the text tower of CLIP ``model``
    (``clip_rn50`` / ``clip_rn101`` / ``clip_vitb16``), each name put into ``template``
    (default ``DEFAULT_TEMPLATE``); rows unit-normalised unless ``normalize=False``.

    ``weights``: see ``load_text_tower``. ``device``: where to run the tower (default: CUDA
    when available, else the CPU; a module given as ``weights`` stays where it is). A cache
    hit still loads the weights, to hash them, but runs no text encoder.
    """
    names = [str(n) for n in names]
    if not names:
        raise ValueError("clip_label_embeddings: empty list of class names")
    template = DEFAULT_TEMPLATE if template is None else template
    texts = prompt_texts(names, template)
    given_module = isinstance(weights, nn.Module)
    tower = load_text_tower(model, weights)
    cached = _cache_file(model, tower, template, names)
    feats: torch.Tensor | None = None
    if cache and cached.exists():
        try:
            arr = np.load(cached, allow_pickle=False)
            if arr.ndim == 2 and arr.shape == (len(names), tower.output_dim):
                feats = torch.from_numpy(arr.astype(np.float32))
        except (ValueError, OSError):
            pass  # a damaged cache entry is recomputed below
    if feats is None:
        if given_module:
            device = None  # the caller's module is not moved
        elif device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        feats = encode_prompts(tower, texts, batch_size, device)
        if cache:
            try:
                with atomic_write(cached) as f:
                    np.save(f, feats.numpy(), allow_pickle=False)
            except OSError:
                pass  # a read-only cache folder only costs recomputation
    if normalize:
        norms = feats.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("CLIP label embeddings: a text feature of length 0 cannot be "
                             "normalised")
        feats = feats / norms
    return feats
