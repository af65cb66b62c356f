"""EfficientNet-Lite0 (timm's tf_efficientnet_lite0 + the offline package's ImageNet weights):
output geometry, the renamed weights, equality with the package's own network on real photos,
the preprocessing the weights expect."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlrkit.backbones import create_backbone, list_backbones
from mlrkit.backbones.efficientnet_lite import default_weights_path, package_to_timm


def _weights_file() -> Path:
    try:
        path = default_weights_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def pretrained():
    _weights_file()
    return create_backbone("efficientnet_lite0", pretrained=True).freeze()


def _stride32(n: int) -> int:
    for _ in range(5):  # five stride-2 stages with TF "same" padding: ceil(n / 2) each
        n = math.ceil(n / 2)
    return n


def test_registered_and_metadata():
    assert "efficientnet_lite0" in list_backbones()
    bb = create_backbone("efficientnet_lite0")
    assert bb.out_dim == 1280
    assert bb.weights_id == "random"
    assert bb.preprocessing.image_size == 224
    # timm's pretrained_cfg for tf_efficientnet_lite0: bicubic, mean = std = 0.5, crop 0.875
    assert bb.preprocessing.mean == (0.5, 0.5, 0.5) and bb.preprocessing.std == (0.5, 0.5, 0.5)
    assert bb.preprocessing.interpolation == "bicubic"
    assert bb.preprocessing.crop_pct == 0.875
    assert create_backbone("efficientnet_lite0", image_size=448).preprocessing.image_size == 448
    # 4.7 M parameters with the ImageNet classifier (published size of EfficientNet-Lite0)
    assert abs(sum(p.numel() for p in bb.parameters()) / 1e6 - 4.65) < 0.05


@pytest.mark.parametrize("hw", [(224, 224), (448, 448), (200, 300)])
def test_map_shape(hw):
    torch.manual_seed(0)
    bb = create_backbone("efficientnet_lite0").freeze()
    feats = bb(torch.randn(2, 3, *hw))
    assert feats.map.shape == (2, 1280, _stride32(hw[0]), _stride32(hw[1]))
    assert not feats.map.requires_grad


def test_pretrained_weights_are_the_files_tensors(pretrained):
    sd = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    own = pretrained.model.state_dict()
    assert len(sd) == len(own) == 296
    # package name -> timm name, written out by hand (stages of 1, 2, 2, 3, 3, 4, 1 blocks:
    # package block 7 is the third block of stage 3; block 0 has no expansion conv)
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_mean": "bn1.running_mean",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
             "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
             "_blocks.7._depthwise_conv.weight": "blocks.3.2.conv_dw.weight",
             "_blocks.7._bn2.running_var": "blocks.3.2.bn3.running_var",
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
             "_bn1.running_var": "bn2.running_var", "_conv_head.weight": "conv_head.weight",
             "_fc.bias": "classifier.bias"}
    for k, t in pairs.items():
        assert torch.equal(own[t], sd[k]), k
    # the renaming is the order-preserving one (both layouts list the tensors in forward order)
    assert list(package_to_timm(sd)) == list(own)
    assert all(own[t].shape == sd[k].shape for k, t in zip(sd, own))
    assert pretrained.weights_id == "efficientnet-lite0-imagenet"
    rand = create_backbone("efficientnet_lite0")
    assert not torch.equal(rand.model.state_dict()["conv_head.weight"], sd["_conv_head.weight"])


def test_local_weight_file(tmp_path, pretrained):
    # timm's layout
    path = tmp_path / "lite0.pth"
    torch.save(pretrained.model.state_dict(), path)
    bb = create_backbone("efficientnet_lite0", pretrained=str(path))
    assert torch.equal(bb.model.conv_head.weight, pretrained.model.conv_head.weight)
    assert bb.weights_id.startswith("file:lite0.pth:")
    # a backbone state dict ("model." prefix) without the classifier, as safetensors
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in pretrained.state_dict().items() if "classifier" not in k}
    save_file(sd, str(tmp_path / "nofc.safetensors"))
    bb2 = create_backbone("efficientnet_lite0", pretrained=str(tmp_path / "nofc.safetensors"))
    assert torch.equal(bb2.model.bn2.running_mean, pretrained.model.bn2.running_mean)
    # the package's own layout (a copy of its file)
    pkg = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    torch.save(pkg, tmp_path / "pkg.pth")
    bb3 = create_backbone("efficientnet_lite0", pretrained=str(tmp_path / "pkg.pth"))
    for k, v in pretrained.model.state_dict().items():
        assert torch.equal(bb3.model.state_dict()[k], v), k


def test_checkpoints_of_the_package_layout_still_load(pretrained):
    """A model checkpoint saved when the backbone was efficientnet_lite_pytorch's network
    (keys ``backbone.model._conv_stem.weight`` ...) loads into timm's layout."""
    from mlrkit import create_model

    pkg = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    model = create_model("baseline", backbone="efficientnet_lite0", num_classes=3)
    state = {f"backbone.model.{k}": v for k, v in pkg.items()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    model.load_state_dict(state)  # strict
    for k, v in pretrained.model.state_dict().items():
        assert torch.equal(model.backbone.model.state_dict()[k], v), k


def test_bad_weights_and_options(tmp_path):
    missing = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/lite0.pth.*put the file there"):
        create_backbone("efficientnet_lite0", pretrained=str(missing))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    # 296 tensors less the 2 of the classifier, which a file may leave out
    with pytest.raises(ValueError, match=r"other.pth: not efficientnet_lite0 weights; missing "
                       r"294 \(first: conv_stem.weight.*unexpected 1 \(first: conv.weight\)"):
        create_backbone("efficientnet_lite0", pretrained=str(tmp_path / "other.pth"))
    torch.save({"_conv_stem.weight": torch.zeros(3), "_blocks.99._bn1.bias": torch.zeros(3)},
               tmp_path / "pkgbad.pth")
    with pytest.raises(ValueError, match="pkgbad.pth: '_blocks.99._bn1.bias' is not"):
        create_backbone("efficientnet_lite0", pretrained=str(tmp_path / "pkgbad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable"):
        create_backbone("efficientnet_lite0", pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(TypeError, match="unknown option.*depth"):
        create_backbone("efficientnet_lite0", depth=3)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        create_backbone("efficientnet_lite0").forward_map(torch.zeros(1, 1, 32, 32))


def _coco_photos(data_dir: Path, n: int | None = None) -> list[Path]:
    files = sorted((data_dir / "coco128" / "images" / "train2017").glob("*.jpg"))
    if not files:
        pytest.skip(f"no coco128 photos under {data_dir}")
    return files[:n] if n else files


def _batch(files: list[Path], mean, std, size: int = 224) -> torch.Tensor:
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(mean, std)])
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def test_preprocessing_matches_the_weights_statistics(pretrained, data_dir):
    """The stem's BatchNorm stored the variance of its conv outputs on the training inputs;
    on real photos normalized as ``preprocessing`` says, the conv outputs must have about that
    variance, while ImageNet mean/std (a 2.2x wider input range) would not."""
    files = _coco_photos(data_dir, 32)
    stem = pretrained.model.conv_stem
    run_var = pretrained.model.bn1.running_var
    ok = run_var > 1e-3
    ratios = {}
    for name, mean, std in [("lite", pretrained.preprocessing.mean, pretrained.preprocessing.std),
                            ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]:
        with torch.no_grad():
            y = stem(_batch(files, mean, std))
        ratios[name] = (y.var(dim=(0, 2, 3))[ok] / run_var[ok]).median().item()
    assert 0.6 < ratios["lite"] < 1.6, ratios
    assert ratios["imagenet"] > 2.5, ratios


# ImageNet-1k classes that name the same thing as a COCO class (independent vocabularies).
_SYNONYMS = {
    "zebra": {"zebra"},
    "elephant": {"African elephant", "Indian elephant", "tusker"},
    "airplane": {"airliner", "warplane", "wing", "airship", "space shuttle"},
    "bus": {"school bus", "trolleybus", "minibus", "passenger car", "streetcar", "fire engine"},
    "train": {"electric locomotive", "steam locomotive", "passenger car", "streetcar",
              "bullet train", "freight car"},
    "pizza": {"pizza"},
    "teddy bear": {"teddy"},
    "motorcycle": {"moped", "motor scooter", "crash helmet", "disk brake"},
}


def test_imagenet_classifier_on_real_photos(pretrained, data_dir):
    """Top-5 ImageNet classes of COCO photos whose largest object is one of the classes above
    contain a synonym of that object; random weights do not."""
    import yaml
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    root = data_dir / "coco128"
    names = yaml.safe_load((root / "config.yaml").read_text())["names"]
    chosen, wanted = [], []
    for f in _coco_photos(data_dir):
        lab = root / "labels" / "train2017" / f"{f.stem}.txt"
        area: dict[str, float] = {}
        for line in (lab.read_text().splitlines() if lab.is_file() else []):
            c, _, _, w, h = line.split()
            area[names[int(c)]] = area.get(names[int(c)], 0.0) + float(w) * float(h)
        if area:
            top = max(area, key=area.get)
            if top in _SYNONYMS and area[top] >= 0.25:
                chosen.append(f)
                wanted.append(_SYNONYMS[top])
    assert len(chosen) >= 10, "coco128 should hold >= 10 such photos"
    x = _batch(chosen, pretrained.preprocessing.mean, pretrained.preprocessing.std)

    def hit_rate(bb) -> float:
        with torch.no_grad():
            top5 = bb.classify(x).topk(5).indices
        hits = [bool({categories[j] for j in row} & w) for row, w in zip(top5.tolist(), wanted)]
        return sum(hits) / len(hits)

    assert hit_rate(pretrained) >= 0.75
    torch.manual_seed(0)
    assert hit_rate(create_backbone("efficientnet_lite0").freeze()) <= 0.25
    # the same photo gives the same map; two different photos give different maps
    with torch.no_grad():
        a, b = pretrained(x[:2]).map, pretrained(x[:2]).map
    assert torch.equal(a, b)
    assert (a[0] - a[1]).abs().mean() > 0.1 * a.abs().mean()


def test_folded_inference_path_matches_the_plain_network(pretrained):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 128) * 2 - 1
    with torch.no_grad():
        fused = pretrained.forward_map(x)
        pretrained.fuse = False
        try:
            plain = pretrained.forward_map(x)
        finally:
            pretrained.fuse = True
    assert pretrained._fused is not None
    assert not any("_fused" in k for k in pretrained.state_dict())
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    # new weights -> the folded copy is rebuilt
    other = create_backbone("efficientnet_lite0")
    bb = create_backbone("efficientnet_lite0", pretrained=True).freeze()
    with torch.no_grad():
        bb.forward_map(x)
        bb.model.load_state_dict(other.model.state_dict())
        after = bb.forward_map(x)
        bb.fuse = False
        torch.testing.assert_close(after, bb.forward_map(x), rtol=1e-4, atol=1e-4)
    # training with gradients uses the parameters themselves
    bb.freeze(False).train()
    bb.fuse = True
    bb.forward_map(x).mean().backward()
    assert bb.model.conv_stem.weight.grad is not None


def test_same_maps_as_the_package_network_on_real_photos(pretrained, data_dir):
    """timm's network with the renamed weights computes the package's own network: same map
    on real photos at 448 px, prepared as the backbone's preprocessing says."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    from mlrkit.data.transforms import transform_for

    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None, num_classes=1000)
    ref.load_state_dict(torch.load(_weights_file(), map_location="cpu", weights_only=True))
    ref.eval()
    tf = transform_for(pretrained.preprocessing, train=False, image_size=448)
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in _coco_photos(data_dir, 4)])
    with torch.no_grad():
        want = ref.extract_features(x)
        folded = pretrained.forward_map(x)
        pretrained.fuse = False
        try:
            plain = pretrained.forward_map(x)
        finally:
            pretrained.fuse = True
    assert want.shape == plain.shape == (4, 1280, 14, 14)
    assert want.abs().max() > 1.0  # a real map, not zeros
    # same operations in the same order: equal up to float rounding; BN folding changes the
    # rounding (measured max |diff| 0 plain, ~3e-5 folded, on maps in [0, 6])
    torch.testing.assert_close(plain, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(folded, want, rtol=0, atol=2e-4)


def test_eval_transform_uses_the_bicubic_filter(pretrained):
    from torchvision.transforms import InterpolationMode, v2

    from mlrkit.data.transforms import transform_for

    tf = transform_for(pretrained.preprocessing, train=False)
    resize = [t for t in tf.transforms if isinstance(t, v2.Resize)]
    assert [r.interpolation for r in resize] == [InterpolationMode.BICUBIC]
