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
