"""ML-GCN and SSGRL heads against their papers' equations written as explicit loops."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import train_losses
from mlrkit import create_model
from mlrkit.methods.mlgcn import MLGCN
from mlrkit.methods.ssgrl import SSGRL
from mlrkit.nn.decoupling import LowRankBilinearAttention
from mlrkit.nn.ggnn import GatedGNN
from mlrkit.semantics import cooccurrence_graph, label_graph
from mlrkit.structures import Features

C, E_DIM, D, H, W = 4, 6, 8, 3, 3


def _semantics(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(C, E_DIM, generator=g)
    targets = torch.where(torch.rand(30, C, generator=g) < 0.5, 1, -1)
    return emb, cooccurrence_graph(targets), label_graph("conditional", targets)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_mlgcn_logits_explicit() -> None:
    torch.manual_seed(0)
    emb, A, _ = _semantics()
    head = MLGCN(D, C, emb, A, d1=5)
    fmap = torch.randn(2, D, H, W)
    with torch.no_grad():
        out = head(Features(map=fmap))
    W1, W2 = head.gcn.layers[0].weight.detach(), head.gcn.layers[1].weight.detach()
    h1 = A @ emb @ W1
    h1 = torch.where(h1 > 0, h1, 0.2 * h1)
    classifiers = A @ h1 @ W2  # (C, D)
    for b in range(2):
        x = torch.tensor([fmap[b, d].max().item() for d in range(D)])  # global max pooling
        for c in range(C):
            assert out.logits[b, c].item() == pytest.approx(float(classifiers[c] @ x), rel=1e-5)
    assert out.attention is None


def test_low_rank_bilinear_attention_eq1_3_explicit() -> None:
    """The collapsed f_a o P equals P then f_a applied per class and position."""
    torch.manual_seed(1)
    att = LowRankBilinearAttention(D, E_DIM, inter_dim=5)
    fmap = torch.randn(2, D, H, W)
    emb = torch.randn(C, E_DIM)
    with torch.no_grad():
        v, a = att(fmap, emb)
        for b in range(2):
            for c in range(C):
                scores = []
                for y in range(H):
                    for x in range(W):
                        f = fmap[b, :, y, x]
                        z = torch.tanh((att.u.weight @ f) * (att.v.weight @ emb[c]))  # eq. 1
                        fp = att.p.weight @ z + att.p.bias
                        scores.append(float(att.fa.weight[0] @ fp + att.fa.bias[0]))  # eq. 2
                ex = [math.exp(s - max(scores)) for s in scores]
                soft = [e / sum(ex) for e in ex]
                ref = sum(soft[y * W + x] * fmap[b, :, y, x] for y in range(H) for x in range(W))
                torch.testing.assert_close(a[b, c].flatten(), torch.tensor(soft))
                torch.testing.assert_close(v[b, c], ref)  # eq. 3


def test_ggnn_explicit() -> None:
    torch.manual_seed(2)
    _, _, P = _semantics()
    ggnn = GatedGNN(D, steps=2)
    h0 = torch.randn(1, C, D)
    Wz, Wr, Wh = ggnn.w.weight.split(D)
    bz, br, bh = ggnn.w.bias.split(D)
    Uz, Ur = ggnn.u_zr.weight.split(D)
    Uh = ggnn.u_h.weight
    with torch.no_grad():
        out = ggnn(h0, P)
        h = [h0[0, c].clone() for c in range(C)]
        for _ in range(2):
            new = []
            for c in range(C):
                a_in = sum(P[c, k] * h[k] for k in range(C))  # along the graph
                a_out = sum(P[k, c] * h[k] for k in range(C))  # against it
                a = torch.cat([a_in, a_out])
                z = torch.sigmoid(Wz @ a + bz + Uz @ h[c])
                r = torch.sigmoid(Wr @ a + br + Ur @ h[c])
                cand = torch.tanh(Wh @ a + bh + Uh @ (r * h[c]))
                new.append((1 - z) * h[c] + z * cand)
            h = new
    torch.testing.assert_close(out[0], torch.stack(h), atol=1e-6, rtol=1e-5)


def test_ssgrl_composes() -> None:
    torch.manual_seed(3)
    emb, _, P = _semantics()
    head = SSGRL(D, C, emb, P, inter_dim=5, steps=2)
    fmap = torch.randn(2, D, H, W)
    out = head(Features(map=fmap))
    f, a = head.decouple(fmap, emb)
    h = head.ggnn(f, P)
    o = torch.tanh(torch.cat([h, f], -1) @ head.fo.weight.T + head.fo.bias)
    ref = torch.stack([torch.stack([o[b, c] @ head.classifier.weight[c]
                                    + head.classifier.bias[c] for c in range(C)])
                       for b in range(2)])
    torch.testing.assert_close(out.logits, ref)
    assert out.attention.shape == (2, C, H, W)
    torch.testing.assert_close(out.attention.sum(dim=(2, 3)), torch.ones(2, C))


@pytest.mark.parametrize("method", ["mlgcn", "ssgrl"])
def test_training_reduces_loss(method: str) -> None:
    torch.manual_seed(0)
    emb, A, P = _semantics()
    g = torch.Generator().manual_seed(1)
    patterns = torch.randn(C, D, generator=g) * 4
    y = (torch.rand(48, C, generator=g) < 0.4).float()
    x = torch.randn(48, D, H, W, generator=g) * 0.3
    for c in range(C):
        pos = torch.randint(0, H * W, (48,), generator=g)
        x.view(48, D, -1)[torch.arange(48), :, pos] += y[:, c:c + 1] * patterns[c]
    opts = {"d1": 16} if method == "mlgcn" else {"inter_dim": 16, "steps": 2}
    model = create_model(method, backbone="cached", in_dim=D, num_classes=C,
                         label_embeddings=emb, label_graph=A if method == "mlgcn" else P, **opts)
    losses = train_losses(model, x, y, 40, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_bad_inputs() -> None:
    emb, A, _ = _semantics()
    for cls in (MLGCN, SSGRL):
        with pytest.raises(ValueError, match="needs label_embeddings"):
            cls(D, C, None, A)
        with pytest.raises(ValueError, match="needs label_graph"):
            cls(D, C, emb, None)
        with pytest.raises(ValueError, match=r"must have shape \(3, E\)"):
            cls(D, 3, emb, A[:3, :3])
    nan = A.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        MLGCN(D, C, emb, nan)
    with pytest.raises(ValueError, match="pooling must be"):
        MLGCN(D, C, emb, A, pooling="mean")


def test_ssgrl_proj_dim_is_a_1x1_convolution_before_decoupling():
    import torch

    from mlrkit import create_model
    from mlrkit.structures import Features

    torch.manual_seed(0)
    emb, graph = torch.randn(5, 7), torch.rand(5, 5)
    m = create_model("ssgrl", backbone="cached", in_dim=12, num_classes=5, label_embeddings=emb,
                     label_graph=graph, inter_dim=8, proj_dim=6)
    x = torch.randn(2, 12, 3, 4)
    out = m(Features(map=x))
    assert out.logits.shape == (2, 5) and out.attention.shape == (2, 5, 3, 4)
    # the head sees W x + b at every position: replace the map by its projection by hand
    w, b = m.head.proj.weight[:, :, 0, 0], m.head.proj.bias
    projected = torch.einsum("od,bdhw->bohw", w, x) + b[None, :, None, None]
    m.head.proj = None
    torch.testing.assert_close(m(Features(map=projected)).logits, out.logits)


# --- the blocked decoupling against the former (whole-tensor) forward ------------------------

def _former_ssgrl_forward(head: SSGRL, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSGRL head's forward as it was before the decoupling was computed in blocks, kept
    as the reference: the (B, C, HW, d) tanh tensor of eq. 1 formed whole, ``f_a o P`` as one
    vector (eq. 2), attention pooling (eq. 3), the GGNN (eq. 4-6) and the output (eq. 7-8)."""
    x = head.proj(fmap) if head.proj is not None else fmap
    dec, gg = head.decouple, head.ggnn
    b, _, h, w = x.shape
    uf = dec.u(x.flatten(2).transpose(1, 2))  # (B, HW, d)
    vx = dec.v(head.embeddings)  # (C, d)
    z = torch.tanh(uf[:, None, :, :] * vx[None, :, None, :])  # eq. 1, (B, C, HW, d)
    s = (z @ (dec.p.weight.T @ dec.fa.weight.T)).squeeze(-1) + dec.fa(dec.p.bias)
    a = torch.softmax(s, dim=-1)  # eq. 2
    f = torch.bmm(a, x.flatten(2).transpose(1, 2))  # eq. 3, (B, C, D)
    hid, d = f, gg.dim
    for _ in range(gg.steps):
        wa = gg.w(torch.cat([head.adj @ hid, head.adj.transpose(0, 1) @ hid], dim=-1))  # eq. 4
        zr = torch.sigmoid(wa[..., :2 * d] + gg.u_zr(hid))
        zg, r = zr[..., :d], zr[..., d:]
        cand = torch.tanh(wa[..., 2 * d:] + gg.u_h(r * hid))
        hid = (1 - zg) * hid + zg * cand  # eq. 5
    o = torch.tanh(head.fo(torch.cat([hid, f], dim=-1)))  # eq. 7
    logits = torch.einsum("bcd,cd->bc", o, head.classifier.weight) + head.classifier.bias
    return logits, a.view(b, -1, h, w)  # eq. 8


def _logits_attention_grads(head: SSGRL, fn, fmap: torch.Tensor, weights: torch.Tensor):
    head.zero_grad(set_to_none=True)
    x = fmap.clone().requires_grad_()
    logits, attn = fn(x)
    ((logits * weights).sum() + (attn * attn).sum()).backward()
    return logits.detach(), attn.detach(), x.grad, {n: p.grad for n, p in head.named_parameters()}


# budgets: whole images per block (3 of 4 images, so a short last block), runs of 3 classes
# of one image, and a single (image, class) pair per block
@pytest.mark.parametrize("block", [3 * 7 * 12 * 6, 3 * 12 * 6, 1])
@pytest.mark.parametrize("proj_dim", [None, 9])
def test_ssgrl_equals_former_forward(monkeypatch, block: int, proj_dim: int | None) -> None:
    from mlrkit.nn import decoupling

    monkeypatch.setattr(decoupling, "BILINEAR_BLOCK", block)
    g = torch.Generator().manual_seed(4)
    n_cls, dim = 7, 10
    emb = torch.randn(n_cls, E_DIM, generator=g)
    targets = torch.where(torch.rand(40, n_cls, generator=g) < 0.4, 1, -1)
    torch.manual_seed(4)
    head = SSGRL(dim, n_cls, emb, label_graph("conditional", targets), inter_dim=6, steps=2,
                 proj_dim=proj_dim)
    fmap = torch.randn(4, dim, 3, 4, generator=g).clamp_min(0)  # ReLU-like, 12 positions
    weights = torch.randn(4, n_cls, generator=g)
    new = _logits_attention_grads(
        head, lambda x: (lambda o: (o.logits, o.attention))(head(Features(map=x))), fmap, weights)
    old = _logits_attention_grads(head, lambda x: _former_ssgrl_forward(head, x), fmap, weights)
    torch.testing.assert_close(new[0], old[0])  # logits
    torch.testing.assert_close(new[1], old[1])  # attention maps
    torch.testing.assert_close(new[2], old[2])  # gradient of the input map
    assert new[3].keys() == old[3].keys()
    for name in old[3]:
        torch.testing.assert_close(new[3][name], old[3][name], msg=name)
    with torch.no_grad():  # inference takes the same path without saving anything
        torch.testing.assert_close(head(Features(map=fmap)).logits, old[0])


def test_tanh_bilinear_scores_gradcheck(monkeypatch) -> None:
    from mlrkit.nn import decoupling

    monkeypatch.setattr(decoupling, "BILINEAR_BLOCK", 2 * 3 * 4)  # runs of 2 classes
    g = torch.Generator().manual_seed(5)
    uf = torch.randn(2, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    vx = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_()
    fn = decoupling._TanhBilinearScores.apply
    assert torch.autograd.gradcheck(fn, (uf, vx, w))
    ref = (torch.tanh(uf[:, None] * vx[None, :, None]) * w).sum(-1)
    torch.testing.assert_close(fn(uf, vx, w), ref)
    # only some inputs needing a gradient
    vx2 = vx.detach()
    fn(uf, vx2, w.detach()).sum().backward()
    assert vx2.grad is None and uf.grad is not None


def test_ssgrl_bf16_autocast_close_to_float32() -> None:
    emb, _, P = _semantics()
    torch.manual_seed(6)
    head = SSGRL(D, C, emb, P, inter_dim=5, steps=2, proj_dim=6)
    fmap = torch.randn(2, D, H, W)
    ref = head(Features(map=fmap)).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(Features(map=fmap))
    assert out.logits.dtype == torch.float32  # the class-wise classifier runs in float32
    torch.testing.assert_close(out.logits, ref, atol=0.05, rtol=0.05)
    out.logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
