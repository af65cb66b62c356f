"""``timm:<name>`` backbones: map and channels, preprocessing from pretrained_cfg, local weight
files, offline errors, BatchNorm folding. timm's tiny ``test_*`` models keep it fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from mlrkit.backbones import create_backbone  # noqa: E402
from mlrkit.backbones.timm_backbone import fold_batchnorm, is_foldable  # noqa: E402


def _full(name: str, seed: int = 0) -> nn.Module:
    """timm's whole model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(name).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_features_only_map_channels_and_preprocessing():
    bb = create_backbone("timm:test_resnet").freeze()
    assert bb.name == "timm-test_resnet" and bb.features_only and bb.weights_id == "random"
    assert bb.out_dim == 96  # test_resnet's last stage
    with torch.no_grad():
        f = bb(torch.randn(2, 3, 64, 64))
    assert f.map.shape == (2, 96, 2, 2)  # stride 32
    # test_resnet.r160_in1k's pretrained_cfg: 160 px, bilinear, mean = std = 0.5, crop 0.95
    p = bb.preprocessing
    assert (p.image_size, p.interpolation, p.mean, p.std, p.crop_pct) == (
        160, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.95)
    # test_efficientnet.r160_in1k: bicubic, ImageNet mean/std; image_size overrides the size
    q = create_backbone("timm:test_efficientnet", image_size=96).preprocessing
    assert (q.image_size, q.interpolation) == (96, "bicubic")
    assert q.mean == pytest.approx((0.485, 0.456, 0.406)) and q.std == pytest.approx(
        (0.229, 0.224, 0.225))


def test_forward_features_mode_and_token_maps():
    # EfficientNet: the feature wrapper ends at the last block (64 ch), forward_features after
    # the 1x1 head conv (num_features = 256)
    assert create_backbone("timm:test_efficientnet").out_dim == 64
    ff = create_backbone("timm:test_efficientnet", features="forward_features").eval()
    assert not ff.features_only and ff.out_dim == 256
    with torch.no_grad():
        assert ff(torch.randn(1, 3, 64, 64)).map.shape == (1, 256, 2, 2)
    # ViT: forward_features gives tokens; the map drops the class token and lays out the grid
    vit = create_backbone("timm:test_vit", features="forward_features").eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        tokens = vit.model.forward_features(x)
        fmap = vit(x).map
    side = 160 // 16
    assert tokens.shape == (2, 1 + side * side, 64)
    want = tokens[:, 1:].reshape(2, side, side, 64).permute(0, 3, 1, 2)
    assert torch.equal(fmap, want)
    with pytest.raises(ValueError, match="features='pooled'"):
        create_backbone("timm:test_vit", features="pooled")


def test_nhwc_models_give_nchw_maps():
    bb = create_backbone("timm:test_mambaout").eval()
    assert bb.output_fmt == "NHWC"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = bb.model(x)[-1]
        fmap = bb(x).map
    assert raw.shape[-1] == bb.out_dim and fmap.shape[1] == bb.out_dim
    assert torch.equal(fmap, raw.permute(0, 3, 1, 2))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weight_file_equals_timms_model(tmp_path, suffix):
    ref = _full("test_resnet", seed=1)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:  # wrapped as training scripts save it, with a DataParallel prefix
        torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}},
                   path)
    bb = create_backbone("timm:test_resnet", pretrained=str(path)).eval()
    assert bb.weights_id.startswith(f"file:{path.name}:")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb(x).map, ref.forward_features(x), rtol=0, atol=0)
    # the classifier may be left out of the file
    nofc = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save(nofc, tmp_path / "nofc.pth")
    bb2 = create_backbone("timm:test_resnet", pretrained=str(tmp_path / "nofc.pth")).eval()
    with torch.no_grad():
        assert torch.equal(bb2(x).map, bb(x).map)


def test_local_weight_file_into_a_feature_wrapper(tmp_path):
    """ViT's feature wrapper renames modules (``model.`` prefix): the file, in the whole
    model's layout, still lands on every tensor."""
    ref = _full("test_vit", seed=4)
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    bb = create_backbone("timm:test_vit", pretrained=str(tmp_path / "vit.pth"))
    own = bb.model.state_dict()
    want = ref.state_dict()
    assert len(own) > 10
    for k, v in own.items():
        assert torch.equal(v, want[k.removeprefix("model.")]), k


def test_bad_weight_files_name_the_file_and_keys(tmp_path):
    ref = _full("test_resnet")
    sd = ref.state_dict()
    torch.save({k: v for k, v in sd.items() if k != "conv1.0.weight"}, tmp_path / "miss.pth")
    with pytest.raises(ValueError, match=r"miss.pth: not timm:test_resnet weights; missing 1 "
                                         r"\(first: conv1.0.weight\)"):
        create_backbone("timm:test_resnet", pretrained=str(tmp_path / "miss.pth"))
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra.pth: .*unexpected 1 \(first: extra.weight\)"):
        create_backbone("timm:test_resnet", pretrained=str(tmp_path / "extra.pth"))
    other = timm.create_model("test_efficientnet").state_dict()
    torch.save(other, tmp_path / "effnet.pth")
    with pytest.raises(ValueError, match="effnet.pth: not timm:test_resnet weights"):
        create_backbone("timm:test_resnet", pretrained=str(tmp_path / "effnet.pth"))
    bad = dict(sd)
    bad["fc.weight"] = torch.zeros(5, 96)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"wrong shape 1 \(first: fc.weight: \(5, 96\) in the "
                                         r"file, \(1000, 96\) in the model\)"):
        create_backbone("timm:test_resnet", pretrained=str(tmp_path / "shape.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth: timm:test_resnet weight file not "
                                                "found"):
        create_backbone("timm:test_resnet", pretrained=str(tmp_path / "nowhere.pth"))


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"timm:resnet_18: unknown timm model.*close: .*resnet18"):
        create_backbone("timm:resnet_18")
    with pytest.raises(TypeError, match="unknown option.*depth"):
        create_backbone("timm:test_resnet", depth=3)
    with pytest.raises(KeyError, match="or timm:<name> for any timm model"):
        create_backbone("no_such_backbone")


def test_pretrained_offline_is_a_one_line_error(tmp_path, monkeypatch):
    hf = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as e:
        create_backbone("timm:test_resnet.r160_in1k", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("timm:test_resnet.r160_in1k: pretrained weights not in the local "
                          "cache") and "pretrained='/path/to/" in msg


def test_batchnorm_folding_keeps_outputs():
    ref = _full("test_efficientnet", seed=2)
    assert is_foldable(ref) and not is_foldable(timm.create_model("test_resnet"))
    folded = fold_batchnorm(ref)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in ref.modules())  # the original is kept
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.forward_features(x), ref.forward_features(x),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded(x), ref(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not a foldable"):
        fold_batchnorm(timm.create_model("test_resnet"))


def test_backbone_uses_the_folded_copy_only_for_inference(tmp_path):
    ref = _full("test_efficientnet", seed=3)
    torch.save(ref.state_dict(), tmp_path / "e.pth")
    bb = create_backbone("timm:test_efficientnet", pretrained=str(tmp_path / "e.pth")).eval()
    assert bb.fuse
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = bb(x).map
    assert bb._fused is not None and not any("_fused" in k for k in bb.state_dict())
    bb.fuse = False
    with torch.no_grad():
        plain = bb(x).map
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    # with gradients in train mode the parameters themselves run
    bb.fuse = True
    bb.train()
    bb(x).map.sum().backward()
    assert bb.model.conv_stem.weight.grad is not None


def test_in_a_model_and_its_checkpoint_round_trip():
    from mlrkit import create_model

    torch.manual_seed(0)
    m = create_model("baseline", backbone="timm:test_convnext", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = m(x).logits
    assert out.shape == (2, 4)
    m2 = create_model("baseline", backbone="timm:test_convnext", num_classes=4).eval()
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.equal(m2(x).logits, out)
