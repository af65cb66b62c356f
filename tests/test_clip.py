"""CLIP towers and learned prompts, checked against open_clip's own forward passes.

Text sides use the real text configs of RN101 / ViT-B/16 (random weights); image sides use
small open_clip configs of the same kind (native grid 2 x 2 for the ResNet, 4 x 4 for the ViT)
except one full-size RN50 shape check at 448 px.
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

open_clip = pytest.importorskip("open_clip")

from open_clip.model import resize_pos_embed  # noqa: E402
from open_clip.modified_resnet import AttentionPool2d  # noqa: E402

from mlrkit.backbones import create_backbone, list_backbones  # noqa: E402
from mlrkit.backbones.clip import (  # noqa: E402
    ClipResNet,
    ClipTextTower,
    ClipViT,
    ClipWeightsNotFound,
)
from mlrkit.data.base import MultiLabelDataset  # noqa: E402
from mlrkit.data.cache import default_transform, extract_features  # noqa: E402
from mlrkit.labels import LabelSpace  # noqa: E402
from mlrkit.nn.prompts import PromptLearner  # noqa: E402

TINY_RN = {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64}  # 256-ch layer 4, grid 2
TINY_VIT = {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16, "image_size": 64}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
_GET_CONFIG = open_clip.get_model_config  # before any test patches it
NAMES = ["dog", "traffic_light", "hair drier", "potted plant"]


def _cfg(arch: str, vision: dict | None = None, small_text: bool = False) -> dict:
    cfg = _GET_CONFIG(arch)
    if vision is not None:
        cfg["vision_cfg"] = dict(vision)
    if small_text:
        cfg["text_cfg"] = dict(TINY_TEXT)
    return cfg


def _clip(arch: str = "RN101-quickgelu", vision: dict | None = TINY_RN, small_text: bool = True,
          seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**_cfg(arch, vision, small_text)).eval()


def _wrap(model: nn.Module, **kw) -> ClipResNet | ClipViT:
    if hasattr(model.visual, "attnpool"):
        return ClipResNet(model, image_size=kw.pop("image_size", 128), **kw).eval()
    return ClipViT(model, image_size=kw.pop("image_size", 64), **kw).eval()


# ------------------------------------------------------------------------------- text tower

@pytest.mark.parametrize("arch,out", [("RN101-quickgelu", 512), ("ViT-B-16-quickgelu", 512),
                                      ("RN50-quickgelu", 1024)])
def test_prompt_with_template_words_equals_open_clip_encode_text(arch, out):
    vision = TINY_RN if arch.startswith("RN") else TINY_VIT
    model = _clip(arch, vision, small_text=False)  # the real 12-layer text transformer
    bb = _wrap(model)
    assert isinstance(bb.text, ClipTextTower)
    assert (bb.text.width, bb.text.output_dim, bb.text.context_length) == (512, out, 77)
    assert bb.output_dim == out
    pl = PromptLearner(bb.text, NAMES, n_ctx=4, init_words="a photo of a")
    texts = [f"a photo of a {n.replace('_', ' ')}." for n in NAMES]
    with torch.no_grad():
        ours = pl()
        ref = model.encode_text(open_clip.tokenize(texts))
        ids_ours = bb.text.encode_text(bb.text.tokenize(texts))
    assert ours.shape == (len(NAMES), out)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ids_ours, ref, atol=1e-5, rtol=1e-5)
    # the same words as a class-specific context give the same features
    pl_cs = PromptLearner(bb.text, NAMES, n_ctx=4, class_specific=True, init_words="a photo of a")
    assert pl_cs.ctx.shape == (len(NAMES), 4, 512)
    with torch.no_grad():
        torch.testing.assert_close(pl_cs(), ref, atol=1e-5, rtol=1e-5)


def test_encode_cuts_to_eot_and_equals_full_length_open_clip():
    model = _clip()
    bb = _wrap(model)
    torch.manual_seed(1)
    pl = PromptLearner(bb.text, NAMES, n_ctx=16, class_specific=True)
    emb, eot = pl.prompt_embeddings()
    assert emb.shape[1] == int(eot.max()) + 1 < 30  # buffers hold only up to the last EOT
    # the prompts padded to 77 tokens with random vectors after each EOT: the causal mask
    # makes them irrelevant, and encode must not even run them through the transformer
    full = torch.randn(len(NAMES), 77, bb.text.width)
    full[:, :emb.shape[1]] = emb.detach()
    seen = []
    hook = bb.text.transformer.resblocks[0].register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        ours = pl()
        ours_full = bb.text.encode(full, eot)
    hook.remove()
    assert seen == [int(eot.max()) + 1] * 2
    # open_clip's encode_text over all 77 positions, fed the same embeddings
    ids = open_clip.tokenize([f"{' '.join(['X'] * 16)} {n.replace('_', ' ')}." for n in NAMES])
    assert torch.equal(ids.argmax(dim=-1), eot)

    class Fixed(nn.Module):
        def forward(self, _ids):
            return full

    model.token_embedding = Fixed()
    with torch.no_grad():
        ref = model.encode_text(ids)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_full, ref, atol=1e-5, rtol=1e-5)


def test_prompt_learner_state_init_and_gradients():
    bb = _wrap(_clip()).freeze()
    torch.manual_seed(0)
    pl = PromptLearner(bb.text, NAMES * 20, n_ctx=16)
    assert pl.ctx.shape == (16, bb.text.width)
    assert abs(pl.ctx.std().item() - 0.02) < 0.004
    assert sorted(pl.state_dict()) == ["ctx", "eot_index", "token_prefix", "token_suffix"]
    assert [n for n, _ in pl.named_parameters()] == ["ctx"]
    assert pl.text is bb.text and "text" not in dict(pl.named_children())
    # the frozen tower passes gradients to the context only
    pl().sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.prompts = PromptLearner(bb.text, NAMES, n_ctx=4, class_specific=True)

    whole = nn.ModuleDict({"backbone": bb, "head": Head()})
    keys = [k for k in whole.state_dict() if "token_embedding" in k]
    assert keys == ["backbone.text.token_embedding.weight"]  # text weights saved once
    twin = copy.deepcopy(whole)  # (EMA copies the model): the copy uses the copied tower
    assert twin["head"].prompts.text is twin["backbone"].text is not bb.text


def test_prompt_learner_errors():
    bb = _wrap(_clip())
    with pytest.raises(ValueError, match="is 4 tokens.*set n_ctx=4"):
        PromptLearner(bb.text, NAMES, n_ctx=16, init_words="a photo of a")
    with pytest.raises(ValueError, match="tokens with n_ctx=70"):
        PromptLearner(bb.text, ["a very long class name indeed"], n_ctx=70)
    PromptLearner(bb.text, ["a very long class name indeed"], n_ctx=60)  # fits
    with pytest.raises(ValueError, match="non-empty"):
        PromptLearner(bb.text, [], n_ctx=4)


# ------------------------------------------------------------------------------ image towers

def test_rn_pool2x2_matches_open_clip_attnpool():
    model = _clip()
    bb = _wrap(model, image_size=128)  # 2x the native 64 px, as 448 is to 224
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        f = bb(x)
        layer4 = model.visual.forward_intermediates(x, indices=1, intermediates_only=True)[
            "image_intermediates"][-1]
        ref = model.visual.attnpool(F.avg_pool2d(layer4, 2, 2))
        pooled_again = bb.pool(f.map)
    assert layer4.shape == (2, 256, 4, 4) and f.map.shape == (2, 256, 2, 2)
    torch.testing.assert_close(f.map, F.avg_pool2d(layer4, 2, 2))
    torch.testing.assert_close(f.pooled, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_again, f.pooled)


def test_rn_native_grid_equals_encode_image():
    model = _clip()
    bb = _wrap(model, image_size=64, spatial="interpolate")  # native grid, no 2x2 pool
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = bb(x)
        ref = model.encode_image(x)
    assert f.map.shape == (2, 256, 2, 2)
    torch.testing.assert_close(f.pooled, ref, atol=1e-5, rtol=1e-5)


def test_rn_interpolate_matches_resized_open_clip_attnpool():
    model = _clip()
    bb = _wrap(model, image_size=128, spatial="interpolate")
    x = torch.randn(2, 3, 128, 128)
    ap = model.visual.attnpool
    # open_clip's own position-embedding resize, then its attention pool at a 4 x 4 grid
    sd = {"visual.positional_embedding": ap.positional_embedding.detach().clone()}
    resize_pos_embed(sd, types.SimpleNamespace(visual=types.SimpleNamespace(grid_size=(4, 4))))
    big = AttentionPool2d(4, 256, ap.num_heads, bb.output_dim).eval()
    big.load_state_dict({**ap.state_dict(), "positional_embedding": sd[
        "visual.positional_embedding"]})
    with torch.no_grad():
        f = bb(x)
        ref = big(model.visual.forward_intermediates(x, indices=1, intermediates_only=True)[
            "image_intermediates"][-1])
    assert f.map.shape == (2, 256, 4, 4)
    torch.testing.assert_close(f.pooled, ref, atol=1e-5, rtol=1e-5)


def test_rn_full_size_448_map_is_7x7():
    bb = create_backbone("clip_rn50", pretrained="none").eval()
    assert bb.preprocessing.image_size == 448 and bb.spatial == "pool2x2"
    assert bb.preprocessing.mean == open_clip.OPENAI_DATASET_MEAN
    assert bb.preprocessing.std == open_clip.OPENAI_DATASET_STD
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 448, 448))
    assert f.map.shape == (1, 2048, 7, 7) and f.pooled.shape == (1, 1024)
    assert abs(bb.logit_scale - 1 / 0.07) < 1e-4


def test_vit_native_equals_encode_image_and_tokens():
    model = _clip("ViT-B-16-quickgelu", TINY_VIT)
    bb = _wrap(model, image_size=64)
    x = torch.randn(2, 3, 64, 64)
    model.visual.output_tokens = True
    with torch.no_grad():
        f = bb(x)
        ref_pooled, ref_tokens = model.visual(x)
    assert f.map.shape == (2, 512, 4, 4) and f.pooled.shape == (2, 512)
    torch.testing.assert_close(f.pooled, ref_pooled, atol=1e-5, rtol=1e-5)
    ref_map = (ref_tokens @ model.visual.proj).transpose(1, 2).reshape(2, 512, 4, 4)
    torch.testing.assert_close(f.map, ref_map, atol=1e-5, rtol=1e-5)
    assert not bb.can_pool_map
    with pytest.raises(NotImplementedError, match="class token"):
        bb.pool(f.map)


def test_vit_other_size_matches_open_clip_resized_model():
    model = _clip("ViT-B-16-quickgelu", TINY_VIT)
    bb = _wrap(model, image_size=128)
    big = _clip("ViT-B-16-quickgelu", {**TINY_VIT, "image_size": 128}, seed=1)
    sd = dict(model.state_dict())
    resize_pos_embed(sd, big)  # open_clip's resize when loading at another size
    big.load_state_dict(sd)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        f = bb(x)
        ref = big.encode_image(x)
    assert f.map.shape == (1, 512, 8, 8)
    torch.testing.assert_close(f.pooled, ref, atol=1e-5, rtol=1e-5)


def test_registered_names_and_options(monkeypatch):
    assert {"clip_rn50", "clip_rn101", "clip_vitb16"} <= set(list_backbones())
    monkeypatch.setattr(open_clip, "get_model_config",
                        lambda arch: _cfg(arch, TINY_VIT if "ViT" in arch else TINY_RN, True))
    vit = create_backbone("clip_vitb16", pretrained=False)
    assert isinstance(vit, ClipViT) and vit.preprocessing.image_size == 224
    assert vit.out_dim == vit.output_dim == 512 and vit.arch == "ViT-B-16-quickgelu"
    rn = create_backbone("clip_rn101", pretrained=None, spatial="interpolate", image_size=224)
    assert isinstance(rn, ClipResNet) and rn.spatial == "interpolate" and rn.out_dim == 256
    with pytest.raises(ValueError, match="multiple of 64"):
        create_backbone("clip_rn101", image_size=224)  # pool2x2 needs an even layer-4 grid
    with pytest.raises(ValueError, match="spatial must be one of"):
        create_backbone("clip_rn101", spatial="avg")


# ------------------------------------------------------------------------------- weights

@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_local_weight_files(monkeypatch, tmp_path):
    monkeypatch.setattr(open_clip, "get_model_config", lambda arch: _cfg(arch, TINY_RN, True))
    source = _clip(seed=3)
    with torch.no_grad():
        source.logit_scale.fill_(np.log(100.0))
    x = torch.randn(1, 3, 64, 64)
    ids = open_clip.tokenize(["a photo of a dog."])
    with torch.no_grad():
        ref_img, ref_txt = source.encode_image(x), source.encode_text(ids)
    files = {"open_clip.pt": lambda p: torch.save({"state_dict": source.state_dict()}, p),
             "open_clip.safetensors": lambda p: __import__("safetensors.torch").torch.save_file(
                 {k: v.contiguous() for k, v in source.state_dict().items()}, str(p)),
             "jit.pt": lambda p: torch.jit.script(source).save(str(p))}
    for fname, write in files.items():
        write(tmp_path / fname)
        bb = create_backbone("clip_rn101", pretrained=str(tmp_path / fname), image_size=64,
                             spatial="interpolate").eval()
        with torch.no_grad():
            torch.testing.assert_close(bb(x).pooled, ref_img, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(bb.text.encode_text(ids), ref_txt, atol=1e-5, rtol=1e-5)
        assert abs(bb.logit_scale - 100.0) < 1e-3 and bb.weights_id.startswith(f"file:{fname}")
    # a state dict saved from the backbone itself loads back too
    torch.save(bb.state_dict(), tmp_path / "own.pt")
    again = create_backbone("clip_rn101", pretrained=tmp_path / "own.pt", image_size=64,
                            spatial="interpolate").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).pooled, ref_img, atol=1e-5, rtol=1e-5)
    bad = {k: v for k, v in source.state_dict().items() if not k.startswith("ln_final")}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing 2"):
        create_backbone("clip_rn101", pretrained=str(tmp_path / "bad.pt"))
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        create_backbone("clip_rn101", pretrained=str(tmp_path / "absent.pt"))


def test_offline_name_gives_one_line_error(monkeypatch):
    calls = []

    def no_network(cfg, *a, **kw):
        calls.append(cfg)
        raise OSError("[Errno 101] Network is unreachable\n(while fetching)")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_network)
    for pretrained in ("openai", True):
        with pytest.raises(ClipWeightsNotFound) as err:
            create_backbone("clip_rn101", pretrained=pretrained)
        msg = str(err.value)
        assert "\n" not in msg and "Network is unreachable" in msg
        assert "https://huggingface.co/timm/resnet101_clip.openai" in msg
        assert "open_clip_model.safetensors" in msg and "RN101.pt" in msg
        assert "`pretrained: /path/to/open_clip_model.safetensors`" in msg
    assert len(calls) == 2 and calls[0]["hf_hub"].startswith("timm/resnet101_clip.openai")
    with pytest.raises(ValueError, match="unknown pretrained 'laion9'.*openai"):
        create_backbone("clip_vitb16", pretrained="laion9")


# ------------------------------------------------------------------------------ feature cache

class Pictures(MultiLabelDataset):
    """Random RGB pictures in memory."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        targets = torch.from_numpy(np.where(rng.random((n, 3)) < 0.5, 1, -1).astype(np.int8))
        super().__init__(None, targets, LabelSpace(("a", "b", "c")),
                         ids=[f"pic{i}" for i in range(n)])
        self.arrays = rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)

    def load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i])


@pytest.mark.parametrize("arch", ["RN101-quickgelu", "ViT-B-16-quickgelu"])
def test_feature_cache_with_frozen_clip(tmp_path, arch):
    bb = _wrap(_clip(arch, TINY_RN if arch.startswith("RN") else TINY_VIT)).freeze()
    ds = Pictures(5)
    cache = extract_features(bb, ds, tmp_path / "c", batch_size=2, dtype=torch.float32,
                             progress=False)
    tf = default_transform(bb)
    images = torch.stack([tf(ds.load_image(i)) for i in range(len(ds))])
    with torch.no_grad():
        f = bb(images)
    cached = cache.get_batch(range(len(ds)))
    torch.testing.assert_close(cached, f.map, atol=1e-5, rtol=1e-5)
    if bb.can_pool_map:  # a head trained from the cache still gets CLIP's global feature
        with torch.no_grad():
            torch.testing.assert_close(bb.pool(cached), f.pooled, atol=1e-5, rtol=1e-5)


def test_sigrl_on_clip_resnet_starts_from_clip_dense_projection():
    """SigRL on a CLIP ResNet: the patch projection starts as the attention pool's value and
    output maps composed (DualCoOp's dense features), the global feature is the attention
    pool output itself."""
    from mlrkit.model import create_model

    model = _clip()
    bb = _wrap(model, image_size=128)
    joint = model.visual.attnpool.c_proj.out_features
    emb = torch.randn(3, joint)
    m = create_model("sigrl", backbone=bb, num_classes=3, label_embeddings=emb,
                     gat_hidden=8, gat_heads=2, topk=2).eval()
    ap = model.visual.attnpool
    x = torch.randn(5, bb.out_dim)
    with torch.no_grad():
        want = ap.c_proj(ap.v_proj(x))  # two affine maps, by hand
        torch.testing.assert_close(m.head.visual_proj(x), want, atol=1e-5, rtol=1e-5)
        img = torch.randn(2, 3, 128, 128)
        out = m(img)
        torch.testing.assert_close(out.extras["global_feature"], bb(img).pooled)
    rand = create_model("sigrl", backbone=bb, num_classes=3, label_embeddings=emb,
                        visual_init="random", gat_hidden=8, gat_heads=2, topk=2)
    assert not torch.allclose(rand.head.visual_proj.weight, m.head.visual_proj.weight)
    with pytest.raises(ValueError, match="clip_dense needs a CLIP ResNet"):
        create_model("sigrl", backbone="efficientnet_lite0", num_classes=3,
                     label_embeddings=emb, visual_init="clip_dense")


@pytest.mark.parametrize("method", ["coop", "sdcsp"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_clip_heads_export(method, fmt, tmp_path):
    """The prompt heads export: under a tracer the text cache steps aside, the text tower
    keeps every token and SD-CSP's pool takes its plain form; the file's logits equal the
    eager model's (blockwise pool, cut prompts) on a new batch."""
    from mlrkit.export import export_model
    from mlrkit.model import create_model

    pytest.importorskip("onnxruntime")
    bb = _wrap(_clip(), image_size=128)
    model = create_model(method, backbone=bb, num_classes=3, label_embeddings=torch.randn(3, 12),
                         class_names=["dog", "cat", "hair drier"], n_ctx=4).eval()
    res = export_model(model, tmp_path / f"{method}.{fmt}", format=fmt, image_size=128)
    x = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        want = model(x).logits
    if fmt == "onnx":
        import onnxruntime as ort

        got = torch.from_numpy(ort.InferenceSession(str(res.path)).run(
            ["logits"], {"images": x.numpy()})[0])
    else:
        got = torch.jit.load(str(res.path))(x)
        got = got.logits if hasattr(got, "logits") else got
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
