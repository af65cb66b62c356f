"""Any timm image model as a backbone: ``backbone: timm:<name>`` (``<name>`` as in
``timm.list_models()``, optionally with a weight tag: ``resnet50.a1_in1k``).

The map is the last stage of ``timm.create_model(name, features_only=True, out_indices=(-1,))``
(``features="auto"``/``"features_only"``) or the output of ``forward_features`` of the whole
model (``features="forward_features"``, or ``auto`` when timm has no feature wrapper for the
model). Preprocessing (size, mean, std, interpolation, crop) comes from the model's
``pretrained_cfg`` through ``timm.data.resolve_model_data_config``.

Weights: ``pretrained=False`` random; ``True`` timm's own download (Hugging Face cache);
a path a local ``.safetensors`` / ``.pth`` state dict of the timm model, checked key by key
against the model (the classifier may be absent) before it is loaded.

EfficientNet / MobileNet-family models also get an inference fast path: a copy with every
BatchNorm folded into the convolution before it (see ``fold_batchnorm``).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..io import file_digest
from ..nn.tracing import tracing
from .base import Backbone, Preprocessing
from .cnn import load_state_dict_file

PREFIX = "timm:"
FEATURE_MODES = ("auto", "features_only", "forward_features")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
WEIGHT_PREFIXES = ("module.", "backbone.", "model.")  # wrappers a weight file may carry

__all__ = ["PREFIX", "TimmBackbone", "check_state_dict", "create_timm_backbone",
           "fold_batchnorm", "is_foldable", "preprocessing_from_cfg"]


# ---------------------------------------------------------------- preprocessing


def preprocessing_from_cfg(model: nn.Module, image_size: int | None = None,
                           name: str = "timm model") -> Preprocessing:
    """mlrkit ``Preprocessing`` from the model's ``pretrained_cfg`` (timm's resolved data
    config); ``image_size`` overrides the config's input size."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    interp = str(cfg.get("interpolation") or "bilinear")
    if interp not in INTERPOLATIONS:
        raise ValueError(f"{name}: pretrained_cfg interpolation {interp!r} is not one of "
                         f"{', '.join(INTERPOLATIONS)}")
    size = int(cfg["input_size"][-1]) if image_size is None else image_size
    return Preprocessing(image_size=size, mean=tuple(float(v) for v in cfg["mean"]),
                         std=tuple(float(v) for v in cfg["std"]), interpolation=interp,
                         crop_pct=float(cfg.get("crop_pct") or 1.0))


# ---------------------------------------------------------------- BatchNorm folding


def _fold_tables() -> tuple[dict[type, tuple[tuple[str, str], ...]],
                            dict[type, tuple[tuple[str, str], ...]]]:
    """(conv, norm) attribute pairs where the norm directly follows the conv in ``forward``:
    per model class (stem / head) and per block class of timm's EfficientNet family."""
    from timm.models import _efficientnet_blocks as eb
    from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
    from timm.models.mobilenetv3 import MobileNetV3, MobileNetV3Features

    top = {EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
           EfficientNetFeatures: (("conv_stem", "bn1"),),
           MobileNetV3: (("conv_stem", "bn1"), ("conv_head", "norm_head")),
           MobileNetV3Features: (("conv_stem", "bn1"),)}
    s2d = (("conv_s2d", "bn_s2d"),)
    blocks = {eb.ConvBnAct: (("conv", "bn1"),),
              eb.DepthwiseSeparableConv: s2d + (("conv_dw", "bn1"), ("conv_pw", "bn2")),
              eb.InvertedResidual: s2d + (("conv_pw", "bn1"), ("conv_dw", "bn2"),
                                          ("conv_pwl", "bn3")),
              eb.EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2"))}
    return top, blocks


def _blocks(model: nn.Module) -> Iterable[nn.Module]:
    return chain.from_iterable(getattr(model, "blocks", ()))


def is_foldable(model: nn.Module) -> bool:
    """True for timm EfficientNet / MobileNetV3 models made only of the block types whose
    conv -> BatchNorm pairs ``fold_batchnorm`` knows (exact types: subclasses such as
    CondConv blocks compute differently)."""
    try:
        top, blocks = _fold_tables()
    except ImportError:  # a timm without these modules
        return False
    return type(model) in top and all(type(b) in blocks for b in _blocks(model))


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    from timm.layers import BatchNormAct2d, Conv2dSame

    conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
    # exact types only: e.g. a weight-standardized conv or a frozen BN would fold wrongly
    if type(conv) not in (nn.Conv2d, Conv2dSame) or type(bn) not in (nn.BatchNorm2d,
                                                                      BatchNormAct2d):
        return
    if bn.running_mean is None or bn.running_var is None:
        return
    setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
    # BatchNormAct2d is BN -> dropout -> activation; what follows the BN stays
    setattr(owner, bn_name, nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d)
            else nn.Identity())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a foldable timm model with each BatchNorm folded into the conv
    before it (``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``,
    eval statistics), gradients off, channels-last layout. Same outputs up to rounding."""
    if not is_foldable(model):
        raise ValueError(f"fold_batchnorm: {type(model).__name__} is not a foldable timm "
                         "EfficientNet / MobileNetV3 model")
    top, blocks = _fold_tables()
    fused = copy.deepcopy(model).eval()
    for conv, bn in top[type(fused)]:
        _fold_pair(fused, conv, bn)
    for block in _blocks(fused):
        for conv, bn in blocks[type(block)]:
            _fold_pair(block, conv, bn)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------- the backbone


def _fmt(model: nn.Module) -> str:
    fmt = getattr(model, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt))


class TimmBackbone(Backbone):
    """A timm model as a feature extractor: images (B, 3, H, W) -> map (B, out_dim, h, w).

    ``model`` is a timm model built with ``features_only=True, out_indices=(-1,)``
    (``features_only=True`` here) or a whole model whose ``forward_features`` gives the map.
    With ``fuse`` and a foldable model, inference without gradients (eval mode or frozen)
    runs a BatchNorm-folded channels-last copy kept outside the module tree (not in
    ``state_dict``), rebuilt whenever a parameter or buffer, the device or the dtype changes;
    never while tracing or exporting.
    """

    def __init__(self, model: nn.Module, name: str, features_only: bool,
                 image_size: int | None = None, fuse: bool = True) -> None:
        super().__init__()
        if image_size is not None and (isinstance(image_size, bool)
                                       or not isinstance(image_size, int) or image_size < 16):
            raise ValueError(f"{name}: image_size must be an int >= 16, got {image_size!r}")
        self.model = model
        self.name = name
        self.features_only = bool(features_only)
        if self.features_only:
            self.out_dim = int(model.feature_info.channels()[-1])
        else:  # forward_features: timm's num_features (feature_info may end before a head conv)
            self.out_dim = int(model.num_features)
        self.preprocessing = preprocessing_from_cfg(model, image_size, name)
        self.output_fmt = _fmt(model)
        self.weights_id = "random"
        self.fuse = bool(fuse) and is_foldable(model)
        # kept out of the module tree: not in state_dict, not moved by .to()
        object.__setattr__(self, "_fused", None)
        object.__setattr__(self, "_fused_stamp", None)

    # -- inference fast path
    def _fused_model(self) -> nn.Module:
        tensors = list(chain(self.model.parameters(), self.model.buffers()))
        stamp = (tensors[0].device, tensors[0].dtype,
                 tuple((id(t), t._version) for t in tensors))
        if self._fused is None or stamp != self._fused_stamp:
            object.__setattr__(self, "_fused", fold_batchnorm(self.model))
            object.__setattr__(self, "_fused_stamp", stamp)
        return self._fused

    def _use_fused(self) -> bool:
        return (self.fuse and not self.training
                and (self.frozen or not torch.is_grad_enabled()) and not tracing())

    # -- forward
    def _run(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.features_only:
            return model(images)[-1]
        return model.forward_features(images)

    def _to_map(self, y: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if y.dim() == 4:
            return y.permute(0, 3, 1, 2) if self.output_fmt == "NHWC" else y
        if y.dim() == 3:  # tokens (B, N, D): drop class/register tokens, lay out the grid
            tokens = y[:, int(getattr(self.model, "num_prefix_tokens", 0)):]
            n = tokens.shape[1]
            grid = tuple(getattr(getattr(self.model, "patch_embed", None), "grid_size", ()))
            if len(grid) != 2 or grid[0] * grid[1] != n:
                side = int(round(n ** 0.5))
                if side * side != n:
                    raise ValueError(f"{self.name}: cannot lay {n} tokens out as a grid for "
                                     f"input {tuple(images.shape[-2:])}")
                grid = (side, side)
            return tokens.transpose(1, 2).reshape(y.shape[0], y.shape[2], *grid)
        raise ValueError(f"{self.name}: expected a feature map, got shape {tuple(y.shape)}")

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images, self.name)
        if self._use_fused():
            y = self._run(self._fused_model(),
                          images.contiguous(memory_format=torch.channels_last))
            return self._to_map(y, images).contiguous()
        return self._to_map(self._run(self.model, images), images)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own ImageNet head on the map (whole models with an NCHW map only)."""
        if self.features_only or self.output_fmt != "NCHW":
            raise ValueError(f"{self.name}: classify needs a whole timm model with an NCHW "
                             "map (features='forward_features')")
        return self.model.forward_head(self.forward_map(images))

    # -- weights
    def load_state(self, state: dict[str, torch.Tensor], source: str | Path,
                   optional: tuple[str, ...] = ()) -> TimmBackbone:
        """Check ``state`` against this (whole) model, then load it; keys under ``optional``
        prefixes (the classifier) may be absent."""
        if self.features_only:
            raise ValueError(f"{self.name}: load_state needs a whole model; build the "
                             "backbone with the weights instead")
        own = self.model.state_dict()
        check_state_dict(state, {k: v.shape for k, v in own.items()}, source, self.name,
                         optional)
        self.model.load_state_dict(state, strict=False)
        return self


def check_state_dict(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size],
                     source: str | Path, what: str, optional: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming ``source`` and the first mismatched keys unless ``state``
    has exactly the keys and shapes of ``shapes`` (keys starting with ``optional`` may be
    missing)."""
    missing = [k for k in shapes if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in shapes]
    wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(shapes[k])} in the model"
             for k, v in state.items() if k in shapes and v.shape != shapes[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(keys)} (first: {', '.join(keys[:3])})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong)) if keys]
        raise ValueError(f"{source}: not {what} weights; " + "; ".join(parts))


# ---------------------------------------------------------------- factory


def _check_name(model_name: str) -> None:
    import timm
    from timm.models import split_model_name_tag

    arch = split_model_name_tag(model_name)[0]
    if not model_name or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise ValueError(f"timm:{model_name}: unknown timm model (see timm.list_models())"
                         f"{hint}")


def _classifier_prefixes(cfg: dict[str, Any]) -> tuple[str, ...]:
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(f"{h}." for h in heads)


def _has_features(model_name: str) -> bool:
    import timm

    try:
        with torch.device("meta"):  # no memory, no init cost
            timm.create_model(model_name, features_only=True, out_indices=(-1,))
    except Exception:  # noqa: BLE001 - timm raises several types for "no feature wrapper"
        return False
    return True


def _drop_state_dict(model: nn.Module) -> None:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # do not keep the loaded file alive


def create_timm_backbone(model_name: str, pretrained: bool | str | Path = False,
                         features: str = "auto", image_size: int | None = None,
                         fuse: bool = True, **options: Any) -> TimmBackbone:
    """``timm:<model_name>`` as a backbone (see the module docstring)."""
    import timm

    spec = f"{PREFIX}{model_name}"
    if options:
        raise TypeError(f"{spec}: unknown option(s) {', '.join(sorted(options))}; allowed: "
                        "pretrained, features, image_size, fuse")
    if features not in FEATURE_MODES:
        raise ValueError(f"{spec}: features={features!r}; choose one of "
                         f"{', '.join(FEATURE_MODES)}")
    if not (isinstance(pretrained, bool | str | Path)):
        raise TypeError(f"{spec}: pretrained must be True, False or a file path, "
                        f"got {pretrained!r}")
    _check_name(model_name)
    features_only = features == "features_only" or (features == "auto"
                                                    and _has_features(model_name))
    kw: dict[str, Any] = {"features_only": True, "out_indices": (-1,)} if features_only else {}
    weights_id = "random"
    if isinstance(pretrained, str | Path):
        path = Path(pretrained)
        state = load_state_dict_file(path, spec, prefixes=WEIGHT_PREFIXES)
        with torch.device("meta"):
            full = timm.create_model(model_name)
        optional = _classifier_prefixes(full.pretrained_cfg)
        shapes = {k: v.shape for k, v in full.state_dict().items()}
        check_state_dict(state, shapes, path, spec, optional)
        for k in shapes:  # the classifier is unused by the map; zeros where the file has none
            state.setdefault(k, torch.zeros(shapes[k], dtype=torch.float32))
        model = timm.create_model(model_name, pretrained=True,
                                  pretrained_cfg_overlay={"state_dict": state}, **kw)
        _drop_state_dict(model)
        weights_id = f"file:{path.name}:{file_digest(path)}"
    elif pretrained:
        try:
            model = timm.create_model(model_name, pretrained=True, **kw)
        except Exception as e:  # noqa: BLE001 - hub / network / "no weights" errors
            first = (str(e).splitlines() or [""])[0][:160]
            raise FileNotFoundError(
                f"{spec}: pretrained weights not in the local cache and not downloadable "
                f"({type(e).__name__}: {first}); fetch them once with network access, or "
                f"pass pretrained='/path/to/{model_name}.safetensors'") from None
        cfg = model.pretrained_cfg
        tag = cfg.get("tag")
        weights_id = f"timm:{cfg.get('architecture', model_name)}" + (f".{tag}" if tag else "")
    else:
        model = timm.create_model(model_name, pretrained=False, **kw)
    # a file-system friendly name (it names feature-cache folders)
    bb = TimmBackbone(model, f"timm-{model_name}", features_only, image_size, fuse)
    bb.weights_id = weights_id
    return bb
