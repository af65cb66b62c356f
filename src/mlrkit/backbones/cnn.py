"""ResNet-family CNN backbones (torchvision ResNet-50/101, timm ResNeXt-101 32x16d).

``forward_map`` returns the last stage's map: 2048 channels at stride 32 (14 x 14 at 448).
``pretrained=True`` loads the libraries' own ImageNet weights (downloaded into their caches
on first use); a path loads a local weight file (torchvision / timm state dict, optionally
wrapped in ``state_dict`` / ``model`` or saved from this backbone, ``.pth`` or
``.safetensors``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import file_digest
from ..registry import BACKBONES
from .base import Backbone, Preprocessing

__all__ = ["ResNetBackbone", "load_state_dict_file"]


def load_state_dict_file(path: str | Path, name: str = "backbone",
                         prefixes: Sequence[str] = ("module.", "body.", "backbone.")
                         ) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat state dict of tensors (``.pth``/``.pt``/``.safetensors``,
    plain or under ``state_dict`` / ``model``); a prefix in ``prefixes`` that every key
    carries is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {name} weight file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types for bad files
        raise ValueError(f"{path}: not a readable weight file ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


class ResNetBackbone(Backbone):
    """A ResNet-style trunk (conv1 ... layer4) without pooling and classifier."""

    out_dim = 2048

    def __init__(self, name: str, build: Callable[[], nn.Module], image_size: int = 448) -> None:
        super().__init__()
        self.name = name
        self.body = build()
        self.body.fc = nn.Identity()  # the ImageNet classifier is not used
        self.preprocessing = Preprocessing(image_size=image_size)
        self.weights_id = "random"

    def load_weights(self, path: str | Path, weights_id: str | None = None) -> ResNetBackbone:
        """Load a local state dict; classifier (``fc.*``) entries are ignored."""
        path = Path(path)
        sd = load_state_dict_file(path, self.name)
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = self.body.state_dict()
        missing = [k for k in own if k not in sd and not k.startswith("fc.")]
        unexpected = [k for k in sd if k not in own]
        wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                 if k in own and v.shape != own[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{path}: not {self.name} weights (missing {len(missing)}: {missing[:3]}, "
                f"unexpected {len(unexpected)}: {unexpected[:3]}, wrong shape: {wrong[:3]})")
        self.body.load_state_dict(sd, strict=False)
        self.weights_id = weights_id or f"file:{path.name}:{file_digest(path)}"
        return self

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images, self.name)
        b = self.body
        x = b.maxpool(b.act1(b.bn1(b.conv1(images)))) if hasattr(b, "act1") else \
            b.maxpool(b.relu(b.bn1(b.conv1(images))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


def _offline_error(name: str, where: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name}: pretrained ImageNet weights are not in the local cache and cannot be "
        f"downloaded ({type(err).__name__}: {err}). Put the weight file at {where}, "
        f"or pass pretrained='/path/to/weights.pth'")


def _torchvision(name: str, pretrained: bool | str, image_size: int) -> ResNetBackbone:
    import torchvision.models as tvm

    fn = getattr(tvm, name)
    bb = ResNetBackbone(name, lambda: fn(weights=None), image_size)
    if isinstance(pretrained, (str, Path)):
        return bb.load_weights(pretrained)
    if pretrained:
        weights = tvm.get_model_weights(name).IMAGENET1K_V1  # the weights ML-GCN/SSGRL/DLSA use
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        try:
            sd = weights.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError ...
            raise _offline_error(name, f"{target} (from {weights.url})", e) from None
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        bb.body.load_state_dict(sd, strict=False)
        bb.weights_id = f"torchvision:{name}.IMAGENET1K_V1"
    return bb


def _timm(name: str, tag: str, pretrained: bool | str, image_size: int) -> ResNetBackbone:
    import timm

    def build(pre: bool = False) -> nn.Module:
        return timm.create_model(f"{name}.{tag}", pretrained=pre)

    if isinstance(pretrained, (str, Path)) or not pretrained:
        bb = ResNetBackbone(name, build, image_size)
        return bb.load_weights(pretrained) if pretrained else bb
    try:
        bb = ResNetBackbone(name, lambda: build(True), image_size)
    except Exception as e:  # noqa: BLE001 - hub / network errors
        raise _offline_error(name, f"the Hugging Face cache (timm/{name}.{tag})", e) from None
    bb.weights_id = f"timm:{name}.{tag}"
    return bb


@BACKBONES.register("resnet50")
def resnet50(pretrained: bool | str = False, image_size: int = 448) -> ResNetBackbone:
    """torchvision ResNet-50 trunk, 2048-channel map at stride 32."""
    return _torchvision("resnet50", pretrained, image_size)


@BACKBONES.register("resnet101")
def resnet101(pretrained: bool | str = False, image_size: int = 448) -> ResNetBackbone:
    """torchvision ResNet-101 trunk (the DLSA / ML-GCN / SSGRL backbone)."""
    return _torchvision("resnet101", pretrained, image_size)


@BACKBONES.register("resnext101_32x16d")
def resnext101_32x16d(pretrained: bool | str = False, image_size: int = 448) -> ResNetBackbone:
    """timm ResNeXt-101 32x16d with semi-weakly supervised pretraining (Instagram 1B +
    ImageNet, fine-tuned on IN-1k: timm's ``fb_swsl_ig1b_ft_in1k``), CMSG*'s backbone."""
    return _timm("resnext101_32x16d", "fb_swsl_ig1b_ft_in1k", pretrained, image_size)
