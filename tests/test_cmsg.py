"""CMSG: attention blocks against explicit references, the correlation mask, the head, ablations."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_losses
from mlrkit.methods.cmsg import CMSG, semantic_correlation
from mlrkit.nn.attention import (
    ClassAttentionPooling,
    CrossAttentionLayer,
    MultiHeadAttention,
    SelfAttentionLayer,
    correlation_bias,
    sine_position_encoding,
)
from mlrkit.nn.decoupling import ClassWiseLinear
from mlrkit.structures import Features

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MLRKIT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# ----------------------------------------------------------------------------- references
def ref_sine_pe(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's sine encoding written element by element from its definition."""
    npf = dim // 2
    out = torch.zeros(h * w, dim, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            y = (r + 1) / (h + 1e-6) * 2 * math.pi
            x = (c + 1) / (w + 1e-6) * 2 * math.pi
            for k in range(npf):
                t = temperature ** (2 * (k // 2) / npf)
                f = math.sin if k % 2 == 0 else math.cos
                out[r * w + c, k] = f(y / t)
                out[r * w + c, npf + k] = f(x / t)
    return out


@torch.no_grad()
def ref_mha(mha: MultiHeadAttention, query, key, value, bias=None):
    """Multi-head attention with explicit loops over batch, head and query (float64)."""
    W = {n: (getattr(mha, n).weight.double(), getattr(mha, n).bias.double())
         for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
    q = query.double() @ W["q_proj"][0].T + W["q_proj"][1]
    k = key.double() @ W["k_proj"][0].T + W["k_proj"][1]
    v = value.double() @ W["v_proj"][0].T + W["v_proj"][1]
    B, Lq, d = q.shape
    Lk = k.shape[1]
    h, dh = mha.heads, d // mha.heads
    out = torch.zeros(B, Lq, d, dtype=torch.float64)
    wts = torch.zeros(B, Lq, Lk, dtype=torch.float64)
    for b in range(B):
        for hd in range(h):
            sl = slice(hd * dh, (hd + 1) * dh)
            for i in range(Lq):
                s = [float(q[b, i, sl] @ k[b, j, sl]) / math.sqrt(dh) for j in range(Lk)]
                if bias is not None:
                    s = [s[j] + float(bias[i, j]) for j in range(Lk)]
                m = max(s)
                e = [math.exp(x - m) if x != float("-inf") else 0.0 for x in s]
                z = sum(e)
                a = [x / z for x in e]
                for j in range(Lk):
                    out[b, i, sl] += a[j] * v[b, j, sl]
                    wts[b, i, j] += a[j] / h
    return out @ W["out_proj"][0].T + W["out_proj"][1], wts


def ref_layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def ref_ffn(x, ffn):
    hid = torch.clamp(x @ ffn.fc1.weight.double().T + ffn.fc1.bias.double(), min=0)
    return hid @ ffn.fc2.weight.double().T + ffn.fc2.bias.double()


# ----------------------------------------------------------------------------- building blocks
def test_sine_position_encoding_matches_definition():
    for h, w, dim in [(3, 5, 8), (4, 4, 16), (1, 2, 4)]:
        got = sine_position_encoding(h, w, dim).double()
        torch.testing.assert_close(got, ref_sine_pe(h, w, dim), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)


@pytest.mark.parametrize("masked", [False, True])
def test_multihead_attention_matches_loop_reference(masked):
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).eval()
    q, k = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    v = torch.randn(2, 7, 12)
    bias = None
    if masked:
        bias = torch.randn(5, 7)
        bias[torch.rand(5, 7) < 0.4] = float("-inf")
        bias[:, 0] = 0.0  # every row keeps one key
    ref_out, ref_w = ref_mha(mha, q, k, v, bias)
    fast, none = mha(q, k, v, attn_mask=bias)
    slow, w = mha(q, k, v, attn_mask=bias, need_weights=True)
    assert none is None
    torch.testing.assert_close(fast.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-6, rtol=1e-5)
    if masked:
        assert torch.all(w[:, torch.isinf(bias)] == 0)


def test_boolean_mask_equals_float_mask():
    torch.manual_seed(1)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 4, 8)
    allowed = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=bool)
    fl = torch.where(allowed, 0.0, float("-inf"))
    for nw in (False, True):
        a, wa = mha(x, x, x, attn_mask=allowed, need_weights=nw)
        b, wb = mha(x, x, x, attn_mask=fl, need_weights=nw)
        torch.testing.assert_close(a, b)
    assert torch.all(wa[:, ~allowed] == 0)


def test_self_attention_layer_matches_reference():
    torch.manual_seed(2)
    layer = SelfAttentionLayer(8, 2, 16, dropout=0.1).eval()
    x = torch.randn(2, 5, 8)
    bias = correlation_bias(torch.eye(5) * 0.8 + torch.diag(torch.full((4,), 0.2), 1))
    a, _ = ref_mha(layer.attn, x, x, x, bias)
    y = ref_layer_norm(x.double() + a, layer.norm1)
    y = ref_layer_norm(y + ref_ffn(y, layer.ffn), layer.norm2)
    got, _ = layer(x, attn_mask=bias)
    torch.testing.assert_close(got.double(), y, atol=1e-5, rtol=1e-5)


def test_cross_attention_layer_matches_reference():
    torch.manual_seed(3)
    layer = CrossAttentionLayer(8, 4, 16, dropout=0.1).eval()
    x, mem = torch.randn(2, 3, 8), torch.randn(2, 6, 8)
    pos = sine_position_encoding(2, 3, 8)[None]
    a, w_ref = ref_mha(layer.attn, x, mem + pos, mem)
    y = ref_layer_norm(x.double() + a, layer.norm1)
    y = ref_layer_norm(y + ref_ffn(y, layer.ffn), layer.norm2)
    got, w = layer(x, mem, pos, need_weights=True)
    torch.testing.assert_close(got.double(), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)


def test_class_attention_pooling_matches_loop():
    torch.manual_seed(4)
    pool = ClassAttentionPooling(6)
    queries, mem = torch.randn(4, 6), torch.randn(2, 5, 6)
    pos = torch.randn(1, 5, 6)
    h, a = pool(queries, mem, pos)
    Wk, bk = pool.k_proj.weight.double(), pool.k_proj.bias.double()
    for b in range(2):
        for c in range(4):
            s = torch.stack([queries[c].double() @ (Wk @ (mem[b, n] + pos[0, n]).double() + bk)
                             for n in range(5)]) / math.sqrt(6)
            e = torch.exp(s - s.max())
            att = e / e.sum()
            torch.testing.assert_close(a[b, c].double(), att, atol=1e-6, rtol=1e-5)
            feat = sum(att[n] * mem[b, n].double() for n in range(5))
            torch.testing.assert_close(h[b, c].double(), feat, atol=1e-5, rtol=1e-5)


def test_per_class_linear_matches_loop():
    torch.manual_seed(5)
    lin = ClassWiseLinear(4, 3)  # CMSG's classifier
    h = torch.randn(2, 4, 3)
    with torch.no_grad():
        want = torch.tensor([[float(h[b, c] @ lin.weight[c] + lin.bias[c]) for c in range(4)]
                             for b in range(2)])
    torch.testing.assert_close(lin(h), want, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- correlation
def test_semantic_correlation_hand_computed():
    # cosines: (0,1)=(1,2)=1/sqrt(2), (0,2)=(2,3)=0, (0,3)=-1, (1,3)=-1/sqrt(2)
    E = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    A = semantic_correlation(E, tau=0.5, p=0.2)
    want = torch.tensor([[0.8, 0.2, 0.0, 0.0],
                         [0.1, 0.8, 0.1, 0.0],
                         [0.0, 0.2, 0.8, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])  # class 3 has no neighbour: self-loop 1
    torch.testing.assert_close(A, want)


def test_correlation_bias_modes():
    A = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    s = torch.randn(3, 3)
    m = correlation_bias(A, "mask")
    assert torch.equal(torch.isinf(m), A == 0) and torch.all(m[A > 0] == 0)
    # "weight": softmax(s + log A) = A exp(s) / sum_k A exp(s)
    got = (s + correlation_bias(A, "weight")).softmax(-1)
    e = A * torch.exp(s)
    torch.testing.assert_close(got, e / e.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        correlation_bias(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        correlation_bias(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def _block_graph():
    # two correlated groups {0, 1, 2} and {3, 4}; no edge between the groups
    A = torch.zeros(5, 5)
    A[:3, :3] = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.8, 0.0], [0.2, 0.0, 0.8]])
    A[3:, 3:] = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    return A


@pytest.mark.parametrize("mode", ["mask", "weight"])
def test_sga_uncorrelated_pairs_get_zero_attention(mode):
    torch.manual_seed(6)
    A = _block_graph()
    head = CMSG(16, 5, label_graph=A, hidden_dim=16, heads=2, layers=2,
                correlation_mode=mode).eval()
    bias = correlation_bias(head.correlation, mode)
    x = torch.randn(3, 5, 16)
    for layer in head.sga_layers:
        _, w = layer(x, attn_mask=bias, need_weights=True)
        assert torch.all(w[:, A == 0] == 0)  # exactly zero, not just small
        assert torch.all(w[:, A > 0] > 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))
    if mode == "weight":  # per head: softmax(s + log A) -> A-weighted attention
        layer = head.sga_layers[0]
        _, w_ref = ref_mha(layer.attn, x, x, x, bias)
        _, w = layer(x, attn_mask=bias, need_weights=True)
        torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)


def _run_sga(head, x):
    bias = correlation_bias(head.correlation, head.correlation_mode) \
        if head.use_correlation else None
    for layer in head.sga_layers:
        x, _ = layer(x, attn_mask=bias)
    return x


def test_perturbing_uncorrelated_class_leaves_others_unchanged():
    torch.manual_seed(7)
    head = CMSG(16, 5, label_graph=_block_graph(), hidden_dim=16, heads=2, layers=3).eval()
    x = torch.randn(2, 5, 16)
    x2 = x.clone()
    x2[:, 4] += 5 * torch.randn(2, 16)  # class 4 is in the other group than 0, 1, 2
    y, y2 = _run_sga(head, x), _run_sga(head, x2)
    torch.testing.assert_close(y[:, :3], y2[:, :3], atol=0, rtol=0)
    assert not torch.allclose(y[:, 3], y2[:, 3])  # a correlated class does change

    # without the correlation matrix every class sees every other
    torch.manual_seed(7)
    plain = CMSG(16, 5, label_graph=_block_graph(), hidden_dim=16, heads=2, layers=3,
                 correlation=False).eval()
    assert plain.correlation is None
    y, y2 = _run_sga(plain, x), _run_sga(plain, x2)
    assert not torch.allclose(y[:, 0], y2[:, 0])


def test_full_head_masked_class_query_leaves_others_logits():
    # a class's formation query only reaches uncorrelated classes through SGA, so with the
    # mask their logits ignore it; SAA and the classifier act per class.
    torch.manual_seed(8)
    emb = torch.randn(5, 10)
    head = CMSG(8, 5, label_embeddings=emb, label_graph=_block_graph(), hidden_dim=16,
                heads=2, layers=2).eval()
    f = Features(map=torch.randn(2, 8, 3, 4))
    out = head(f)
    with torch.no_grad():
        head.label_embeddings[4] += 3.0
    out2 = head(f)
    torch.testing.assert_close(out.logits[:, :3], out2.logits[:, :3], atol=0, rtol=0)
    assert not torch.allclose(out.logits[:, 3:], out2.logits[:, 3:])


# ----------------------------------------------------------------------------- the head
@pytest.mark.parametrize("variant", [{}, {"sga": False}, {"saa": False}, {"correlation": False}])
def test_head_shapes_and_attention(variant):
    torch.manual_seed(9)
    head = CMSG(32, 7, label_embeddings=torch.randn(7, 20), hidden_dim=16, heads=4,
                tau=0.0, **variant)
    out = head(Features(map=torch.randn(3, 32, 5, 6)))
    assert out.logits.shape == (3, 7)
    assert out.attention.shape == (3, 7, 5, 6)
    torch.testing.assert_close(out.attention.sum((2, 3)), torch.ones(3, 7))
    assert torch.all(out.attention >= 0)
    assert out.extras["class_features"].shape == (3, 7, 16)
    assert len(head.sga_layers) == (0 if variant.get("sga") is False else 1)
    assert len(head.saa_layers) == (0 if variant.get("saa") is False else 1)
    out.logits.sum().backward()
    dead = [n for n, p in head.named_parameters() if p.grad is None]
    assert not dead, dead


def test_attention_is_formation_map_saa_weights_in_extras_fast_path_agrees():
    torch.manual_seed(10)
    kw = dict(label_embeddings=torch.randn(4, 12), hidden_dim=16, heads=2, layers=2, tau=0.0)
    head = CMSG(8, 4, **kw).eval()
    fast = CMSG(8, 4, return_attention=False, **kw).eval()
    fast.load_state_dict(head.state_dict())
    f = Features(map=torch.randn(2, 8, 3, 3))
    out, out_fast = head(f), fast(f)
    assert out_fast.attention is None
    torch.testing.assert_close(out.logits, out_fast.logits, atol=1e-5, rtol=1e-5)
    # recompute the last SAA layer's weights from its input, head-averaged
    x = head.input_proj(f.map).flatten(2).transpose(1, 2)
    pos = sine_position_encoding(3, 3, 16)[None]
    hc, formation = head.formation(head.queries(), x, pos)
    # Output.attention: the class-specific formation map (one label-embedding query per class)
    torch.testing.assert_close(out.attention.flatten(2), formation)
    hc = _run_sga(head, hc)
    hc, _ = head.saa_layers[0](hc, x, pos)
    _, w_ref = ref_mha(head.saa_layers[1].attn, hc, x + pos, x)
    torch.testing.assert_close(out.extras["saa_attention"].flatten(2).double(), w_ref,
                               atol=1e-5, rtol=1e-4)


def test_learned_queries_without_embeddings():
    head = CMSG(8, 3, correlation=False, hidden_dim=8, heads=2)
    assert head.class_queries is not None and head.query_proj is None
    assert head(Features(map=torch.randn(1, 8, 2, 2))).logits.shape == (1, 3)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="label_embeddings or a label_graph"):
        CMSG(8, 3, hidden_dim=8, heads=2)
    with pytest.raises(ValueError, match="divisible by heads"):
        CMSG(8, 3, correlation=False, hidden_dim=12, heads=5)
    with pytest.raises(ValueError, match=r"label_embeddings must be \(3, E\)"):
        CMSG(8, 3, label_embeddings=torch.randn(4, 5), hidden_dim=8, heads=2)
    with pytest.raises(ValueError, match=r"label_graph must be \(3, 3\)"):
        CMSG(8, 3, label_graph=torch.eye(2), hidden_dim=8, heads=2)
    with pytest.raises(ValueError, match="no positive entry"):
        CMSG(8, 2, label_graph=torch.tensor([[1.0, 0.0], [0.0, 0.0]]), hidden_dim=8, heads=2)
    with pytest.raises(ValueError, match="correlation_mode"):
        CMSG(8, 3, correlation=False, hidden_dim=8, heads=2, correlation_mode="add")
    head = CMSG(8, 3, correlation=False, hidden_dim=8, heads=2)
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        head(Features(map=torch.randn(2, 8)))


def test_registered_and_built_by_create_model():
    from mlrkit import create_model
    from mlrkit.registry import METHODS

    assert METHODS.get("cmsg") is CMSG
    model = create_model("cmsg", backbone="cached", in_dim=24, num_classes=6,
                         label_embeddings=torch.randn(6, 10), hidden_dim=16, heads=2, layers=2,
                         tau=0.2, sga=True, saa=False)
    assert isinstance(model.head, CMSG) and len(model.head.saa_layers) == 0
    out = model(Features(map=torch.randn(2, 24, 4, 4)))
    assert out.logits.shape == (2, 6) and out.attention.shape == (2, 6, 4, 4)


# ----------------------------------------------------------------------------- training
def _mosaic_features(n: int, num_classes: int = 5, dim: int = 16, size: int = 6, seed: int = 0):
    """Feature maps with each present class's prototype placed at a random position."""
    protos = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    g = torch.Generator().manual_seed(seed)
    maps = 0.3 * torch.randn(n, dim, size, size, generator=g)
    y = (torch.rand(n, num_classes, generator=g) < 0.4).float()
    for i in range(n):
        for c in y[i].nonzero().flatten().tolist():
            r, q = torch.randint(0, size, (2,), generator=g).tolist()
            maps[i, :, r, q] += protos[c]
    return maps, y


@pytest.fixture
def one_thread():
    """Small-op training loops run faster single-threaded, and steadily on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("variant", [{}, {"sga": False}, {"saa": False}, {"correlation": False}])
def test_each_ablation_variant_learns(variant, one_thread):
    torch.manual_seed(11)
    maps, y = _mosaic_features(64)
    emb = torch.randn(5, 12)
    head = CMSG(16, 5, label_embeddings=emb, hidden_dim=32, heads=4, layers=1, tau=0.0,
                dropout=0.0, **variant)
    losses = train_losses(head, maps, y, 40, lr=3e-3)
    assert losses[-1] < 0.3 * losses[0], losses[::8]
    head.eval()
    with torch.no_grad():
        tm, ty = _mosaic_features(64, seed=1)
        acc = ((head(Features(map=tm)).logits > 0).float() == ty).float().mean().item()
    assert acc > 0.9, acc


# ----------------------------------------------------------------------------- real data, configs
def test_correlation_from_voc_glove_matches_numpy():
    path = DATA / "label_semantics" / "voc_glove300.pkl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}; set MLRKIT_DATA to the shared/data folder")
    from mlrkit.io import safe_load_pickle

    E = np.asarray(safe_load_pickle(path), dtype=np.float64)
    assert E.shape == (20, 300)
    tau, p = 0.3, 0.2
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    S = En @ En.T
    want = np.zeros((20, 20))
    for i in range(20):  # ML-GCN eqs. 7-8, row by row
        nb = [j for j in range(20) if j != i and S[i, j] >= tau]
        want[i, i] = 1 - p if nb else 1.0
        for j in nb:
            want[i, j] = p / len(nb)
    A = semantic_correlation(torch.as_tensor(E, dtype=torch.float32), tau=tau, p=p)
    np.testing.assert_allclose(A.numpy(), want, atol=1e-5)
    assert 0 < (want[~np.eye(20, dtype=bool)] > 0).mean() < 0.5  # a sparse, non-empty mask
    head = CMSG(8, 20, label_embeddings=torch.as_tensor(E, dtype=torch.float32), tau=tau,
                hidden_dim=8, heads=2)
    torch.testing.assert_close(head.correlation, torch.as_tensor(want, dtype=torch.float32))


def test_configs_parse_and_build_heads():
    from mlrkit.config import load_config

    paths = sorted((REPO / "configs").glob("cmsg*.yaml"))
    assert len(paths) >= 8, paths
    for path in paths:
        cfg = load_config(path)
        assert cfg.model.name == "cmsg"
        assert cfg.loss.name == "asl"
        assert cfg.loss.options == {"gamma_pos": 0, "gamma_neg": 4, "clip": 0.05}
        head = CMSG(8, 4, label_embeddings=torch.randn(4, 6), **{
            **cfg.model.options, "hidden_dim": 8, "heads": 2})
        assert head.num_classes == 4


def test_trains_through_engine_and_reloads(tmp_path, one_thread):
    """config -> engine training (cached frozen features, ASL) -> checkpoint -> same scores."""
    import yaml

    from conftest import make_color_images
    from mlrkit.config import load_config
    from mlrkit.engine.evaluation import evaluate_checkpoint
    from mlrkit.engine.trainer import train

    train_list = make_color_images(tmp_path / "imgs", 48, size=64)
    val_list = make_color_images(tmp_path / "val", 16, size=64, seed=1)
    names = str(tmp_path / "imgs" / "names.txt")
    base = yaml.safe_load((REPO / "configs" / "cmsg_mosaic_effl0.yaml").read_text())
    base.update({
        "output_dir": str(tmp_path / "runs"), "name": "cmsg",
        "data": {"train": {"name": "list", "labels_file": str(train_list), "names": names},
                 "val": {"name": "list", "labels_file": str(val_list), "names": names},
                 "image_size": 64, "batch_size": 16, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp_path / "cache")},
    })
    base["model"].update({"pretrained": False})
    base["model"]["options"].update({"hidden_dim": 32, "tau": 0.0})
    base["train"].update({"epochs": 2, "progress": False})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base))
    trainer = train(load_config(path))
    head = trainer.model.head
    assert isinstance(head, CMSG) and head.correlation.shape == (3, 3)
    assert head.label_embeddings.shape == (3, 50)  # glove50 vectors of red / green / blue
    run = tmp_path / "runs" / "cmsg"
    report, got_names = evaluate_checkpoint(run / "last.safetensors")
    assert got_names == ["red", "green", "blue"]
    assert report.to_dict()["mAP"] == pytest.approx(trainer.report.to_dict()["mAP"], abs=1e-4)
