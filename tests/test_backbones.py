"""ResNet-family backbones: shapes, local weight files, offline errors, freezing."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from mlrkit.backbones import create_backbone, list_backbones


def test_registered() -> None:
    assert {"resnet50", "resnet101", "resnext101_32x16d"} <= set(list_backbones())


def test_resnet101_map_at_448() -> None:
    bb = create_backbone("resnet101").eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 448, 448))
    assert f.map.shape == (1, 2048, 14, 14)
    assert bb.out_dim == 2048 and bb.preprocessing.image_size == 448
    assert bb.weights_id == "random"


def _saved_resnet50(path: Path, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    ref = torchvision.models.resnet50(weights=None).eval()
    for m in ref.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(ref.state_dict(), path)
    return ref


def test_local_weights_roundtrip(tmp_path: Path) -> None:
    ref = _saved_resnet50(tmp_path / "r50.pth")
    bb = create_backbone("resnet50", pretrained=str(tmp_path / "r50.pth")).eval()
    assert bb.weights_id.startswith("file:r50.pth:")
    own = bb.body.state_dict()
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    x = torch.randn(2, 3, 96, 96)
    trunk = nn.Sequential(*list(ref.children())[:-2])  # torchvision's own layers minus pool/fc
    with torch.no_grad():
        torch.testing.assert_close(bb(x).map, trunk(x))
    assert bb(x).map.shape == (2, 2048, 3, 3)


def test_wrapped_and_safetensors_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = _saved_resnet50(tmp_path / "plain.pth", seed=5)
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    a = create_backbone("resnet50", pretrained=tmp_path / "wrapped.pth")
    b = create_backbone("resnet50", pretrained=str(tmp_path / "w.safetensors"))
    for k, v in a.body.state_dict().items():
        assert torch.equal(v, b.body.state_dict()[k])
        if not k.startswith("fc."):
            assert torch.equal(v, ref.state_dict()[k])


def test_bad_weight_files(tmp_path: Path) -> None:
    _saved_resnet50(tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="not resnet101 weights"):
        create_backbone("resnet101", pretrained=str(tmp_path / "r50.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth: resnet50 weight file not found"):
        create_backbone("resnet50", pretrained=str(tmp_path / "nowhere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable weight file"):
        create_backbone("resnet50", pretrained=str(tmp_path / "junk.pth"))


def test_offline_pretrained_error_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models._api import WeightsEnum

    def offline(self: WeightsEnum, *a: object, **k: object) -> dict:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(FileNotFoundError, match=r"checkpoints.resnet50-0676ba61\.pth"):
        create_backbone("resnet50", pretrained=True)


def test_freeze_stops_gradients_and_bn_updates() -> None:
    bb = create_backbone("resnet50").freeze()
    bb.train()
    assert not bb.training and all(not p.requires_grad for p in bb.parameters())
    before = bb.body.bn1.running_mean.clone()
    out = bb(torch.randn(2, 3, 64, 64))
    assert not out.map.requires_grad
    assert torch.equal(before, bb.body.bn1.running_mean)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        bb(torch.randn(2, 64, 64))


@pytest.mark.slow
def test_resnext101_32x16d_timm(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnext101_32x16d").eval()
    torch.save(ref.state_dict(), tmp_path / "rx.pth")
    bb = create_backbone("resnext101_32x16d", pretrained=str(tmp_path / "rx.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x).map, ref.forward_features(x))


def test_freeze_except_keeps_frozen_batchnorm_statistics():
    """backbone_trainable: the stages outside the prefixes get no gradient and their
    BatchNorm layers stay in eval mode (running statistics as loaded), as SSGRL's release."""
    from mlrkit.backbones import create_backbone

    torch.manual_seed(0)
    bb = create_backbone("resnet50", pretrained=False).freeze_except(["body.layer4"])
    bb.train()
    frozen_bn, live_bn = bb.body.layer3[0].bn1, bb.body.layer4[0].bn1
    assert not frozen_bn.training and live_bn.training
    before = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(live_bn.running_mean, before[1])
    assert not bb.body.layer3[0].conv1.weight.requires_grad
    assert bb.body.layer4[0].conv1.weight.requires_grad
    bb.eval()
    assert not live_bn.training
    bb.train()  # every epoch's train() keeps the split
    assert live_bn.training and not frozen_bn.training
