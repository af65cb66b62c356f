"""Single-positive multi-label learning (SPML): the reference sampling protocol, the
reference-style log floor of the single-positive losses, EM-APL across --resume, and the
SPML test metrics (mAP, per-image P@k / R@k means, F1 of the means)."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlrkit.config import Config, ConfigError, load_config
from mlrkit.data import load_dataset
from mlrkit.data.base import MultiLabelDataset
from mlrkit.data.protocols import single_positive_cole
from mlrkit.labels import LabelSpace
from mlrkit.losses import SPL_REFERENCE_LOG_EPS, create_loss
from mlrkit.metrics import spml_metrics

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
VOC = DATA / "voc2007"
COCO = DATA / "coco2014" / "coco_train_full.txt"
needs_voc = pytest.mark.skipif(not (VOC / "ImageSets" / "Main").is_dir(),
                               reason=f"VOC2007 split files not found under {VOC}")
needs_coco = pytest.mark.skipif(not COCO.is_file(), reason=f"{COCO} not found")

# SHA-256 (int8, dataset row order) of the observed labels that the reference script
# elijahcole/single-positive-multi-label preproc/generate_observed_labels.py (defaults: seed
# 1200, one positive, no negative) wrote when it was run once, outside this repository, on the
# formatted label matrices of these files (rows sorted as its format_pascal.py /
# format_coco.py sort them), mapped back to the datasets' row order.
REFERENCE_SHA256 = {
    "voc2007_trainval": "0cc2491582d14ec9",
    "coco2014_train": "d52a2fbf0ef7af26",
}


# ------------------------------------------------------------------------------ protocol
def _fisher_yates(items: list[int], rng: np.random.RandomState) -> list[int]:
    """Durstenfeld's in-place shuffle, drawing each swap position with ``rng.randint``."""
    a = list(items)
    for i in range(len(a) - 1, 0, -1):
        j = rng.randint(0, i + 1)
        a[i], a[j] = a[j], a[i]
    return a


def _reference_single_positive(full: np.ndarray, keys: list[str], seed: int) -> np.ndarray:
    """The reference sampling, written from its description: rows in sorted-key order, one
    generator for the split; per row shuffle the positive classes and keep the first, then
    shuffle the non-positive classes (no negative is kept)."""
    rng = np.random.RandomState(seed)
    obs = np.zeros(full.shape, dtype=np.int8)
    for r in sorted(range(len(keys)), key=lambda i: keys[i]):
        positives = [c for c in range(full.shape[1]) if full[r, c] == 1]
        if not positives:
            continue  # the reference's formatted splits hold no such image
        others = [c for c in range(full.shape[1]) if full[r, c] != 1]
        obs[r, _fisher_yates(positives, rng)[0]] = 1
        _fisher_yates(others, rng)
    return obs


def _check_invariants(full: torch.Tensor, obs: torch.Tensor) -> None:
    has = (full == 1).any(1)
    assert torch.equal((obs == 1).sum(1), has.long())  # one positive per image with one
    assert bool((full[obs == 1] == 1).all())  # and it is a true positive
    assert not bool((obs == -1).any())  # nothing is observed negative
    assert not bool(obs[~has].any())


@needs_voc
def test_cole_protocol_on_voc2007_trainval():
    voc = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="ignore")
    prot = single_positive_cole(voc)
    assert prot.meta["params"] == {"order": "name"} and prot.meta["seed"] == 1200
    full = voc.targets.numpy()
    mine = _reference_single_positive(full, [f"{i}.jpg" for i in voc.ids], 1200)
    np.testing.assert_array_equal(prot.targets.numpy(), mine)
    _check_invariants(voc.targets, prot.targets)
    assert prot.sha256.startswith(REFERENCE_SHA256["voc2007_trainval"])
    # the reference reads difficult as negative: the draw does not depend on that policy
    neg = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="negative")
    assert torch.equal(single_positive_cole(neg).targets, prot.targets)
    # a different seed gives a different draw (but the same invariants)
    other = single_positive_cole(voc, seed=1201)
    assert not torch.equal(other.targets, prot.targets)
    _check_invariants(voc.targets, other.targets)


@needs_coco
def test_cole_protocol_on_coco2014_train():
    coco = load_dataset("list", labels_file=str(COCO), num_classes=80)
    prot = single_positive_cole(coco)
    assert prot.meta["params"] == {"order": "coco_id"}
    assert prot.sha256.startswith(REFERENCE_SHA256["coco2014_train"])
    _check_invariants(coco.targets, prot.targets)
    # the first 2000 rows on their own, against the loop (keys: str of the integer image id)
    n = 2000
    ids = list(coco.ids[:n])
    head = single_positive_cole(coco.targets[:n], ids=ids)
    keys = [str(int(i.rsplit("_", 1)[1])) for i in ids]
    assert sorted(keys) != keys and sorted(keys, key=int) != sorted(keys)  # order matters
    mine = _reference_single_positive(coco.targets[:n].numpy(), keys, 1200)
    np.testing.assert_array_equal(head.targets.numpy(), mine)
    # visiting the rows in file order instead draws differently
    given = single_positive_cole(coco.targets[:n], ids=ids, order="given")
    assert not torch.equal(given.targets, head.targets)


def test_cole_protocol_rows_without_positives_and_row_order():
    rng = np.random.default_rng(0)
    full = np.where(rng.random((60, 7)) < 0.35, 1, -1).astype(np.int8)
    full[[3, 17, 40]] = -1  # images without a positive
    ids = [f"2008_{i:06d}" for i in rng.permutation(60)]
    t = torch.from_numpy(full)
    prot = single_positive_cole(t, ids=ids)
    keep = (full == 1).any(1)
    assert prot.meta["num_without_positive"] == int((~keep).sum()) >= 3
    assert prot.meta["params"]["order"] == "name"
    _check_invariants(t, prot.targets)
    np.testing.assert_array_equal(prot.targets.numpy(),
                                  _reference_single_positive(full, [i + ".jpg" for i in ids],
                                                             1200))
    # rows without a positive draw nothing: dropping them leaves every other pick unchanged
    sub = single_positive_cole(t[torch.from_numpy(keep)],
                               ids=[i for i, k in zip(ids, keep, strict=True) if k])
    assert torch.equal(sub.targets, prot.targets[torch.from_numpy(keep)])
    # the result follows the ids, not the rows' positions
    perm = rng.permutation(60)
    shuffled = single_positive_cole(t[perm], ids=[ids[i] for i in perm])
    assert torch.equal(shuffled.targets, prot.targets[perm])
    # without ids the rows are visited as given
    assert torch.equal(single_positive_cole(t).targets,
                       torch.from_numpy(_reference_single_positive(
                           full, [f"{i:03d}" for i in range(60)], 1200)))
    with pytest.raises(ValueError, match="order='coco_id' but id"):
        single_positive_cole(t, ids=ids, order="coco_id")
    with pytest.raises(ValueError, match="needs the image ids"):
        single_positive_cole(t, order="name")
    with pytest.raises(ValueError, match="order="):
        single_positive_cole(t, ids=ids, order="random")


def test_cole_protocol_config_specs():
    from mlrkit.engine.builders import apply_protocol

    rng = np.random.default_rng(1)
    t = torch.from_numpy(np.where(rng.random((40, 5)) < 0.4, 1, -1).astype(np.int8))
    ids = [f"{i:012d}" for i in rng.permutation(10**6)[:40]]  # COCO-2017-style stems
    ds = MultiLabelDataset(None, t, LabelSpace(tuple("abcde")), ids=ids)

    def run(spec: str) -> torch.Tensor:
        cfg = Config(seed=7)  # the run's seed plays no part
        cfg.data.protocol = spec
        out = apply_protocol(cfg, ds)
        assert out.info["protocol"]["name"] == "single_positive_cole"
        return out.targets

    base = single_positive_cole(t, ids=ids).targets
    assert torch.equal(run("single_positive:cole"), base)
    assert torch.equal(run("single_positive:cole:coco_id"), base)
    assert torch.equal(run("single_positive:cole:5"), single_positive_cole(t, 5, ids).targets)
    assert torch.equal(run("single_positive:cole:5:given"),
                       single_positive_cole(t, 5, ids, order="given").targets)
    for bad in ("single_positive:cole:x", "single_positive:cole:1:2",
                "single_positive:cole:99999999999"):
        with pytest.raises(ConfigError, match="data.protocol"):
            run(bad)


# -------------------------------------------------------------------------------- losses
EPS = 1e-5
EXTREME = [-1e4, -200.0, -60.0, -30.0, -17.0, -9.0, 0.0, 9.0, 17.0, 30.0, 60.0, 200.0, 1e4]


def _neg_log(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference's ``neg_log``: ``-log(x + LOG_EPSILON)``."""
    return -torch.log(x + eps)


def _reference_matrix(name: str, preds: torch.Tensor, obs: torch.Tensor, true: torch.Tensor,
                      eps: float, alpha: float = 0.1, beta: float = 0.9) -> torch.Tensor:
    """Per-entry loss of the reference code (Cole et al. ``losses.py``, SPML-AckTheUnknown
    ``losses.py``), transcribed on probabilities. ``obs``: 1 observed positive, 0 unobserved,
    a negative value ``-s`` an APL pseudo-negative with soft label ``s``; ``true``: +1 / -1."""
    nl = _neg_log
    m = torch.zeros_like(preds)
    p1, p0 = obs == 1, obs == 0
    m[p1] = nl(preds[p1], eps)
    if name == "an":
        m[p0] = nl(1 - preds[p0], eps)
    elif name == "an_ls":
        m[p1] = 0.9 * nl(preds[p1], eps) + 0.1 * nl(1 - preds[p1], eps)
        m[p0] = 0.9 * nl(1 - preds[p0], eps) + 0.1 * nl(preds[p0], eps)
    elif name == "wan":
        m[p0] = nl(1 - preds[p0], eps) / (preds.shape[1] - 1)
    elif name == "iun":
        tn = true == -1
        m[tn] = nl(1 - preds[tn], eps)
    elif name in ("em", "em_apl"):
        q = preds[p0]
        m[p0] = -alpha * (q * nl(q, eps) + (1 - q) * nl(1 - q, eps))
        neg = obs < 0
        s, q = -obs[neg], preds[neg]
        m[neg] = beta * (s * nl(q, eps) + (1 - s) * nl(1 - q, eps))
    return m


def _spml_batch(seed: int, b: int = 12, c: int = 9) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, generator=g, dtype=torch.float64) * 4
    x.view(-1)[: len(EXTREME)] = torch.tensor(EXTREME, dtype=torch.float64)
    true = torch.where(torch.rand(b, c, generator=g) < 0.3, 1, -1)
    true[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1
    obs = torch.from_numpy(single_positive_cole(true.to(torch.int8), seed=seed).targets
                           .numpy()).to(torch.float64)
    return x, true, obs


@pytest.mark.parametrize("name", ["an", "an_ls", "wan", "iun", "em"])
def test_single_positive_losses_equal_the_reference_with_its_log_floor(name):
    x, true, obs = _spml_batch(0)
    targets = obs.to(torch.int8)
    if name == "iun":  # the oracle: true negatives are given as -1
        targets = torch.where(true == -1, torch.tensor(-1, dtype=torch.int8), targets)
    opts = {"alpha": 0.1} if name == "em" else {}
    ref = _reference_matrix(name, torch.sigmoid(x), obs, true, EPS)
    want = ref.sum() / ref.numel()  # compute_batch_loss: divided by B * C
    got = create_loss(name, log_eps=SPL_REFERENCE_LOG_EPS, **opts)(x, targets)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert SPL_REFERENCE_LOG_EPS == EPS
    # float32 logits: within float32 rounding of the float64 reference
    got32 = create_loss(name, log_eps=EPS, **opts)(x.float(), targets)
    torch.testing.assert_close(got32.double(), want, rtol=2e-6, atol=2e-6)
    # log_eps = 0: the exact log-sigmoid form, the reference with its constant removed
    exact = create_loss(name, **opts)(x, targets)
    ref_exact = _exact_matrix(name, x, obs, true)
    torch.testing.assert_close(exact, ref_exact.sum() / ref_exact.numel(), rtol=1e-12,
                               atol=1e-12)
    # where p and 1 - p are far from 0 the reference formula without its constant is exact
    moderate = x.abs() < 9
    ref0 = _reference_matrix(name, torch.sigmoid(x), obs, true, 0.0)
    torch.testing.assert_close(ref0[moderate], ref_exact[moderate], rtol=1e-9, atol=1e-12)
    assert exact.item() > got.item()  # the extreme wrong logits are not floored


def _exact_matrix(name: str, x: torch.Tensor, obs: torch.Tensor,
                  true: torch.Tensor) -> torch.Tensor:
    """The same terms with exact logs, ``-log p = softplus(-x)``, ``-log(1-p) = softplus(x)``,
    written element by element with ``math``."""
    def sp(v: float) -> float:  # softplus, stable for any v
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    b, c = x.shape
    m = torch.zeros_like(x)
    for i in range(b):
        for j in range(c):
            v, o = float(x[i, j]), float(obs[i, j])
            p = 1 / (1 + math.exp(-v)) if v > -700 else 0.0
            nlp, nl1 = sp(-v), sp(v)  # -log p, -log(1 - p)
            if o == 1:
                m[i, j] = 0.9 * nlp + 0.1 * nl1 if name == "an_ls" else nlp
            elif name == "an":
                m[i, j] = nl1
            elif name == "an_ls":
                m[i, j] = 0.9 * nl1 + 0.1 * nlp
            elif name == "wan":
                m[i, j] = nl1 / (c - 1)
            elif name == "iun":
                m[i, j] = nl1 if true[i, j] == -1 else 0.0
            elif name == "em":
                m[i, j] = -0.1 * (p * nlp + (1 - p) * nl1)
    return m


def test_em_apl_equals_the_reference_with_pseudo_negatives():
    x, true, obs = _spml_batch(1)
    b, c = x.shape
    g = torch.Generator().manual_seed(5)
    chosen = (obs == 0) & (torch.rand(b, c, generator=g) < 0.4)
    soft = torch.rand(b, c, generator=g, dtype=torch.float64) * 0.2
    loss = create_loss("em_apl", alpha=0.2, beta=0.02, log_eps=EPS)
    loss.pseudo_mask = chosen.clone()
    loss.pseudo_value = soft.float()
    soft32 = soft.float().double()
    ref_obs = torch.where(chosen, -soft32, obs)  # the reference stores -s in its label matrix
    ref = _reference_matrix("em_apl", torch.sigmoid(x), ref_obs, true, EPS, 0.2, 0.02)
    rows = torch.arange(b)
    got = loss(x, obs.to(torch.int8), index=rows)
    torch.testing.assert_close(got, ref.sum() / ref.numel(), rtol=1e-12, atol=1e-12)


def test_log_floor_bounds_each_term_and_stops_wrong_gradients():
    # each floored -log lies in [-log(1 + eps), -log(eps)]; every term is a weighted sum of
    # at most two of them with weights summing to at most 1 (times alpha / beta)
    bound, low = -math.log(EPS), -math.log1p(EPS)
    xs = torch.tensor(EXTREME, dtype=torch.float64).view(-1, 1)
    for name in ("an", "an_ls", "wan", "iun", "em", "em_apl"):
        opts = {"weight": 1.0} if name == "wan" else {}  # one class: no 1 / (C - 1)
        floored = create_loss(name, reduction="sum", log_eps=EPS, **opts)
        for v in xs:
            term = floored(v.view(1, 1), torch.ones(1, 1, dtype=torch.int8)).item()
            assert low - 1e-15 <= term <= bound + 1e-12, (name, float(v), term)
            term = floored(v.view(1, 1), torch.zeros(1, 1, dtype=torch.int8)).item()
            assert -bound - 1e-12 <= term <= bound + 1e-12, (name, float(v), term)
    # exact logs: a confidently wrong positive costs |x|; floored it costs -log(eps)
    an, an_f = create_loss("an", reduction="sum"), create_loss("an", reduction="sum",
                                                               log_eps=EPS)
    x = torch.tensor([[-1e4]], dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.int8)
    assert an(x, one).item() == pytest.approx(1e4)
    assert an_f(x, one).item() == pytest.approx(bound, rel=1e-9)

    # gradients at confidently wrong scores: an observed positive at x = -60 and an assumed
    # negative at x = +60 (AN), the same positive under EM
    x = torch.tensor([[-60.0, 60.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1, 0]], dtype=torch.int8)
    for name in ("an", "wan", "em", "em_apl"):
        g_exact = torch.autograd.grad(create_loss(name, reduction="sum")(x, t), x)[0]
        g_floor = torch.autograd.grad(create_loss(name, reduction="sum", log_eps=EPS)(x, t),
                                      x)[0]
        assert g_exact[0, 0].item() == pytest.approx(-1.0, rel=1e-9)  # d softplus(-x) / dx
        assert abs(g_floor[0, 0].item()) < 1e-20
        if name == "an":
            assert g_exact[0, 1].item() == pytest.approx(1.0, rel=1e-9)
            assert abs(g_floor[0, 1].item()) < 1e-20
    # away from the extremes the floor leaves the gradient almost unchanged
    x = torch.linspace(-4, 4, 17, dtype=torch.float64).view(1, -1).requires_grad_(True)
    t = torch.zeros(1, 17, dtype=torch.int8)
    t[0, 3] = 1
    ge = torch.autograd.grad(create_loss("an")(x, t), x)[0]
    gf = torch.autograd.grad(create_loss("an", log_eps=EPS)(x, t), x)[0]
    torch.testing.assert_close(gf, ge, rtol=2e-3, atol=0)
    with pytest.raises(ValueError, match="log_eps"):
        create_loss("em", log_eps=-1.0)


# SPML-AckTheUnknown main.py, per dataset: alpha, beta, warm-up epoch, neg_proportion
APL_REFERENCE = {"coco": (0.1, 0.9, 5, 0.9), "pascal": (0.2, 0.02, 5, 0.9),
                 "nuswide": (0.1, 0.2, 4, 0.9), "cub": (0.01, 0.4, 3, 0.9)}


def test_em_apl_defaults_and_pseudo_labels_follow_the_reference():
    d = create_loss("em_apl")
    assert (d.alpha, d.beta, d.warmup_epochs, d.neg_proportion, d.num_epochs) == (
        *APL_REFERENCE["coco"], 10)
    assert d.log_eps == 0.0 and create_loss("em").alpha == APL_REFERENCE["coco"][0]
    alpha, beta, warm, prop = APL_REFERENCE["pascal"]
    loss = create_loss("em_apl", alpha=alpha, beta=beta, warmup_epochs=warm, num_epochs=10,
                       neg_proportion=prop)
    rng = np.random.default_rng(3)
    n, c = 200, 6
    full = np.where(rng.random((n, c)) < 0.3, 1, -1)
    full[np.arange(n), rng.integers(0, c, n)] = 1
    obs0 = single_positive_cole(torch.from_numpy(full.astype(np.int8))).targets
    # the reference's loop: label matrix with -s for pseudo-negatives; unlabel_num at start
    ref = obs0.numpy().astype(np.float64)
    unlabel_num = [(ref[:, i] == 0).sum() for i in range(c)]
    for epoch in range(1, 11):
        probs = rng.random((n, c)).astype(np.float32)  # distinct: no ties
        loss.update_pseudo_labels(torch.from_numpy(probs), obs0, epoch=epoch)
        if epoch >= warm:
            for i in range(c):
                unl = np.flatnonzero(ref[:, i] == 0)
                num = int(prop * unlabel_num[i] / (10 - warm))
                for r in unl[np.argsort(probs[unl, i])[:num]]:
                    ref[r, i] = -probs[r, i]
        np.testing.assert_array_equal(loss.pseudo_mask.numpy(), ref < 0)
        np.testing.assert_array_equal(loss.pseudo_value.numpy()[ref < 0], -ref[ref < 0])
    assert (ref < 0).sum() > 0


# ------------------------------------------------------------------- EM-APL across resume
def _run_config(tmp: Path, name: str) -> Config:
    from conftest import make_color_images

    labels = make_color_images(tmp / "imgs", 40, size=32)
    val = make_color_images(tmp / "val", 12, size=32, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {
        "name": name, "seed": 3, "output_dir": str(tmp / "runs"),
        "model": {"name": "baseline", "backbone": "efficientnet_lite0", "pretrained": False,
                  "freeze_backbone": True},
        "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                 "val": {"name": "list", "labels_file": str(val), "names": names},
                 "image_size": 32, "batch_size": 8, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp / "cache"), "protocol": "single_positive:cole"},
        "optim": {"name": "adamw", "lr": 1e-2},
        "sched": {"name": "cosine", "warmup_epochs": 1},
        "loss": {"name": "em_apl", "options": {"warmup_epochs": 1, "num_epochs": 3,
                                               "log_eps": 1e-5}},
        "train": {"epochs": 3, "progress": False, "ema": 0.0, "amp": "none"},
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_config(p)


class _Killed(Exception):
    pass


def test_em_apl_pseudo_labels_survive_resume(tmp_path, monkeypatch):
    from mlrkit.engine.trainer import Trainer

    straight = Trainer(_run_config(tmp_path, "straight"))
    straight.fit()

    real_write = Trainer._write_epoch

    def write_then_die(self, metrics, improved):
        real_write(self, metrics, improved)
        if self.epoch == 2:
            raise _Killed  # after epoch 2's state is on disk

    monkeypatch.setattr(Trainer, "_write_epoch", write_then_die)
    cfg = _run_config(tmp_path, "killed")
    with pytest.raises(_Killed):
        Trainer(cfg).fit()
    monkeypatch.setattr(Trainer, "_write_epoch", real_write)
    resumed = Trainer(cfg, resume=cfg.run_dir)
    resumed.fit()

    a, b = straight.loss_fn, resumed.loss_fn
    assert a.epoch == b.epoch == 3
    assert int(a.pseudo_mask.sum()) > 0  # epochs 1-3 each chose pseudo-negatives
    assert torch.equal(a.pseudo_mask, b.pseudo_mask)
    assert torch.equal(a.pseudo_value, b.pseudo_value)
    assert torch.equal(a.unlabeled_count, b.unlabeled_count)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # and the training targets really were the reference single-positive draw
    t = resumed.train_targets
    assert resumed.labels.names == ("red", "green", "blue")
    assert bool(((t == 1).sum(1) <= 1).all()) and not bool((t == -1).any())


# ------------------------------------------------------------------------------- metrics
def _loop_metrics(s: np.ndarray, t: np.ndarray, ks, order_key) -> dict[str, float]:
    """Per image: rank the known labels by ``order_key``, count positives in the first k;
    P = hits / k, R = hits / #positives (0 without positives); means over all images."""
    from sklearn.metrics import average_precision_score

    n, c = s.shape
    out = {}
    aps = []
    for j in range(c):
        known = t[:, j] != 0
        y = t[known, j] == 1
        aps.append(average_precision_score(y, s[known, j]) if y.any() else 0.0)
    out["mAP"] = float(np.mean(aps))
    for k in ks:
        ps, rs = [], []
        for i in range(n):
            ranked = sorted((j for j in range(c) if t[i, j] != 0), key=lambda j: order_key(i, j))
            hits = sum(t[i, j] == 1 for j in ranked[:k])
            npos = int((t[i] == 1).sum())
            ps.append(hits / k if npos else 0.0)
            rs.append(hits / npos if npos else 0.0)
        p, r = float(np.mean(ps)), float(np.mean(rs))
        out.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": 2 * p * r / (p + r) if p + r else 0.0})
    return out


def test_spml_metrics_match_a_loop_and_sklearn():
    rng = np.random.default_rng(4)
    n, c = 70, 12
    s = rng.normal(size=(n, c))
    t = np.where(rng.random((n, c)) < 0.2, 1, -1).astype(np.int8)
    t[:5] = -1  # images without a positive
    t[5:10] = -1
    t[5:10, 0] = 1  # a single positive: fewer than k
    t[10:15, :] = 1  # all positive
    want = _loop_metrics(s, t, (1, 3, 5), lambda i, j: -s[i, j])
    for ties in ("split", "first"):
        rep = spml_metrics(s, t, ks=(1, 3, 5), ties=ties)
        for key, v in want.items():
            assert rep.metrics[key] == pytest.approx(v, abs=1e-12), (ties, key)
    rep = spml_metrics(torch.from_numpy(s), torch.from_numpy(t))
    assert list(rep.to_dict()) == ["mAP", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5"]
    assert rep.num_without_positive == 5 and rep.num_images == n
    assert "P@3" in rep.format_table()
    # images with fewer positives than k: recall can reach 1 while P@k <= #pos / k
    one = spml_metrics(s[5:10], t[5:10], ks=(3,))
    assert one.metrics["P@3"] <= 1 / 3 + 1e-12
    top = np.where(s[5:10].argmax(1) == 0)[0]
    assert one.metrics["R@3"] >= len(top) / 5
    # F1 is the F1 of the two means, not the mean of per-image F1s
    p, r = rep.metrics["P@3"], rep.metrics["R@3"]
    assert rep.metrics["F1@3"] == pytest.approx(2 * p * r / (p + r))
    # images without a positive: kept with 0 (reference) or left out
    skip = spml_metrics(s, t, ks=(3,), no_positive="skip")
    assert skip.metrics["P@3"] == pytest.approx(rep.metrics["P@3"] * n / (n - 5))
    assert skip.metrics["R@3"] == pytest.approx(rep.metrics["R@3"] * n / (n - 5))
    assert skip.metrics["mAP"] == rep.metrics["mAP"]
    # the reference's per-image functions (argsort descending, first k) on tie-free scores
    p_ref = np.mean([len(np.intersect1d(np.argsort(s[i])[::-1][:5], np.flatnonzero(t[i] == 1)))
                     / 5 if (t[i] == 1).any() else 0.0 for i in range(n)])
    assert rep.metrics["P@5"] == pytest.approx(p_ref, abs=1e-12)


def test_spml_metrics_ties():
    rng = np.random.default_rng(6)
    n, c = 40, 7
    s = rng.integers(0, 3, size=(n, c)).astype(np.float32)  # many ties
    t = np.where(rng.random((n, c)) < 0.35, 1, -1).astype(np.int8)
    t[0, :] = -1
    t[0, 2] = 1
    # "first": equal scores in class order
    want = _loop_metrics(s, t, (2, 3), lambda i, j: (-s[i, j], j))
    got = spml_metrics(s, t, ks=(2, 3), ties="first").metrics
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-12), key
    # "split": the average over every order of the tied labels
    for k in (2, 3):
        ps, rs = [], []
        for i in range(n):
            pos = set(np.flatnonzero(t[i] == 1).tolist())
            outcomes = []
            for perm in itertools.permutations(range(c)):
                ranked = sorted(range(c), key=lambda j, perm=perm: (-s[i, j], perm[j]))
                outcomes.append(len(pos & set(ranked[:k])))
            hits = float(np.mean(outcomes))
            ps.append(hits / k if pos else 0.0)
            rs.append(hits / len(pos) if pos else 0.0)
            if i == 3:
                break  # 7! orders per image: check a few images by brute force
        rep = spml_metrics(s[:4], t[:4], ks=(k,), ties="split").metrics
        assert rep[f"P@{k}"] == pytest.approx(np.mean(ps), abs=1e-12)
        assert rep[f"R@{k}"] == pytest.approx(np.mean(rs), abs=1e-12)
    # constant scores: the expected top-k hits are k * #pos / C
    const = spml_metrics(np.zeros((n, c)), t, ks=(3,), ties="split").metrics
    npos = (t == 1).sum(1)
    assert const["P@3"] == pytest.approx(np.mean(npos / c), abs=1e-12)
    assert const["R@3"] == pytest.approx(np.mean(np.where(npos > 0, 3 / c, 0.0)), abs=1e-12)


def test_spml_metrics_unknown_entries_leave_the_ranking():
    rng = np.random.default_rng(8)
    s = rng.normal(size=(30, 6))
    t = np.where(rng.random((30, 6)) < 0.4, 1, -1).astype(np.int8)
    t[:, 0] = 0  # column 0 unknown everywhere ...
    s[:, 0] = 100.0  # ... and always ranked first
    with_unknown = spml_metrics(s, t, ks=(2,)).metrics
    without = spml_metrics(s[:, 1:], t[:, 1:], ks=(2,)).metrics
    for key in ("P@2", "R@2", "F1@2"):  # (mAP differs: the empty column counts as AP 0)
        assert with_unknown[key] == pytest.approx(without[key], abs=1e-12)
    with pytest.raises(ValueError, match="k must be between"):
        spml_metrics(s, t, ks=(7,))
    with pytest.raises(ValueError, match="no positive"):
        spml_metrics(s, -np.ones_like(t), ks=(2,))
    with pytest.raises(ValueError, match="ties"):
        spml_metrics(s, t, ties="random")


def test_cole_negatives_keeps_true_negatives_and_the_same_positive():
    from mlrkit.config import load_config
    from mlrkit.data.protocols import single_positive_cole
    from mlrkit.engine.builders import apply_protocol

    rng = np.random.default_rng(5)
    t = torch.from_numpy(rng.choice([-1, 0, 1], size=(40, 7), p=[0.6, 0.1, 0.3]).astype(np.int8))
    plain = single_positive_cole(t, order="given").targets
    oracle = single_positive_cole(t, order="given", negatives=True).targets
    assert torch.equal(oracle == 1, plain == 1)  # the same positive per image
    assert torch.equal(oracle == -1, t == -1)  # every true negative, nothing else
    assert not (plain == -1).any()
    cfg = load_config(None, ["data.protocol=single_positive:cole:given:negatives"])
    from mlrkit.data.base import MultiLabelDataset
    from mlrkit.labels import LabelSpace

    ds = MultiLabelDataset(None, t.clone(), LabelSpace(tuple("abcdefg")),
                           ids=[f"x{i}" for i in range(40)])
    assert torch.equal(apply_protocol(cfg, ds).targets, oracle)
