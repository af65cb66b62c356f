"""DLSA head: each equation against explicit loops, the ablation switches, training, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import train_losses
from mlrkit import create_model
from mlrkit.methods.dlsa import DLSA, SelfAttentionReasoning
from mlrkit.nn.decoupling import ClassWiseLinear, SemanticAlignmentAttention
from mlrkit.nn.gcn import GCN
from mlrkit.semantics import cooccurrence_graph
from mlrkit.structures import Features

C, E_DIM, D, H, W = 4, 6, 8, 3, 5
ROWS = {  # (lspl, sd, sar): the paper's five ablation rows (Table 2) and one extra
    "baseline": (False, False, False),
    "lspl": (True, False, False),
    "sd": (False, True, False),
    "lspl_sd": (True, True, False),
    "full": (True, True, True),
    "sd_sar": (False, True, True),  # not in the paper's table
}
PAPER = {"attn_scale": False, "attn_out_proj": False, "classifier": "mean_fc",
         "gcn_final_act": True}


def _semantics(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(C, E_DIM, generator=g)
    targets = torch.where(torch.rand(30, C, generator=g) < 0.5, 1, -1)
    return emb, cooccurrence_graph(targets)


def test_gcn_eq2_explicit() -> None:
    torch.manual_seed(0)
    emb, A = _semantics()
    gcn = GCN([E_DIM, 5, 7])
    W1, W2 = gcn.layers[0].weight, gcn.layers[1].weight
    out = gcn(emb, A)
    e1 = torch.zeros(C, 5)
    for i in range(C):
        for j in range(C):
            e1[i] += A[i, j] * (emb[j] @ W1)
    e1 = torch.where(e1 > 0, e1, 0.2 * e1)  # LeakyReLU(0.2)
    e2 = torch.zeros(C, 7)
    for i in range(C):
        for j in range(C):
            e2[i] += A[i, j] * (e1[j] @ W2)
    torch.testing.assert_close(out, e2)


@pytest.mark.parametrize("scale", [False, True])
def test_semantic_decoupling_eq3_explicit(scale: bool) -> None:
    torch.manual_seed(1)
    fmap = torch.randn(2, D, H, W)
    sem = torch.randn(C, D) * 0.5
    v, a = SemanticAlignmentAttention(D, scale=scale)(fmap, sem)
    assert v.shape == (2, C, D) and a.shape == (2, C, H, W)
    for b in range(2):
        for c in range(C):
            acc = torch.zeros(D)
            for y in range(H):
                for x in range(W):
                    s = sum(float(sem[c, k] * fmap[b, k, y, x]) for k in range(D))
                    att = 1 / (1 + math.exp(-s / (math.sqrt(D) if scale else 1.0)))
                    assert a[b, c, y, x].item() == pytest.approx(att, rel=1e-5)
                    acc += att * fmap[b, :, y, x]
            torch.testing.assert_close(v[b, c], acc / (H * W))


def test_self_attention_eq4_6_explicit() -> None:
    torch.manual_seed(2)
    heads, dk = 2, D // 2
    sar = SelfAttentionReasoning(D, heads=heads, ffn_dim=12).eval()
    v = torch.randn(3, C, D)
    with torch.no_grad():
        _check_sar(sar, v, heads, dk)


def _check_sar(sar: SelfAttentionReasoning, v: torch.Tensor, heads: int, dk: int) -> None:
    wq, wk, wv = sar.qkv.weight.split(D)
    bq, bk, bv = sar.qkv.bias.split(D)
    out = sar(v)
    for b in range(3):
        q, k, val = v[b] @ wq.T + bq, v[b] @ wk.T + bk, v[b] @ wv.T + bv
        head_out = []
        for h in range(heads):
            sl = slice(h * dk, (h + 1) * dk)
            scores = torch.tensor([[float(q[i, sl] @ k[j, sl]) / math.sqrt(dk) for j in range(C)]
                                   for i in range(C)])
            att = torch.exp(scores) / torch.exp(scores).sum(1, keepdim=True)
            head_out.append(att @ val[:, sl])
        mhsa = torch.cat(head_out, 1) @ sar.out.weight.T + sar.out.bias
        z = v[b] + mhsa  # residual
        ref = torch.relu(torch.relu(z @ sar.fc1.weight.T + sar.fc1.bias) @ sar.fc2.weight.T
                         + sar.fc2.bias)
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_classwise_classifier_eq7() -> None:
    clf = ClassWiseLinear(C, D)
    v = torch.randn(2, C, D)
    ref = torch.stack([torch.stack([v[b, c] @ clf.weight[c] + clf.bias[c] for c in range(C)])
                       for b in range(2)])
    torch.testing.assert_close(clf(v), ref)


def test_full_head_composes_the_equations() -> None:
    torch.manual_seed(3)
    emb, A = _semantics()
    head = DLSA(D, C, emb, A, d1=5, d2=D, heads=2).eval()
    fmap = torch.randn(2, D, H, W)
    out = head(Features(map=fmap))
    e2 = head.gcn(emb, A)
    v, a = SemanticAlignmentAttention(D)(fmap, e2)
    ref = head.classifier(head.reason(v))
    torch.testing.assert_close(out.logits, ref)
    torch.testing.assert_close(out.extras["attention_weights"], a)
    # the returned maps are the alignment scores before the sigmoid (no saturated ties)
    torch.testing.assert_close(out.attention, torch.einsum("cd,bdhw->bchw", e2, fmap))
    torch.testing.assert_close(torch.sigmoid(out.attention), a)
    assert out.logits.shape == (2, C) and out.attention.shape == (2, C, H, W)


def test_ablation_fallbacks() -> None:
    torch.manual_seed(4)
    emb, A = _semantics()
    fmap = torch.randn(2, D, H, W)
    g = fmap.mean(dim=(2, 3))
    base = DLSA(D, C, None, None, lspl=False, sd=False, sar=False, d2=D)
    out = base(Features(map=fmap))
    assert out.attention is None
    ref = g @ base.classifier.weight.T + base.classifier.bias  # plain per-class linear layer
    torch.testing.assert_close(out.logits, ref)
    lspl = DLSA(D, C, emb, A, lspl=True, sd=False, sar=False, d1=5, d2=D)
    e2 = lspl.gcn(emb, A)
    ref = torch.einsum("bd,cd,cd->bc", g, 1 + e2, lspl.classifier.weight) + lspl.classifier.bias
    torch.testing.assert_close(lspl(Features(map=fmap)).logits, ref)
    prod = DLSA(D, C, emb, A, lspl=True, sd=False, sar=False, d1=5, d2=D, modulation="product")
    e2 = prod.gcn(emb, A)
    ref = torch.einsum("bd,cd,cd->bc", g, e2, prod.classifier.weight) + prod.classifier.bias
    torch.testing.assert_close(prod(Features(map=fmap)).logits, ref)
    sd_only = DLSA(D, C, emb, None, lspl=False, sd=True, sar=False, d2=D)
    v, _ = SemanticAlignmentAttention(D)(fmap, sd_only.embed(emb))
    torch.testing.assert_close(sd_only(Features(map=fmap)).logits, sd_only.classifier(v))


@pytest.mark.parametrize("num_classes", [C, 20])  # fewer / more classes than positions
def test_projection_when_backbone_dim_differs(num_classes: int) -> None:
    torch.manual_seed(5)
    emb = torch.randn(num_classes, E_DIM)
    A = cooccurrence_graph(torch.where(torch.rand(30, num_classes) < 0.5, 1, -1))
    head = DLSA(10, num_classes, emb, A, d1=5, d2=D, heads=2)
    fmap = torch.randn(2, 10, H, W)
    out = head(Features(map=fmap))
    proj = F.conv2d(fmap, head.proj.weight[:, :, None, None], head.proj.bias)  # 1x1 conv first
    e2 = head.gcn(emb, A)
    v, a = SemanticAlignmentAttention(D)(proj, e2)
    torch.testing.assert_close(out.logits, head.classifier(head.reason(v)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.extras["attention_weights"], a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.attention, torch.einsum("cd,bdhw->bchw", e2, proj),
                               atol=1e-4, rtol=1e-4)
    no_sd = DLSA(10, num_classes, emb, A, sd=False, sar=False, d1=5, d2=D)
    g = proj_of(no_sd, fmap).mean(dim=(2, 3))
    ref = torch.einsum("bd,cd,cd->bc", g, 1 + no_sd.gcn(emb, A), no_sd.classifier.weight)
    torch.testing.assert_close(no_sd(Features(map=fmap)).logits, ref + no_sd.classifier.bias,
                               atol=1e-5, rtol=1e-4)


def proj_of(head: DLSA, fmap: torch.Tensor) -> torch.Tensor:
    return F.conv2d(fmap, head.proj.weight[:, :, None, None], head.proj.bias)


def _learnable_task(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps with class-specific patterns at random positions; labels = which are there."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(C, D, generator=g) * 4
    y = (torch.rand(n, C, generator=g) < 0.4).float()
    x = torch.randn(n, D, H, W, generator=g) * 0.3
    for c in range(C):
        pos = torch.randint(0, H * W, (n,), generator=g)
        x.view(n, D, -1)[torch.arange(n), :, pos] += y[:, c:c + 1] * patterns[c]
    return x, y


@pytest.mark.parametrize("row", list(ROWS))
def test_every_ablation_row_trains(row: str) -> None:
    torch.manual_seed(0)
    emb, _ = _semantics()
    x, y = _learnable_task()
    targets = torch.where(y > 0, 1, -1)
    lspl, sd, sar = ROWS[row]
    model = create_model("dlsa", backbone="cached", in_dim=D, num_classes=C,
                         label_embeddings=emb, label_graph=cooccurrence_graph(targets),
                         lspl=lspl, sd=sd, sar=sar, d1=16, d2=16, heads=4)
    losses = train_losses(model, x, y, 40, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], (row, losses[0], losses[-1])
    if lspl:
        assert model.head.gcn.layers[0].weight.grad is not None


def test_bad_inputs() -> None:
    emb, A = _semantics()
    with pytest.raises(ValueError, match=r"label_embeddings must have shape \(5, E\)"):
        DLSA(D, 5, emb, cooccurrence_graph(torch.ones(3, 5)), d2=D)
    with pytest.raises(ValueError, match=r"label_embeddings: expected shape \(5, E\)"):
        create_model("dlsa", backbone="cached", in_dim=D, num_classes=5, label_embeddings=emb)
    bad = A.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        DLSA(D, C, emb, bad, d2=D)
    zero = A.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match=r"all-zero row\(s\) \[2\]"):
        DLSA(D, C, emb, zero, d2=D)
    with pytest.raises(ValueError, match="needs label_graph"):
        DLSA(D, C, emb, None, d2=D)
    with pytest.raises(ValueError, match="needs label_embeddings"):
        DLSA(D, C, None, A, d2=D)
    with pytest.raises(ValueError, match="modulation must be"):
        DLSA(D, C, emb, A, d2=D, modulation="sum")
    with pytest.raises(ValueError, match="not divisible by heads"):
        DLSA(D, C, emb, A, d2=D, heads=3)
    DLSA(D, C, emb, None, lspl=False, sd=True, d2=D)  # SD alone needs no graph


def test_bf16_autocast_matches_float32_and_scores_stay_float32() -> None:
    # the CPU configs train under bfloat16 autocast: the head must agree with float32 to
    # bfloat16 precision, and its scores must not be rounded to bfloat16 (that ties images)
    torch.manual_seed(6)
    emb, A = _semantics()
    head = DLSA(10, C, emb, A, d1=16, d2=32, heads=4).eval()
    fmap = torch.randn(16, 10, H, W)
    ref = head(Features(map=fmap))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(Features(map=fmap))
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, ref.logits, atol=0.05, rtol=0.05)
    torch.testing.assert_close(out.attention.float(), ref.attention, atol=0.02, rtol=0.02)
    rounded = out.logits.bfloat16().float()
    assert (rounded != out.logits).float().mean() > 0.5  # not bfloat16 values


# ------------------------------------------------------------ the paper-literal forms
def test_gcn_eq2_sigma_after_both_layers() -> None:
    torch.manual_seed(0)
    emb, A = _semantics()
    gcn = GCN([E_DIM, 5, 7], final_act=True)
    W1, W2 = gcn.layers[0].weight, gcn.layers[1].weight
    e = emb
    for w in (W1, W2):  # E^{l+1} = sigma(M E^l W^l) for both layers, sigma = LeakyReLU(0.2)
        nxt = torch.zeros(C, w.shape[1])
        for i in range(C):
            for j in range(C):
                nxt[i] += A[i, j] * (e[j] @ w)
        e = torch.where(nxt > 0, nxt, 0.2 * nxt)
    torch.testing.assert_close(gcn(emb, A), e)


def test_self_attention_paper_form_eq4_6() -> None:
    """Eq. 4 without 1/sqrt(d_k), eq. 5-6 without an output projection, from the text."""
    torch.manual_seed(3)
    heads, dk = 2, D // 2
    sar = SelfAttentionReasoning(D, heads=heads, ffn_dim=12, scale=False,
                                 out_proj=False).eval()
    assert sar.out is None
    v = torch.randn(3, C, D)
    wq, wk, wv = sar.qkv.weight.split(D)
    bq, bk, bv = sar.qkv.bias.split(D)
    with torch.no_grad():
        out = sar(v)
        for b in range(3):
            rows = []
            for n in range(C):
                parts = []
                for h in range(heads):
                    sl = slice(h * dk, (h + 1) * dk)
                    qn = (wq[sl] @ v[b, n] + bq[sl])
                    logits = torch.stack([qn @ (wk[sl] @ v[b, o] + bk[sl]) for o in range(C)])
                    alpha = torch.exp(logits) / torch.exp(logits).sum()  # eq. 4
                    parts.append(sum(alpha[o] * (wv[sl] @ v[b, o] + bv[sl])
                                     for o in range(C)))  # eq. 5
                rows.append(torch.cat(parts) + v[b, n])  # eq. 6
            z = torch.stack(rows)
            ref = torch.relu(torch.relu(z @ sar.fc1.weight.T + sar.fc1.bias) @ sar.fc2.weight.T
                             + sar.fc2.bias)
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_mean_fc_classifier_eq7() -> None:
    torch.manual_seed(4)
    emb, A = _semantics()
    head = DLSA(D, C, emb, A, d1=5, d2=D, heads=2, **PAPER).eval()
    v = torch.randn(2, C, D)
    fc = head.classifier.fc
    ref = torch.stack([fc.weight @ (sum(v[b, c] for c in range(C)) / C) + fc.bias
                       for b in range(2)])
    torch.testing.assert_close(head.classifier(v), ref)
    x = torch.randn(2, D, H, W)
    assert head(Features(map=x)).logits.shape == (2, C)


def test_paper_configs_use_the_paper_forms() -> None:
    from conftest import REPO
    from mlrkit.config import compose_config
    for path in sorted((REPO / "configs").glob("dlsa_voc07_r101*.yaml")):
        cfg = compose_config(path)  # the keys it and its _base_ config set
        opts = cfg["model"]["options"]
        assert {k: opts[k] for k in PAPER} == PAPER, path.name
        if opts["lspl"]:
            assert cfg["model"]["label_graph"] == "conditional_normalized", path.name
        val = cfg["data"]["val"]  # the test split never picks the checkpoint
        assert val.get("fold") == "val" and val["split"] == "trainval", path.name
    rows = {tuple(compose_config(p)["model"]["options"][k]
                  for k in ("lspl", "sd", "sar"))
            for p in (REPO / "configs").glob("dlsa_voc07_r101*.yaml")}
    assert rows == set(ROWS.values())


def test_dlsa_graph_on_voc2007_has_every_cooccurring_pair(data_dir) -> None:
    """DLSA's M-hat keeps every co-occurring pair (ML-GCN's tau = 0.4 left 6 on VOC2007)."""
    import numpy as np

    from mlrkit.data import load_dataset
    from mlrkit.io import safe_load_pickle
    from mlrkit.semantics.graphs import label_graph

    ds = load_dataset("voc2007", root=data_dir / "voc2007", split="trainval",
                      difficult="negative")
    M = label_graph("conditional_normalized", ds.targets, list(ds.labels.names)).numpy()
    ref = safe_load_pickle(data_dir / "label_semantics" / "voc_adj.pkl")
    nums, adj = np.asarray(ref["nums"], float), np.asarray(ref["adj"], float)
    P = adj / np.maximum(nums[:, None], 1)  # eq. 1 from ML-GCN's published counts
    np.fill_diagonal(P, 1.0)
    d = P.sum(1)
    expect = P / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    np.testing.assert_allclose(M, expect, rtol=1e-5, atol=1e-7)
    off = ~np.eye(20, dtype=bool)
    assert int((M[off] > 0).sum()) == int((adj[off] > 0).sum()) > 150
    ml_gcn = label_graph("cooccurrence", ds.targets, list(ds.labels.names)).numpy()
    assert int((ml_gcn[off] > 0).sum()) < 20


def test_ffn_residual_is_z_plus_the_two_layers() -> None:
    torch.manual_seed(5)
    sar = SelfAttentionReasoning(D, heads=2, ffn_dim=12, ffn_residual=True).eval()
    v = torch.randn(3, C, D)
    with torch.no_grad():
        z = v + sar.attend(v)  # eq. 6
        ref = z + torch.relu(z @ sar.fc1.weight.T + sar.fc1.bias) @ sar.fc2.weight.T + sar.fc2.bias
        torch.testing.assert_close(sar(v), ref)
        sar.ffn_residual = False  # the paper's form: no residual, a ReLU after FC2
        assert (sar(v) >= 0).all() and not torch.allclose(sar(v), ref)


@pytest.mark.parametrize("proj", [False, True])
def test_normalized_sd_pool_is_the_attention_weighted_mean(proj: bool) -> None:
    torch.manual_seed(6)
    d_in = 11 if proj else D
    fmap = torch.randn(2, d_in, H, W)
    sem = torch.randn(C, D) * 0.5
    lin = torch.nn.Linear(d_in, D) if proj else None
    with torch.no_grad():
        v, a = SemanticAlignmentAttention(D, pool="normalized")(fmap, sem, lin)
        f = fmap.flatten(2).transpose(1, 2)  # (B, HW, d_in)
        if proj:
            f = lin(f)
        logits = torch.einsum("cd,bnd->bcn", sem, f)
        w = torch.sigmoid(logits)
        torch.testing.assert_close(a.flatten(2), w)
        ref = torch.einsum("bcn,bnd->bcd", w, f) / w.sum(-1, keepdim=True)
        torch.testing.assert_close(v, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        SemanticAlignmentAttention(D, pool="sum")


def test_center_semantics_aligns_with_the_class_centred_vectors() -> None:
    torch.manual_seed(7)
    emb, graph = _semantics()
    fmap = torch.randn(2, D, H, W)
    head = DLSA(D, C, emb, graph, d1=6, d2=D, sar=False, center_semantics=True).eval()
    with torch.no_grad():
        out = head(Features(map=fmap))
        s = head.semantics()
        sc = s - s.mean(0)
        ref_logits = torch.einsum("cd,bdhw->bchw", sc, fmap)
        torch.testing.assert_close(out.attention, ref_logits, atol=1e-5, rtol=1e-5)
        # at every position the class scores sum to zero: no cell is favoured by all classes
        torch.testing.assert_close(out.attention.sum(1), torch.zeros(2, H, W), atol=1e-4,
                                   rtol=0)
        head.center_semantics = False
        assert not torch.allclose(head(Features(map=fmap)).attention, ref_logits)
