"""CLIP towers (open_clip's RN50 / RN101 / ViT-B/16 in their QuickGELU form) as mlrkit backbones.

One ``ClipBackbone`` holds both towers of one CLIP: the image tower is the backbone itself, the
text tower is its submodule ``.text`` (``ClipTextTower``), so the weights are loaded once and
saved with the model, and a head reaches the text tower through the backbone.

* ``clip_rn50`` / ``clip_rn101``: ``map`` = the layer-4 map (B, 2048, h, w); with
  ``spatial="pool2x2"`` (default) it is average-pooled 2x2 / stride 2 first, so a 448 px image
  gives the 7 x 7 grid CLIP's attention pool was trained on (SD-CSP, eq. 1); with
  ``spatial="interpolate"`` the map stays 14 x 14 and the attention pool's position embedding
  is resized bicubically. ``pooled`` = the attention pool's output (B, E) in the joint space;
  ``pool(map)`` computes it from a map alone (for heads trained from a feature cache).
* ``clip_vitb16``: ``map`` = the patch tokens after the final LayerNorm, projected to the joint
  space, (B, E, h, w); ``pooled`` = the projected class token. Other input sizes than 224 get a
  bicubically resized position embedding. The class token cannot be recovered from ``map``.

``pretrained``: an open_clip tag (``"openai"``; ``True`` means ``"openai"``), a local weight
file (open_clip / OpenAI state dict, an OpenAI TorchScript ``.pt``, or this backbone's own
state dict), or ``False`` / ``None`` / ``"none"`` for random weights.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io import file_digest
from ..nn.tracing import tracing
from ..registry import BACKBONES
from ..structures import Features
from .base import Backbone, Preprocessing

__all__ = ["ARCHS", "ClipBackbone", "ClipResNet", "ClipTextTower", "ClipViT",
           "ClipWeightsNotFound", "build_clip", "resize_grid_embedding"]

# mlrkit name -> open_clip model config (QuickGELU, as the OpenAI weights were trained)
ARCHS = {"clip_rn50": "RN50-quickgelu", "clip_rn101": "RN101-quickgelu",
         "clip_vitb16": "ViT-B-16-quickgelu"}
# open_clip.constants.OPENAI_DATASET_MEAN / _STD (copied so importing needs no open_clip)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPATIAL = ("pool2x2", "interpolate")


class ClipWeightsNotFound(FileNotFoundError):
    """Named CLIP weights that are neither cached nor downloadable (offline machine)."""


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise ImportError("CLIP backbones need open_clip: pip install open_clip_torch "
                          "(or mlrkit[clip])") from None
    return open_clip


def resize_grid_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Position embedding ``(1 + n*n, D)`` (one leading extra token, then an n x n grid) for a
    ``grid = (h, w)`` map: the grid part resized bicubically (open_clip's resize settings),
    the extra token kept. Returned unchanged when the grid already matches."""
    n = math.isqrt(pos.shape[0] - 1)
    if n * n != pos.shape[0] - 1:
        raise ValueError(f"position embedding of {pos.shape[0]} rows is not 1 + a square grid")
    if (n, n) == tuple(grid):
        return pos
    g = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=tuple(grid), mode="bicubic", align_corners=False, antialias=True)
    g = g.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], g])


class ClipTextTower(nn.Module):
    """CLIP's text transformer, fed with token embeddings (so prompts may hold learned vectors).

    ``encode`` adds the positional embedding, runs the causal transformer, applies the final
    LayerNorm at the EOT position and projects it to the joint space. Because the mask is
    causal, the EOT output depends only on the tokens up to it, so the sequence is cut to
    ``max(eot_index) + 1`` tokens before the transformer (same result, less work).
    """

    def __init__(self, token_embedding: nn.Embedding, positional_embedding: nn.Parameter,
                 transformer: nn.Module, ln_final: nn.Module,
                 text_projection: nn.Parameter | nn.Linear | None) -> None:
        super().__init__()
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.width: int = token_embedding.embedding_dim
        self.context_length: int = positional_embedding.shape[0]
        if text_projection is None:
            self.output_dim: int = self.width
        elif isinstance(text_projection, nn.Linear):
            self.output_dim = text_projection.out_features
        else:
            self.output_dim = int(text_projection.shape[1])
        causal = torch.full((self.context_length,) * 2, float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    @classmethod
    def from_open_clip(cls, model: nn.Module) -> ClipTextTower:
        """Take the text modules of an ``open_clip.CLIP`` (shared, not copied)."""
        if getattr(model, "text_pool_type", "argmax") != "argmax":
            raise ValueError(f"CLIP text tower: pool type {model.text_pool_type!r} not supported "
                             "(only the OpenAI CLIP layout, EOT = highest token id)")
        return cls(model.token_embedding, model.positional_embedding, model.transformer,
                   model.ln_final, model.text_projection)

    def tokenize(self, texts: Sequence[str],
                 context_length: int | None = None) -> torch.LongTensor:
        """open_clip's BPE tokenizer: (K, context_length) ids, [SOS] ... [EOT] then zeros;
        a text longer than the context is cut and ends in [EOT]."""
        if isinstance(texts, str):
            texts = [texts]
        return _open_clip().tokenize(list(texts), context_length or self.context_length)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (K, L, width) of ids (K, L)."""
        return self.token_embedding(ids.to(self.token_embedding.weight.device))

    def encode(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (K, L, width), L <= context_length, and EOT positions (K,) ->
        text features (K, output_dim) (not normalized)."""
        if embeddings.dim() != 3 or embeddings.shape[2] != self.width:
            raise ValueError(f"CLIP text encode: expected embeddings (K, L, {self.width}), "
                             f"got {tuple(embeddings.shape)}")
        k, length, _ = embeddings.shape
        if length > self.context_length:
            raise ValueError(f"CLIP text encode: {length} tokens, the context holds "
                             f"{self.context_length}")
        eot = torch.as_tensor(eot_index, device=embeddings.device).long().reshape(-1)
        if eot.numel() != k:
            raise ValueError(f"CLIP text encode: {eot.numel()} EOT positions for {k} prompts")
        if k == 0:
            return embeddings.new_zeros(0, self.output_dim)
        if tracing():  # an exported graph keeps every token (no data-dependent length)
            n = length
        else:
            n = int(eot.max()) + 1  # causal mask: later tokens cannot change the EOT output
            if int(eot.min()) < 0 or n > length:
                raise ValueError(f"CLIP text encode: EOT positions must lie in [0, {length})")
        dtype = self.transformer.get_cast_dtype()
        x = embeddings[:, :n].to(dtype) + self.positional_embedding[:n].to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])
        x = self.ln_final(x[torch.arange(k, device=x.device), eot])  # per-token LayerNorm
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (K, L) -> text features (K, output_dim); EOT = the highest id per row."""
        ids = ids.to(self.token_embedding.weight.device)
        return self.encode(self.embed(ids), ids.argmax(dim=-1))


class ClipBackbone(Backbone):
    """Shared part of the CLIP image towers: the ``.text`` tower, ``logit_scale``, loading.

    Subclasses implement ``encode`` (images -> (map, pooled)) and ``pool`` (map -> pooled).
    """

    can_pool_map: bool = True  # whether ``pool(map)`` gives the global CLIP image feature

    def __init__(self, model: nn.Module, name: str, image_size: int, arch: str = "") -> None:
        super().__init__()
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"{name}: image_size must be an int >= 32, got {image_size!r}")
        self.name = name
        self.arch = arch
        self.visual = model.visual
        self.text = ClipTextTower.from_open_clip(model)
        self.output_dim: int = int(model.visual.output_dim)
        # CLIP's learned temperature, kept as its log like CLIP, saved with the weights
        self.register_buffer("log_logit_scale",
                             model.logit_scale.detach().clone().float().reshape(()))
        self.preprocessing = Preprocessing(image_size=image_size, mean=CLIP_MEAN, std=CLIP_STD)
        self.weights_id = "random"

    @property
    def logit_scale(self) -> float:
        """CLIP's cosine-similarity scale, exp(logit_scale): 100 for the OpenAI weights."""
        return float(self.log_logit_scale.exp())

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0]

    def forward(self, images: torch.Tensor) -> Features:
        if self.frozen:
            with torch.no_grad():
                fmap, pooled = self.encode(images)
        else:
            fmap, pooled = self.encode(images)
        return Features(map=fmap, pooled=pooled)

    def load_weights(self, path: str | os.PathLike[str],
                     weights_id: str | None = None) -> ClipBackbone:
        """Load a local file: an open_clip / OpenAI CLIP state dict (``.pt``, ``.bin``,
        ``.pth``, ``.safetensors``, optionally under ``state_dict``), an OpenAI TorchScript
        archive, or a state dict saved from this backbone. Every tensor must fit."""
        path = Path(path)
        sd = _read_weight_file(path, self.name)
        own = self.state_dict()
        if "log_logit_scale" not in sd:  # CLIP layout -> this module's names
            sd = {_own_key(k): v for k, v in sd.items()
                  if k not in _NOT_WEIGHTS}
        if "log_logit_scale" in sd:
            sd["log_logit_scale"] = sd["log_logit_scale"].reshape(())
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                 if k in own and v.shape != own[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{path}: not {self.arch or self.name} CLIP weights (missing {len(missing)}: "
                f"{missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]}, "
                f"wrong shape: {wrong[:3]})")
        self.load_state_dict(sd, strict=True)
        self.weights_id = weights_id or f"file:{path.name}:{file_digest(path)}"
        return self


# entries of OpenAI / TorchScript CLIP files that are not weights (sizes, the causal mask)
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _own_key(key: str) -> str:
    """An open_clip ``CLIP`` state-dict key -> the matching ``ClipBackbone`` key."""
    if key == "logit_scale":
        return "log_logit_scale"
    if key.startswith("visual."):
        return key
    return "text." + key


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())


def _read_weight_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A CLIP weight file as a state dict: OpenAI's TorchScript archives, else what
    ``load_state_dict_file`` reads (``module.`` prefixes removed)."""
    from .cnn import load_state_dict_file

    if not path.is_file() or not _is_torchscript(path):
        return load_state_dict_file(path, name, prefixes=("module.",))
    try:
        with warnings.catch_warnings():  # torch marks torch.jit as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{path}: not a readable weight file ({type(e).__name__}: {e})") from None
    return dict(sd)


class ClipResNet(ClipBackbone):
    """CLIP's modified ResNet: ``map`` = layer 4 (2x2-pooled or not), ``pooled`` = attention
    pool output (B, E). ``pool(map)`` applies the attention pool to any (B, C, h, w) map,
    resizing its position embedding when (h, w) differs from the trained grid."""

    def __init__(self, model: nn.Module, name: str = "clip_resnet", image_size: int = 448,
                 spatial: str = "pool2x2", arch: str = "") -> None:
        super().__init__(model, name, image_size, arch)
        if not hasattr(self.visual, "attnpool"):
            raise ValueError(f"{name}: {type(self.visual).__name__} is not CLIP's ModifiedResNet")
        if spatial not in SPATIAL:
            raise ValueError(f"{name}: spatial must be one of {', '.join(SPATIAL)}, "
                             f"got {spatial!r}")
        step = 64 if spatial == "pool2x2" else 32
        if image_size % step:
            raise ValueError(f"{name}: image_size must be a multiple of {step} with "
                             f"spatial={spatial!r}, got {image_size}")
        self.spatial = spatial
        self.out_dim = int(self.visual.attnpool.k_proj.in_features)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Stem and layers 1-4: the unpooled layer-4 map (B, C, H/32, W/32)."""
        v = self.visual
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images, self.name)
        fmap = self.trunk(images)
        if self.spatial == "pool2x2":
            if fmap.shape[2] % 2 or fmap.shape[3] % 2:
                raise ValueError(f"{self.name}: spatial='pool2x2' needs an even layer-4 grid; "
                                 f"images {tuple(images.shape[2:])} give "
                                 f"{tuple(fmap.shape[2:])} (use sides divisible by 64)")
            fmap = F.avg_pool2d(fmap, kernel_size=2, stride=2)
        return fmap

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.forward_map(images)
        return fmap, self.pool(fmap)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """CLIP's attention pool on a map (B, C, h, w) -> (B, E): the mean token (plus its
        position embedding) attends over itself and every position; only that query is
        computed, as only its output is used."""
        ap = self.visual.attnpool
        if fmap.dim() != 4 or fmap.shape[1] != self.out_dim:
            raise ValueError(f"{self.name}.pool: expected a map (B, {self.out_dim}, h, w), "
                             f"got {tuple(fmap.shape)}")
        b, c, h, w = fmap.shape
        x = fmap.flatten(2).transpose(1, 2)  # (B, hw, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = x + resize_grid_embedding(ap.positional_embedding, (h, w)).to(x.dtype)
        heads = ap.num_heads
        q = ap.q_proj(x[:, :1]).reshape(b, 1, heads, c // heads).transpose(1, 2)
        k = ap.k_proj(x).reshape(b, h * w + 1, heads, c // heads).transpose(1, 2)
        v = ap.v_proj(x).reshape(b, h * w + 1, heads, c // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, C / heads)
        return ap.c_proj(out.transpose(1, 2).reshape(b, c))


class ClipViT(ClipBackbone):
    """CLIP's ViT: ``map`` = projected patch tokens (B, E, h, w), ``pooled`` = projected class
    token (B, E). ``pool(map)`` is not available (the class token is not in the map)."""

    can_pool_map = False

    def __init__(self, model: nn.Module, name: str = "clip_vit", image_size: int = 224,
                 arch: str = "") -> None:
        super().__init__(model, name, image_size, arch)
        v = self.visual
        if not hasattr(v, "class_embedding") or getattr(v, "attn_pool", None) is not None \
                or getattr(v, "pool_type", "tok") != "tok" or v.final_ln_after_pool \
                or v.proj is None or not isinstance(v.patch_dropout, nn.Identity):
            raise ValueError(f"{name}: only the plain CLIP ViT layout is supported (class token, "
                             "final LayerNorm, projection, no patch dropout / attentional pool)")
        patch = v.conv1.kernel_size[0]
        if image_size % patch:
            raise ValueError(f"{name}: image_size must be a multiple of {patch}, got {image_size}")
        self.out_dim = self.output_dim

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images, self.name)
        v = self.visual
        x = v.conv1(images)  # (B, width, h, w)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_grid_embedding(v.positional_embedding, (h, w)).to(x.dtype)
        x = v.transformer(v.ln_pre(x))
        x = v.ln_post(x) @ v.proj  # every token projected to the joint space
        fmap = x[:, 1:].transpose(1, 2).reshape(b, x.shape[2], h, w)
        return fmap, x[:, 0]

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{self.name}: the ViT's global feature is its class token, which a map (and so a "
            "feature cache) does not hold; run the backbone on images to get Features.pooled")


# ----------------------------------------------------------------------------------- factories

_RANDOM = {"", "none", "false", "random"}


def _offline_message(name: str, arch: str, tag: str, cfg: dict[str, Any], err: Exception) -> str:
    oc = _open_clip()
    hub = str(cfg.get("hf_hub", "")).strip("/")
    url = str(cfg.get("url", ""))
    if hub:
        if hub.count("/") > 1:  # "org/repo/file"
            repo, fname = hub.rsplit("/", 1)
            where = f"{fname} from https://huggingface.co/{repo}"
        else:
            fname = oc.constants.HF_SAFE_WEIGHTS_NAME
            where = (f"{fname} (or {oc.constants.HF_WEIGHTS_NAME}) from "
                     f"https://huggingface.co/{hub}")
        if url:
            where += f", or {url}"
    else:
        fname, where = Path(url).name, url
    reason = re.sub(r"\s+", " ", f"{type(err).__name__}: {err}").strip()[:160]
    return (f"{name}: open_clip weights {arch} '{tag}' are not cached and could not be downloaded "
            f"({reason}); fetch {where} and set `pretrained: /path/to/{fname}`")


def _download(name: str, arch: str, tag: str) -> str:
    oc = _open_clip()
    cfg = oc.pretrained.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = oc.pretrained.list_pretrained_tags_by_model(arch)
        raise ValueError(f"{name}: unknown pretrained {tag!r}; open_clip tags for {arch}: "
                         f"{', '.join(tags)}; or give a weight file path, or 'none'")
    try:
        path = oc.pretrained.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - hub / URL / OS errors all mean "not available"
        raise ClipWeightsNotFound(_offline_message(name, arch, tag, cfg, e)) from None
    if not path:
        raise ClipWeightsNotFound(_offline_message(
            name, arch, tag, cfg, RuntimeError("open_clip returned no file")))
    return str(path)


def build_clip(name: str, pretrained: bool | str | os.PathLike[str] | None = False,
               image_size: int | None = None, spatial: str = "pool2x2") -> ClipBackbone:
    """Build the registered CLIP backbone ``name`` (a key of ``ARCHS``) and load its weights."""
    oc = _open_clip()
    arch = ARCHS[name]
    cfg = oc.get_model_config(arch)
    is_vit = not isinstance(cfg["vision_cfg"]["layers"], (list, tuple))
    tag: str | None = None
    file: Path | None = None
    if pretrained is True:
        tag = "openai"
    elif pretrained is None or pretrained is False:
        pass
    elif isinstance(pretrained, os.PathLike):
        file = Path(pretrained)
    elif isinstance(pretrained, str):
        if pretrained.strip().lower() in _RANDOM:
            pass
        elif oc.pretrained.get_pretrained_cfg(arch, pretrained):
            tag = pretrained
        elif os.path.isfile(pretrained) or os.sep in pretrained \
                or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
            file = Path(pretrained)
        else:
            _download(name, arch, pretrained)  # raises: unknown tag, with the known ones
    else:
        raise TypeError(f"{name}: pretrained must be a tag, a file path, True or False, "
                        f"got {pretrained!r}")
    if file is not None and not file.is_file():
        raise FileNotFoundError(f"{file}: {name} weight file not found")
    weights = _download(name, arch, tag) if tag else None  # fail before building the model
    model = oc.model.CLIP(**cfg)  # random init; open_clip's create_model would warn about it
    if is_vit:
        bb: ClipBackbone = ClipViT(model, name, image_size or 224, arch)
    else:
        bb = ClipResNet(model, name, image_size or 448, spatial, arch)
    if weights is not None:
        bb.load_weights(weights, weights_id=f"open_clip:{arch}:{tag}")
    elif file is not None:
        bb.load_weights(file)
    return bb


@BACKBONES.register("clip_rn50")
def clip_rn50(pretrained: bool | str = False, image_size: int = 448,
              spatial: str = "pool2x2") -> ClipResNet:
    """CLIP RN50 image tower (map 2048 ch; joint space 1024) with its text tower as ``.text``."""
    return build_clip("clip_rn50", pretrained, image_size, spatial)  # type: ignore[return-value]


@BACKBONES.register("clip_rn101")
def clip_rn101(pretrained: bool | str = False, image_size: int = 448,
               spatial: str = "pool2x2") -> ClipResNet:
    """CLIP RN101 image tower (map 2048 ch; joint space 512), the SD-CSP encoder at 448 px."""
    return build_clip("clip_rn101", pretrained, image_size, spatial)  # type: ignore[return-value]


@BACKBONES.register("clip_vitb16")
def clip_vitb16(pretrained: bool | str = False, image_size: int = 224) -> ClipViT:
    """CLIP ViT-B/16 image tower (map = projected patch tokens, 512 ch) with ``.text``."""
    return build_clip("clip_vitb16", pretrained, image_size)  # type: ignore[return-value]
