"""SD-CSP and CoOp heads against the paper's equations written as explicit loops, P-ASL
against an independent reference, training from cached maps, and the paper configs.

CLIP towers are random (no weights on this machine): one ``clip_rn101`` is built for the
whole file and shared by the heads built here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO
from mlrkit import create_model, list_models
from mlrkit.config import load_config
from mlrkit.losses import create_loss
from mlrkit.methods import sdcsp as sdcsp_mod
from mlrkit.methods.coop import CoOp
from mlrkit.methods.sdcsp import SDCSP, semantic_attention_pool
from mlrkit.structures import Features

NAMES = ["dog", "traffic light", "potted plant"]
C = len(NAMES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    emb = torch.randn(C, 300)
    return create_model("sdcsp", backbone="clip_rn101", pretrained="none", num_classes=C,
                        label_embeddings=emb, class_names=NAMES, freeze_backbone=True)


@pytest.fixture(scope="module")
def bb(model):
    return model.backbone


def _head(bb, seed: int = 0, **kw) -> SDCSP:
    torch.manual_seed(seed)
    kw.setdefault("inter_dim", 6)
    kw.setdefault("n_ctx", 2)
    return SDCSP(bb.out_dim, C, torch.randn(C, 300), class_names=NAMES, backbone=bb, **kw)


def test_registered_and_built_from_the_factory(model) -> None:
    assert {"coop", "sdcsp"} <= set(list_models())
    assert model.backbone.out_dim == 2048 and model.backbone.output_dim == 512
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))  # a small image: 2 x 2 layer-4 map, pooled 1 x 1
        assert out.logits.shape == (2, C) and out.attention.shape == (2, C, 1, 1)
        out = model(Features(map=torch.randn(2, 2048, 7, 7)))  # a cached 448 px map
    assert out.logits.shape == (2, C) and torch.isfinite(out.logits).all()
    assert out.attention.shape == (2, C, 7, 7)
    torch.testing.assert_close(out.attention.sum(dim=(2, 3)), torch.ones(2, C))
    # the towers are not duplicated into the head's state
    assert not any(k.startswith("head.") and ".text." in k for k in model.state_dict())
    assert model.head.scorer.logit_scale.item() == pytest.approx(model.backbone.logit_scale)


def test_trainable_parameters_match_the_paper_count(bb) -> None:
    """Paper 4.2: 4.8 M trainable parameters for COCO (C = 80, M = 16, RN101, E = 512)."""
    names = [f"class {i}" for i in range(80)]
    head = SDCSP(2048, 80, torch.randn(80, 300), class_names=names, backbone=bb)
    n = sum(p.numel() for p in head.parameters())
    d = 1024
    assert n == 2048 * d + 300 * d + (d * d + d) + (d + 1) + (d * 512 + 512) + 80 * 16 * 512
    assert n == 4_635_137


def test_eq3_to_6_explicit(bb) -> None:
    head = _head(bb, seed=1)
    fmap = torch.randn(2, 2048, 2, 3)
    with torch.no_grad():
        fv, a = head.decouple(fmap)
        u, v, p, att, proj = head.u, head.v, head.p, head.att, head.proj
        for b in range(2):
            for c in range(C):
                x_c = head.embeddings[c]
                fused, scores = [], []
                for i in range(2):
                    for j in range(3):
                        z = torch.tanh((u.weight @ fmap[b, :, i, j]) * (v.weight @ x_c))
                        f_t = p.weight @ z + p.bias  # eq. 3
                        fused.append(f_t)
                        scores.append(float(att.weight[0] @ f_t + att.bias[0]))  # eq. 4
                ex = [math.exp(s - max(scores)) for s in scores]
                a_ref = [e / sum(ex) for e in ex]  # eq. 5
                f_v = sum(w * f for w, f in zip(a_ref, fused, strict=True))  # eq. 6
                torch.testing.assert_close(a[b, c].flatten(), torch.tensor(a_ref),
                                           rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(fv[b, c], proj.weight @ f_v + proj.bias,
                                           rtol=1e-4, atol=1e-5)


def test_eq7_to_9_explicit(bb) -> None:
    head = _head(bb, seed=2)
    text = bb.text
    ctx = head.scorer.prompts.ctx.detach()
    assert ctx.shape == (C, 2, text.width)  # one context per class (eq. 7)
    feats = []
    for c, name in enumerate(NAMES):
        ids = text.tokenize([f"X X {name}."])
        emb = text.embed(ids).detach().clone()
        emb[0, 1:3] = ctx[c]  # [SOS] [V]^1_c [V]^2_c name . [EOT]
        with torch.no_grad():
            feats.append(text.encode(emb, ids.argmax(-1))[0])  # eq. 8
    fmap = torch.randn(2, 2048, 2, 2)
    with torch.no_grad():
        out = head(Features(map=fmap))
        fv, _ = head.decouple(fmap)
    s = head.scorer.logit_scale.item()
    for b in range(2):
        for c in range(C):
            cos = float(fv[b, c] @ feats[c] / (fv[b, c].norm() * feats[c].norm()))
            assert out.logits[b, c].item() == pytest.approx(s * cos, rel=1e-4, abs=1e-4)  # eq. 9


def test_generic_prompt_is_shared(bb) -> None:
    head = _head(bb, class_specific=False)
    assert head.scorer.prompts.ctx.shape == (2, bb.text.width)


def test_fused_pool_gradients_and_blocks(monkeypatch) -> None:
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
            for s in [(2, 5, 4), (3, 4), (4,), (1,)]]
    for budget in (7, 45, 1 << 22):  # one pair, several pairs, everything per block
        monkeypatch.setattr(sdcsp_mod, "BLOCK_CPU", budget)
        assert torch.autograd.gradcheck(semantic_attention_pool, args)
        assert torch.autograd.gradcheck(lambda *x: semantic_attention_pool(*x)[1], args)
    uf, vx, w, s0 = (t.detach().float().requires_grad_() for t in args)
    monkeypatch.setattr(sdcsp_mod, "BLOCK_CPU", 45)
    a, zbar = semantic_attention_pool(uf, vx, w, s0)
    z = torch.tanh(uf[:, None] * vx[None, :, None])  # unblocked reference, plain autograd
    a_ref = torch.softmax(z @ w + s0, dim=-1)
    zbar_ref = (a_ref[..., None] * z).sum(2)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(zbar, zbar_ref)
    gz, ga = torch.randn_like(zbar), torch.randn_like(a)
    got = torch.autograd.grad((zbar * gz).sum() + (a * ga).sum(), (uf, vx, w))
    ref = torch.autograd.grad((zbar_ref * gz).sum() + (a_ref * ga).sum(), (uf, vx, w))
    for x, y in zip(got, ref, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_forward_and_backward(bb) -> None:
    """train.amp: auto runs the head under bfloat16 autocast on CPUs with AMX / AVX512-BF16:
    the decoupling's block stays float32 inside, the scores come back float32."""
    head = _head(bb, seed=8, inter_dim=16)
    fmap = torch.randn(2, 2048, 3, 3)
    with torch.no_grad():
        ref = head(Features(map=fmap)).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(Features(map=fmap))
    assert out.logits.dtype == torch.float32 and out.attention.dtype == torch.float32
    s = head.scorer.logit_scale.item()
    torch.testing.assert_close(out.logits / s, ref / s, rtol=0, atol=0.05)  # cosines
    out.logits.sum().backward()
    assert head.u.weight.grad is not None and torch.isfinite(head.u.weight.grad).all()


def _asl_reference(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SD-CSP eq. 10-11 read literally: gamma+ = 1, gamma- = 2, m = 0.05, focusing weights
    held constant in the gradient (as the ASL family's code), 1/N over the images."""
    p = torch.sigmoid(x)
    pm = (p - 0.05).clamp_min(0)
    terms = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            if t[n, c] == 1:
                terms[n, c] = (1 - p[n, c]).detach() * torch.log(p[n, c])
            elif t[n, c] == -1:
                terms[n, c] = pm[n, c].detach() ** 2 * torch.log(1 - pm[n, c])
    return -terms.sum() / x.shape[0]


def test_partial_asl_against_reference() -> None:
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(5, 7, generator=g, dtype=torch.float64)).requires_grad_()
    t = torch.randint(-1, 2, (5, 7), generator=g)
    t[0] = 0  # an image with no known label counts in N and adds nothing
    loss = create_loss("partial_asl")
    got = loss(x, t)
    (g_got,) = torch.autograd.grad(got, x)
    ref = _asl_reference(x, t)
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g_got, g_ref)
    assert bool((g_got[t == 0] == 0).all())  # unknown entries: no gradient
    y = x.detach().clone()
    y[t == 0] += 100 * torch.randn(int((t == 0).sum()), dtype=torch.float64, generator=g)
    assert loss(y, t).item() == pytest.approx(got.item(), rel=1e-12)  # nor any value
    assert create_loss("partial_asl", reduction="sum")(x, t).item() == pytest.approx(
        5 * got.item())


def test_trains_from_cached_maps(bb) -> None:
    """A tiny learnable task: class c present puts a fixed pattern at one position."""
    torch.manual_seed(5)
    head = _head(bb, seed=5, inter_dim=32)
    n = 24
    y = torch.rand(n, C) < 0.5
    pattern = 3 * torch.randn(C, 2048)
    fmap = 0.5 * torch.randn(n, 2048, 2, 2)
    for i in range(n):
        for c in range(C):
            if y[i, c]:
                fmap[i, :, c % 2, c // 2] += pattern[c]
    t = torch.where(y, 1, -1)
    t[torch.rand(n, C) < 0.3] = 0  # partial labels
    loss_fn = create_loss("partial_asl")
    opt = torch.optim.Adam([q for q in head.parameters() if q.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = loss_fn(head(Features(map=fmap)).logits, t)
        opt.zero_grad()
        loss.backward()
        if not losses:  # every trainable tensor takes part (DDP without unused parameters)
            assert all(q.grad is not None for q in head.parameters() if q.requires_grad)
            assert all(q.grad is None for q in bb.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_coop_scores_the_attention_pool(bb) -> None:
    torch.manual_seed(6)
    head = CoOp(bb.out_dim, C, class_names=NAMES, backbone=bb, n_ctx=3)
    assert head.scorer.prompts.ctx.shape == (3, bb.text.width)  # one generic context
    fmap = torch.randn(2, 2048, 7, 7)
    with torch.no_grad():
        g = bb.pool(fmap)
        out = head(Features(map=fmap))  # from a cached map: pooled is None
        out2 = head(Features(map=fmap, pooled=g))
        t = F.normalize(head.scorer.prompts(), dim=-1)
    torch.testing.assert_close(out.logits, out2.logits)
    ref = head.scorer.logit_scale * F.normalize(g, dim=-1) @ t.T
    torch.testing.assert_close(out.logits, ref, rtol=1e-4, atol=1e-4)
    assert out.attention is None
    csp = CoOp(bb.out_dim, C, class_names=NAMES, backbone=bb, n_ctx=3, class_specific=True)
    assert csp.scorer.prompts.ctx.shape == (C, 3, bb.text.width)


def test_text_features_reused_only_while_unchanged(bb) -> None:
    head = _head(bb, seed=7)
    with torch.no_grad():
        t1 = head.scorer.text_features()
        assert head.scorer.text_features() is t1  # no gradient, nothing changed: reused
    opt = torch.optim.SGD([head.scorer.prompts.ctx], lr=1.0)
    head.scorer.prompts.ctx.grad = torch.ones_like(head.scorer.prompts.ctx)
    opt.step()
    with torch.no_grad():
        t2 = head.scorer.text_features()
        assert not torch.allclose(t1, t2)
        torch.testing.assert_close(t2, F.normalize(head.scorer.prompts(), dim=-1))
    head.load_state_dict(_head(bb, seed=7).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(head.scorer.text_features(), t1)
    assert head.scorer.text_features().requires_grad  # with gradients on: recomputed


PAPER = ["sdcsp_coco14_rn101", "sdcsp_coco14_rn101_no_csp", "coop_coco14_rn101",
         "coop_coco14_rn101_csp", "sdcsp_voc07_rn101", "sdcsp_voc07_rn101_no_csp",
         "coop_voc07_rn101", "coop_voc07_rn101_csp"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_load_and_build(name: str, bb, data_dir: Path) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    m = cfg.model
    assert (m.backbone, m.pretrained, cfg.data.image_size) == ("clip_rn101", "openai", 448)
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size, cfg.train.epochs) == (
        "sgd", 0.002, 64, 100)
    assert cfg.sched.name == "cosine" and cfg.loss.name == "partial_asl"
    assert cfg.data.protocol.startswith("partial:") and cfg.data.protocol.endswith(":legacy")
    # checkpoints are chosen on a fold of the training split, never on the test split
    tr, va = cfg.data.train, cfg.data.val
    assert (tr["split"], tr["fold"], va["fold"]) == (va["split"], "train", "val")
    if "coco" in name:
        names = yaml.safe_load((data_dir / "coco128" / "config.yaml").read_text())["names"]
        names = [names[i] for i in range(80)]
    else:
        names = (data_dir / "voc2007" / "labels.txt").read_text().split()
    emb = None
    if m.label_embeddings:
        from mlrkit.semantics.embeddings import label_embeddings

        emb = label_embeddings(data_dir / "label_semantics" / Path(m.label_embeddings).name,
                               names)
    model = create_model(m.name, backbone=bb, num_classes=len(names), label_embeddings=emb,
                         class_names=names, **m.options)
    # Table 4: sdcsp = Ours, sdcsp _no_csp = CoOp w/ sd, coop = CoOp, coop _csp = CoOp w/ csp
    csp = not name.endswith("_no_csp") if m.name == "sdcsp" else name.endswith("_csp")
    assert model.head.scorer.prompts.class_specific == csp
    assert model.head.scorer.prompts.n_ctx == 16


def test_cpu_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "sdcsp_coco128_rn101.yaml")
    assert cfg.model.name == "sdcsp" and cfg.model.pretrained == "none" and cfg.data.cache
    assert cfg.model.label_embeddings.endswith("coco_glove300.pkl@sorted")
    assert cfg.data.protocol.startswith("partial:")
