"""Export: a trained checkpoint to ONNX (run by onnxruntime) and TorchScript gives the PyTorch
model's logits on real photos; torch.export works on trained models; heads with label
semantics (DLSA, CMSG, ML-GCN) export too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_color_images
from mlrkit import cli

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from mlrkit.export import LogitsModule, export_model, read_metadata  # noqa: E402

# logits of the exported files vs PyTorch: the same float32 operations, reordered or fused
# by the exporters and runtimes (measured max |diff| 2e-6 .. 3e-5)
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _photos(data_dir: Path, n: int) -> list[Path]:
    files = sorted((data_dir / "coco128" / "images" / "train2017").glob("*.jpg"))
    if len(files) < n:
        pytest.skip(f"coco128 photos missing under {data_dir}")
    return files[:n]


def _batch(files: list[Path], meta: dict) -> torch.Tensor:
    """Photos prepared from the exported file's own metadata only."""
    from PIL import Image

    from mlrkit.data.transforms import build_transform

    tf = build_transform(False, image_size=meta["image_size"], mean=meta["mean"],
                         std=meta["std"], interpolation=meta["interpolation"])
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def _onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    return torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A baseline trained for one epoch on a frozen, ImageNet-pretrained EfficientNet-Lite0."""
    from mlrkit.backbones.efficientnet_lite import default_weights_path

    try:
        if not default_weights_path().is_file():
            pytest.skip("EfficientNet-Lite0 weights missing")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    tmp = tmp_path_factory.mktemp("export")
    tr = make_color_images(tmp / "imgs", 16, size=64)
    cfg = {
        "name": "base", "seed": 0, "output_dir": str(tmp / "runs"),
        "model": {"name": "baseline", "backbone": "efficientnet_lite0", "pretrained": True,
                  "freeze_backbone": True},
        "data": {"train": {"name": "list", "labels_file": str(tr),
                           "names": str(tmp / "imgs" / "names.txt")},
                 "val": {"name": "list", "labels_file": str(tr),
                         "names": str(tmp / "imgs" / "names.txt")},
                 "image_size": 96, "batch_size": 8, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp / "cache")},
        "optim": {"name": "adam", "lr": 1e-2},
        "train": {"epochs": 1, "progress": False, "amp": "none"},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", "--config", str(tmp / "cfg.yaml"), "--no-report"]) == 0
    return tmp / "runs" / "base"


def test_onnx_cli_equals_pytorch_on_real_photos(run, tmp_path, data_dir, capsys):
    from mlrkit.predict import load_model

    out = tmp_path / "model.onnx"
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(run), "--format", "onnx",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"onnx: {out} (images ('batch', 3, 96, 96) -> logits (batch, 3))" in printed
    assert "max |logit difference| vs PyTorch" in printed
    meta = read_metadata(out)
    assert meta["label_names"] == ["red", "green", "blue"]
    assert meta["image_size"] == 96 and meta["interpolation"] == "bicubic"
    assert meta["mean"] == [0.5, 0.5, 0.5] and len(meta["thresholds"]) == 3
    x = _batch(_photos(data_dir, 5), meta)  # batch 5: the batch axis is free
    model, _, _ = load_model(run)
    with torch.no_grad():
        want = model(x).logits
    got = _onnx_logits(out, x)
    assert got.shape == (5, 3)
    assert want.std() > 1e-3  # different photos, different logits
    torch.testing.assert_close(got, want, **TOL)


def test_torchscript_equals_pytorch(run, tmp_path, data_dir):
    from mlrkit.predict import load_model

    res = export_model(run, tmp_path / "model.pt", format="torchscript")
    assert res.output_names == ["logits"] and res.max_abs_diff is not None
    assert res.max_abs_diff < 1e-4
    meta = read_metadata(res.path)
    assert meta["label_names"] == ["red", "green", "blue"] and meta["outputs"] == ["logits"]
    loaded = torch.jit.load(str(res.path))
    x = _batch(_photos(data_dir, 3), meta)
    model, _, _ = load_model(run)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        got = loaded(x)
        want = model(x).logits
    torch.testing.assert_close(got, want, **TOL)


def test_torch_export_of_a_trained_model(run):
    """torch.export used to fail: the backbone folded BatchNorm inside forward."""
    from mlrkit.predict import load_model

    model, _, _ = load_model(run)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = model(x).logits  # eager inference builds the folded copy first
        assert model.backbone._fused is not None
        program = torch.export.export(LogitsModule(model), (x,))
        got = program.module()(x)
    # the exported graph holds the plain network, not the folded copy
    assert any("batch_norm" in str(n.target) for n in program.graph.nodes)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("method,options", [
    ("dlsa", {"d1": 16, "d2": 32, "heads": 2}),
    pytest.param("cmsg", {}, marks=pytest.mark.slow),
    pytest.param("mlgcn", {}, marks=pytest.mark.slow),
    ("ssgrl", {"inter_dim": 16, "proj_dim": 16, "steps": 1}),
])
def test_semantic_heads_export_to_onnx(method, options, tmp_path, data_dir):
    from mlrkit import create_model

    torch.manual_seed(0)
    c = 5
    emb = torch.randn(c, 12)
    graph = (torch.rand(c, c) > 0.5).float().fill_diagonal_(0)
    model = create_model(method, backbone="timm:test_efficientnet", num_classes=c,
                         label_embeddings=emb, label_graph=graph, **options).eval()
    res = export_model(model, tmp_path / f"{method}.onnx", image_size=64)
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    meta = read_metadata(res.path)
    assert meta["method"] == method and meta["label_names"] is None
    x = _batch(_photos(data_dir, 3), meta)
    with torch.no_grad():
        want = model(x).logits
    torch.testing.assert_close(_onnx_logits(res.path, x), want, **TOL)


def test_bad_requests(tmp_path, capsys):
    from mlrkit import create_model

    model = create_model("baseline", backbone="timm:test_resnet", num_classes=2)
    with pytest.raises(ValueError, match="format 'tflite'; choose one of onnx, torchscript"):
        export_model(model, tmp_path / "m.tflite", format="tflite")
    with pytest.raises(IsADirectoryError, match="a folder; give the file"):
        export_model(model, tmp_path, format="torchscript")
    with pytest.raises(TypeError, match="expected an MLRModel"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "m.pt", format="torchscript")
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlrkit export: error:") and "nowhere" in err
    assert not (tmp_path / "m.onnx").exists()


class _PerImageHead(torch.nn.Module):
    """A head that loops over the batch in Python: tracing bakes in the example's batch."""

    num_classes = 2

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(in_dim, 2)

    def forward(self, features):
        from mlrkit.structures import Output

        rows = [self.fc(features.map[i].mean(dim=(1, 2))) for i in range(features.map.shape[0])]
        return Output(logits=torch.stack(rows))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_that_fixes_the_batch_is_refused(fmt, tmp_path):
    from mlrkit.backbones import create_backbone
    from mlrkit.model import MLRModel

    bb = create_backbone("timm:test_resnet")
    model = MLRModel(bb, _PerImageHead(bb.out_dim), "per_image").eval()
    out = tmp_path / f"m.{fmt}"
    with pytest.raises(RuntimeError, match=f"m.{fmt}: "):
        export_model(model, out, format=fmt, image_size=32)
    assert not out.exists()
