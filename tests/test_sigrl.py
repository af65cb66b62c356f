"""SigRL head: each equation against explicit loops, chunked == unchunked, scoring unseen
label sets, CLIP-shaped and non-CLIP inputs, the baselines, training with the ranking loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlrkit import create_model
from mlrkit.losses import create_loss
from mlrkit.methods import sigrl as sigrl_mod
from mlrkit.methods.sigrl import SigRL
from mlrkit.nn.gat import GATv2, GATv2Layer
from mlrkit.structures import Features

B, C, D, HH, WW = 2, 4, 6, 2, 3
P = HH * WW


def _lrelu(x: float, slope: float = 0.2) -> float:
    return x if x > 0 else slope * x


def _gat_layer_loop(layer: GATv2Layer, x: torch.Tensor,
                    adj: torch.Tensor | None = None) -> torch.Tensor:
    """GATv2 (Brody et al. eq. 7-8) node by node, neighbour by neighbour, head by head."""
    n = x.shape[0]
    k_heads, f = layer.heads, layer.head_dim
    ws = layer.lin_s.weight.view(k_heads, f, -1)
    wt = ws if layer.lin_t is None else layer.lin_t.weight.view(k_heads, f, -1)
    att = layer.att.weight
    heads = []
    for k in range(k_heads):
        a = att[0] if att.shape[0] == 1 else att[k]
        out_k = torch.zeros(n, f)
        for i in range(n):
            nbrs = [j for j in range(n) if adj is None or adj[i, j] != 0]
            e = []
            for j in nbrs:
                s = wt[k] @ x[i] + ws[k] @ x[j]
                e.append(sum(float(a[q]) * _lrelu(float(s[q])) for q in range(f)))
            z = sum(math.exp(v) for v in e)
            for j, v in zip(nbrs, e):
                out_k[i] += math.exp(v) / z * (ws[k] @ x[j])
        heads.append(out_k)
    return torch.cat(heads, 1) if layer.concat else torch.stack(heads).mean(0)


@pytest.mark.parametrize("concat,heads,share,shared_att", [
    (True, 2, True, True), (False, 3, False, False), (True, 1, False, True)])
def test_gatv2_layer_explicit(concat: bool, heads: int, share: bool, shared_att: bool) -> None:
    torch.manual_seed(0)
    n, fin, fout = 5, 4, 6
    layer = GATv2Layer(fin, fout, heads, concat=concat, share_weights=share,
                       shared_attention=shared_att).eval()
    x = torch.randn(n, fin)
    adj = (torch.rand(n, n) < 0.5).float()
    adj.fill_diagonal_(1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _gat_layer_loop(layer, x))
        torch.testing.assert_close(layer(x, adj), _gat_layer_loop(layer, x, adj))


def test_gatv2_two_layers_and_row_blocks() -> None:
    """SigRL's GAT: layer1 (heads concatenated), ELU, layer2 (one head); row blocks with
    recomputation give the same values and gradients."""
    torch.manual_seed(1)
    n = 7
    gat = GATv2(6, hidden=8, out_dim=6, heads=4, dropout=0.3).eval()
    x = torch.randn(n, 6, requires_grad=True)
    with torch.no_grad():
        ref = _gat_layer_loop(gat.layer2, F.elu(_gat_layer_loop(gat.layer1, x)))
    out = gat(x)
    torch.testing.assert_close(out, ref)
    assert gat.layer1.head_dim == 2 and gat.layer2.heads == 1
    g_full = torch.autograd.grad(out.square().sum(), [x, *gat.parameters()])
    for layer in (gat.layer1, gat.layer2):
        layer.block_elements = 2 * n * layer.heads * layer.head_dim  # 2 rows per block
    out_b = gat(x)
    torch.testing.assert_close(out_b, out)
    g_blk = torch.autograd.grad(out_b.square().sum(), [x, *gat.parameters()])
    for a, b in zip(g_full, g_blk):
        torch.testing.assert_close(a, b)


# -------------------------------------------------------------- SDA, relation, VFR loops
def _patch_attention_loop(u: torch.Tensor, q: torch.Tensor, fc: torch.nn.Linear
                          ) -> torch.Tensor:
    """a[p, c, d] = exp(z_pcd) / sum_p' exp(z_p'cd), z_pc = FC(tanh(u_p * q_c)) for one image."""
    p_n, c_n, d_n = u.shape[0], q.shape[0], u.shape[1]
    z = torch.zeros(p_n, c_n, d_n)
    for p in range(p_n):
        for c in range(c_n):
            z[p, c] = fc(torch.tanh(u[p] * q[c]))  # SigRL eq. 5 / 10
    a = torch.zeros_like(z)
    for c in range(c_n):
        for d in range(d_n):
            den = sum(math.exp(float(z[p, c, d])) for p in range(p_n))
            for p in range(p_n):
                a[p, c, d] = math.exp(float(z[p, c, d])) / den  # eq. 7 / 11
    return a


def _sda_loop(u: torch.Tensor, h: torch.Tensor, fc: torch.nn.Linear) -> torch.Tensor:
    out = torch.zeros(u.shape[0], h.shape[0], u.shape[2])
    for b in range(u.shape[0]):
        a = _patch_attention_loop(u[b], h, fc)
        for c in range(h.shape[0]):
            for p in range(u.shape[1]):
                out[b, c] += a[p, c] * u[b, p]  # eq. 6: m_c = sum_p a_pc * F_p
    return out


def _relation_loop(m: torch.Tensor, h: torch.Tensor, relation: str) -> torch.Tensor:
    bsz, c_n, d_n = m.shape
    t = torch.zeros_like(m)
    for b in range(bsz):
        if relation == "class":  # paper eq. 8-9
            q = torch.zeros(c_n, c_n)
            for i in range(c_n):
                for j in range(c_n):
                    cos = float(m[b, i] @ h[j]) / (float(m[b, i].norm()) * float(h[j].norm()))
                    q[i, j] = max(cos, 0.0)  # eq. 8
            for i in range(c_n):
                qn = q[i] / q[i].norm().clamp_min(1e-12)  # Norm(Q^i)
                for j in range(c_n):
                    t[b, i] += qn[j] * m[b, j]  # eq. 9
        else:  # the reference code, with its Frobenius scaling (cancelled by the row norm)
            r = torch.zeros(d_n, d_n)
            for d in range(d_n):
                for e in range(d_n):
                    r[d, e] = sum(float(m[b, c, d] * h[c, e]) for c in range(c_n))
            r = (r / (m.norm() * h.norm())).clamp_min(0)
            r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
            for c in range(c_n):
                for e in range(d_n):
                    t[b, c, e] = sum(float(m[b, c, d] * r[d, e]) for d in range(d_n))
    return t


def _vfr_loop(u: torch.Tensor, o: torch.Tensor, fc: torch.nn.Linear,
              mean: bool = False) -> torch.Tensor:
    out = torch.zeros_like(u)
    for b in range(u.shape[0]):
        a = _patch_attention_loop(u[b], o[b], fc)  # eq. 10-11
        for p in range(u.shape[1]):
            s = sum(a[p, c] for c in range(o.shape[1]))
            out[b, p] = u[b, p] * (s / o.shape[1] if mean else s)  # eq. 12 (sum over classes)
    return out


def _topk_mean_loop(x: list[float], k: int) -> float:
    return sum(sorted(x, reverse=True)[:k]) / k


def _inputs(seed: int = 0, c: int = C, d: int = D, bsz: int = B, pooled: bool = True
            ) -> tuple[Features, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fmap = torch.randn(bsz, d, HH, WW, generator=g)
    pool = torch.randn(bsz, d, generator=g) if pooled else None
    return Features(map=fmap, pooled=pool), torch.randn(c, d, generator=g)


def _head(emb: torch.Tensor, **kw) -> SigRL:
    torch.manual_seed(3)
    kw.setdefault("gat_hidden", 8)
    kw.setdefault("gat_heads", 2)
    return SigRL(kw.pop("in_dim", emb.shape[1]), emb.shape[0], emb, **kw).eval()


def test_sda_eq5_7_explicit() -> None:
    feats, emb = _inputs()
    head = _head(emb, class_chunk=0)
    u = feats.map.flatten(2).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(head.sda(u, emb), _sda_loop(u, emb, head.sda_fc))


@pytest.mark.parametrize("relation", ["channel", "class"])
def test_relation_eq8_9_explicit(relation: str) -> None:
    torch.manual_seed(4)
    _, emb = _inputs()
    head = _head(emb, relation=relation)
    m = torch.randn(B, C, D)
    with torch.no_grad():
        torch.testing.assert_close(head.relate(m, emb), _relation_loop(m, emb, relation))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_vfr_eq10_12_explicit(reduce: str) -> None:
    torch.manual_seed(5)
    feats, emb = _inputs()
    head = _head(emb, class_chunk=0, vfr_reduce=reduce)
    u = feats.map.flatten(2).transpose(1, 2)
    o = torch.randn(B, C, D)
    with torch.no_grad():
        torch.testing.assert_close(head.vfr(u, o), _vfr_loop(u, o, head.vfr_fc,
                                                             reduce == "mean"))


@pytest.mark.parametrize("score_norm,relation,topk", [("l2", "channel", 4), ("none", "class", 2),
                                                      ("l2", "class", 99)])
def test_full_forward_eq2_13_explicit(score_norm: str, relation: str, topk: int) -> None:
    feats, emb = _inputs(6)
    head = _head(emb, score_norm=score_norm, relation=relation, topk=topk, class_chunk=0)
    with torch.no_grad():
        out = head(feats)
        hg = _gat_layer_loop(head.gat.layer2, F.elu(_gat_layer_loop(head.gat.layer1, emb)))
        u = feats.map.flatten(2).transpose(1, 2)
        m = _sda_loop(u, emb, head.sda_fc)
        t = _relation_loop(m, emb, relation)
        o = torch.cat([t, hg.expand(B, -1, -1)], -1) @ head.vfr_in.weight.T
        mh = _vfr_loop(u, o, head.vfr_fc)
        k = min(topk, P)
        glob, loc = torch.zeros(B, C), torch.zeros(B, C)
        for b in range(B):
            for c in range(C):
                glob[b, c] = float(emb[c] @ feats.pooled[b])  # <h_i, F_class>
                loc[b, c] = _topk_mean_loop([float(emb[c] @ mh[b, p]) for p in range(P)], k)
                assert out.attention[b, c].flatten().tolist() == pytest.approx(
                    [float(emb[c] @ mh[b, p]) for p in range(P)], rel=1e-4, abs=1e-5)
        if score_norm == "l2":  # the reference code: each L2-normalized over classes, averaged
            ref = (glob / glob.norm(dim=1, keepdim=True) + loc / loc.norm(dim=1, keepdim=True)) / 2
        else:  # SigRL eq. 13 as printed
            ref = glob + loc
    torch.testing.assert_close(out.logits, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.extras["local_scores"], loc, rtol=1e-4, atol=1e-5)
    assert out.extras["global_feature"] is feats.pooled


def test_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values and gradients (parameters, map, pooled, label embeddings) match for every
    chunking: none, 3 classes per chunk, one class per chunk, and the automatic budget."""
    feats, emb = _inputs(7, c=7)
    head = _head(emb, class_chunk=0).train()
    head.gat.dropout = 0.0
    for layer in (head.gat.layer1, head.gat.layer2):
        layer.dropout = 0.0
    fmap = feats.map.clone().requires_grad_()
    pooled = feats.pooled.clone().requires_grad_()
    lab = emb.clone().requires_grad_()

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = head(Features(map=fmap, pooled=pooled), label_embeddings=lab)
        loss = (out.logits * torch.linspace(-1, 1, 7)).sum() + out.attention.square().mean()
        return out.logits.detach(), torch.autograd.grad(loss, [fmap, pooled, lab,
                                                                *head.parameters()])

    ref, gref = run()
    monkeypatch.setattr(sigrl_mod, "SIGRL_BLOCK", B * P * D * 2)  # auto: 2 classes per chunk
    for chunk in (3, 1, None):
        head.class_chunk = chunk
        got, g = run()
        torch.testing.assert_close(got, ref)
        for a, b in zip(g, gref):
            torch.testing.assert_close(a, b)


def test_scores_an_unseen_label_set() -> None:
    """Handing C' embeddings in equals a head built on those embeddings with the same
    weights, for C' smaller and larger than the training C; the stored set is unchanged."""
    feats, emb = _inputs(8)
    head = _head(emb)
    for c_new in (2, 9):
        new = torch.randn(c_new, D, generator=torch.Generator().manual_seed(c_new))
        other = _head(new)
        state = {k: v for k, v in head.state_dict().items() if k != "embeddings"}
        other.load_state_dict(state, strict=False)
        with torch.no_grad():
            got = head(feats, label_embeddings=new)
            torch.testing.assert_close(got.logits, other(feats).logits)
        assert got.logits.shape == (B, c_new) and got.attention.shape == (B, c_new, HH, WW)
    assert head(feats).logits.shape == (B, C)
    # a subset of the training labels scored alone: the global scores are the same columns
    sub = head(feats, label_embeddings=emb[[2, 0]])
    torch.testing.assert_close(sub.extras["global_scores"],
                               head(feats).extras["global_scores"][:, [2, 0]])


def test_clip_vit_b16_shaped_input() -> None:
    """(a) CLIP ViT-B/16 at 224: 512-d projected patch tokens 14 x 14, class token, 512-d
    text embeddings: no projection, the defaults of the paper (k = 16, 4 x 32 GAT heads)."""
    g = torch.Generator().manual_seed(9)
    emb = torch.randn(12, 512, generator=g)
    model = create_model("sigrl", backbone="cached", in_dim=512, label_embeddings=emb)
    head = model.head
    assert head.visual_proj is None and head.label_proj is None
    assert head.topk == 16 and head.gat.layer1.heads == 4 and head.gat.layer1.head_dim == 32
    assert head.gat.layer2.heads == 1 and head.gat.dropout == 0.3
    feats = Features(map=torch.randn(2, 512, 14, 14, generator=g),
                     pooled=torch.randn(2, 512, generator=g).requires_grad_())
    out = model(feats)
    assert out.logits.shape == (2, 12) and out.attention.shape == (2, 12, 14, 14)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    assert out.extras["global_feature"] is feats.pooled  # F_class of eq. 13 and 16
    teacher = torch.randn(2, 512, generator=g)
    loss = (create_loss("ranking")(out.logits, torch.tensor([[1] * 3 + [-1] * 9] * 2))
            + create_loss("l1_distill")(out.extras["global_feature"], teacher))
    loss.backward()
    assert feats.pooled.grad is not None and head.sda_fc.weight.grad is not None
    unseen = model.head(feats, label_embeddings=torch.randn(5, 512, generator=g))
    assert unseen.logits.shape == (2, 5)


def test_non_clip_pair_is_projected() -> None:
    """(b) 1280-d CNN maps (no pooled vector) with 300-d label embeddings."""
    g = torch.Generator().manual_seed(10)
    emb = torch.randn(6, 300, generator=g)
    fmap = torch.randn(2, 1280, 4, 4, generator=g)
    head = create_model("sigrl", backbone="cached", in_dim=1280, label_embeddings=emb,
                        gat_hidden=16).head
    assert head.joint_dim == 300 and head.label_proj is None
    assert head.visual_proj.in_features == 1280
    out = head(Features(map=fmap))
    assert out.logits.shape == (2, 6) and out.attention.shape == (2, 6, 4, 4)
    # the global feature is the projected spatial mean
    torch.testing.assert_close(out.extras["global_feature"],
                               head.visual_proj(fmap.mean(dim=(2, 3))))
    head2 = create_model("sigrl", backbone="cached", in_dim=1280, label_embeddings=emb,
                         joint_dim=64, gat_hidden=16, variant="full").head
    assert head2.visual_proj.out_features == 64 and head2.label_proj.in_features == 300
    out2 = head2(Features(map=fmap), label_embeddings=torch.randn(3, 300, generator=g))
    assert out2.logits.shape == (2, 3) and out2.extras["global_feature"].shape == (2, 64)
    with pytest.raises(ValueError, match="project_visual=false"):
        SigRL(1280, 6, emb, project_visual=False)
    with pytest.raises(ValueError, match=r"label_embeddings must have shape \(C, 300\)"):
        head(Features(map=fmap), label_embeddings=torch.randn(3, 50))


def test_baseline_variants_explicit() -> None:
    feats, emb = _inputs(11)
    mkt = _head(emb, variant="mkt", topk=3, score_norm="none")
    proj = _head(emb, variant="projection")
    assert not hasattr(mkt, "gat") and not hasattr(proj, "sda_fc")
    with torch.no_grad():
        out_m, out_p = mkt(feats), proj(feats)
    u = feats.map.flatten(2).transpose(1, 2)
    for b in range(B):
        for c in range(C):
            glob = float(emb[c] @ feats.pooled[b])
            loc = _topk_mean_loop([float(emb[c] @ u[b, p]) for p in range(P)], 3)
            assert out_m.logits[b, c].item() == pytest.approx(glob + loc, rel=1e-5, abs=1e-6)
    glob = feats.pooled @ emb.T
    torch.testing.assert_close(out_p.logits, glob / glob.norm(dim=1, keepdim=True))
    assert out_p.attention is None


def test_ranking_and_l1_losses_match_the_reference() -> None:
    """mlrkit's ``ranking`` is SigRL eq. 15 as the BiAM / MKT / SigRL code computes it (per
    image: hinge sum over known positive x known negative pairs / number of violating
    pairs; mean over the images); ``l1_distill`` is eq. 16 (mean absolute error)."""
    g = torch.Generator().manual_seed(12)
    s = torch.randn(4, 6, generator=g) * 0.7
    t = torch.tensor([[1, -1, 0, -1, 1, -1], [0, 0, 1, -1, -1, 0],
                      [1, 1, 1, 1, 1, 1], [-1, 1, 0, 0, -1, -1]])
    per = []
    for b in range(4):
        pos = [i for i in range(6) if t[b, i] == 1]
        neg = [i for i in range(6) if t[b, i] == -1]
        hinge = [max(0.0, 1 + float(s[b, n]) - float(s[b, p])) for p in pos for n in neg]
        viol = sum(v > 0 for v in hinge)
        per.append(sum(hinge) / viol if viol else 0.0)
    assert create_loss("ranking")(s, t).item() == pytest.approx(sum(per) / 4, rel=1e-6)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert create_loss("l1_distill")(a, b).item() == pytest.approx(F.l1_loss(a, b).item())


def test_ranking_loss_falls_on_a_learnable_task() -> None:
    """Patches carry the embedding of each present label at a random place; 40 Adam steps of
    the ranking loss (full batch) lower it by more than half and rank positives first."""
    g = torch.Generator().manual_seed(13)
    n, c, d = 24, 5, 16
    emb = torch.randn(c, d, generator=g)
    y = torch.where(torch.rand(n, c, generator=g) < 0.4, 1, -1)
    y[torch.arange(n), torch.randint(0, c, (n,), generator=g)] = 1
    fmap = 0.3 * torch.randn(n, d, 3, 3, generator=g)
    for i in range(n):
        for j in torch.nonzero(y[i] == 1).flatten().tolist():
            p = int(torch.randint(0, 9, (1,), generator=g))
            fmap[i, :, p // 3, p % 3] += emb[j]
    torch.manual_seed(0)
    head = SigRL(d, c, emb, topk=2, gat_hidden=8, gat_heads=2, joint_dim=d,
                 project_labels=True).train()  # a learned label map: scores can move freely
    loss_fn = create_loss("ranking")
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = loss_fn(head(Features(map=fmap)).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    with torch.no_grad():
        s = head.eval()(Features(map=fmap)).logits
    worst_pos = torch.where(y == 1, s, torch.inf).min(1).values
    best_neg = torch.where(y == -1, s, -torch.inf).max(1).values
    assert (worst_pos > best_neg).float().mean() > 0.8


def test_bf16_autocast_runs() -> None:
    feats, emb = _inputs(14, d=8)
    head = _head(emb, class_chunk=2)
    with torch.no_grad():
        ref = head(feats).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = head(feats).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.02)


def test_bad_options_and_inputs() -> None:
    _, emb = _inputs()
    for kw, msg in [({"variant": "x"}, "variant"), ({"score_norm": "l1"}, "score_norm"),
                    ({"relation": "x"}, "relation"), ({"topk": 0}, "topk"),
                    ({"class_chunk": -1}, "class_chunk"), ({"vfr_reduce": "max"}, "vfr_reduce"),
                    ({"topk": "3"}, "topk"), ({"joint_dim": 0}, "joint_dim"),
                    ({"label_graph": torch.eye(C)}, "label_graph")]:
        with pytest.raises(ValueError, match=msg):
            SigRL(D, C, emb, **kw)
    with pytest.raises(ValueError, match="needs label_embeddings"):
        SigRL(D, C, None)
    head = _head(emb)
    with pytest.raises(ValueError, match="features.map"):
        head(Features(map=torch.randn(B, D + 1, 2, 2)))
    with pytest.raises(ValueError, match="features.pooled"):
        head(Features(map=torch.randn(B, D, 2, 2), pooled=torch.randn(B, D + 1)))
    with pytest.raises(ValueError, match="NaN"):
        head(Features(map=torch.randn(B, D, 2, 2)),
             label_embeddings=torch.full((2, D), float("nan")))


def test_predict_scores_label_names_given_at_predict_time(tmp_path, capsys):
    """Train SigRL on 3 colour names, then score names it never saw (--labels)."""
    import json

    import yaml

    from conftest import make_color_images
    from mlrkit import cli

    tr = make_color_images(tmp_path / "imgs", 16, size=32)
    names = str(tmp_path / "imgs" / "names.txt")
    cfg = {"name": "sigrl", "seed": 0, "output_dir": str(tmp_path / "runs"),
           "model": {"name": "sigrl", "backbone": "efficientnet_lite0", "pretrained": True,
                     "freeze_backbone": True, "label_embeddings": "glove50",
                     "options": {"topk": 1, "gat_hidden": 8, "class_chunk": 0}},
           "data": {"train": {"name": "list", "labels_file": str(tr), "names": names},
                    "val": {"name": "list", "labels_file": str(tr), "names": names},
                    "image_size": 32, "batch_size": 8, "num_workers": 0, "cache": True,
                    "cache_dir": str(tmp_path / "cache")},
           "loss": {"name": "ranking"}, "optim": {"name": "adam", "lr": 1e-3},
           "train": {"epochs": 1, "progress": False, "amp": "none"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", "--config", str(tmp_path / "cfg.yaml"), "--no-report"]) == 0
    capsys.readouterr()
    img = str(tmp_path / "imgs" / "img0000.png")
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "runs" / "sigrl"), "--json",
                     "--labels", "red,yellow,purple,blue", img]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res["scores"]) == ["red", "yellow", "purple", "blue"]
    # without --labels the trained label set is scored
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "runs" / "sigrl"), "--json",
                     img]) == 0
    seen = json.loads(capsys.readouterr().out)["scores"]
    assert set(seen) == {"red", "green", "blue"}


def test_fixed_label_heads_refuse_label_embeddings():
    from mlrkit import create_model
    from mlrkit.structures import Features

    m = create_model("baseline", backbone="cached", in_dim=8, num_classes=3)
    assert not m.open_vocabulary
    with pytest.raises(ValueError, match="fixed label set"):
        m(Features(map=torch.randn(1, 8, 2, 2)), label_embeddings=torch.randn(4, 5))
