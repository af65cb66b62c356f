"""``MultiLabelMetrics`` (a torchmetrics.Metric) against ``mlrkit.evaluate`` on the same rows:
uneven batches, unknown (0) targets, and two gloo processes that each see half the data."""

from __future__ import annotations

import math
import multiprocessing as mp

import numpy as np
import pytest
import torch

from mlrkit.metrics import evaluate

pytest.importorskip("torchmetrics")
from mlrkit.integrations.torchmetrics import MultiLabelMetrics  # noqa: E402


def _data(n: int = 41, c: int = 6, seed: int = 0, unknown: float = 0.2):
    """Logits that carry some signal, targets 1 / -1 with a share of 0 (unknown)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, c, generator=g) < 0.35
    t = torch.where(pos, 1, -1).to(torch.int8)
    t[torch.rand(n, c, generator=g) < unknown] = 0
    logits = torch.randn(n, c, generator=g) + 1.5 * pos.float()
    return logits, t


def _feed(metric: MultiLabelMetrics, scores, targets, sizes) -> None:
    assert sum(sizes) == len(scores)
    start = 0
    for b in sizes:
        metric.update(scores[start:start + b], targets[start:start + b])
        start += b


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], k


@pytest.mark.parametrize("kw", [
    {},
    {"scores_are": "logits", "top_k": 2},
    {"scores_are": "logits", "ap_mode": "voc11", "threshold": 0.3},
    {"scores_are": "logits", "ap_mode": "voc", "empty": "zero",
     "threshold": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "top_k": 3},
])
def test_uneven_batches_equal_evaluate(kw):
    logits, t = _data()
    scores = logits if kw.get("scores_are") == "logits" else torch.sigmoid(logits)
    m = MultiLabelMetrics(num_classes=6, **kw)
    _feed(m, scores, t, [1, 7, 3, 12, 5, 13])
    got = m.compute()
    want = evaluate(scores, t, **kw).to_dict()
    _same(got, want)
    assert set(got) >= {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"}
    if kw.get("top_k"):
        assert f"OF1_top{kw['top_k']}" in got
    assert m.report is not None and m.report.num_images == 41
    np.testing.assert_array_equal(m.report.per_class_ap,
                                  evaluate(scores, t, **kw).per_class_ap)


def test_map_of_full_labels_equals_scikit_learn():
    from sklearn.metrics import average_precision_score

    logits, t = _data(unknown=0.0, seed=3)
    m = MultiLabelMetrics(scores_are="logits")
    _feed(m, logits, t, [10, 10, 10, 11])
    ref = np.mean([average_precision_score(t[:, j] == 1, logits[:, j]) for j in range(6)])
    assert m.compute()["mAP"] == pytest.approx(ref, abs=1e-12)


def test_unknown_targets_are_handled_as_evaluate_does():
    logits, t = _data(seed=1, unknown=0.3)
    probs = torch.sigmoid(logits)
    # a batch without any -1 is fine: the 0/1 check looks at all rows, as evaluate does
    t[:5] = torch.where(t[:5] == -1, torch.zeros_like(t[:5]), t[:5])
    m = MultiLabelMetrics()
    _feed(m, probs, t, [5, 36])
    _same(m.compute(), evaluate(probs, t).to_dict())
    # the 0s change the result: ignoring them is not the same as reading them as negatives
    neg = torch.where(t == 0, -1, t).to(torch.int8)
    assert m.compute()["mAP"] != evaluate(probs, neg)["mAP"]

    # 0/1 targets: refused without zero_means, as evaluate refuses them
    zero_one = (t == 1).to(torch.int8)
    m = MultiLabelMetrics()
    _feed(m, probs, zero_one, [20, 21])
    with pytest.raises(ValueError, match="look like 0/1 labels"):
        m.compute()
    for zm, same_as in (("negative", torch.where(zero_one == 0, -1, 1).to(torch.int8)),
                        ("unknown", zero_one)):
        m = MultiLabelMetrics(zero_means=zm)
        _feed(m, probs, zero_one, [20, 21])
        got = m.compute()
        _same(got, evaluate(probs, zero_one, zero_means=zm).to_dict())
        if zm == "negative":
            _same(got, evaluate(probs, same_as).to_dict())


def test_forward_reset_and_bad_input():
    logits, t = _data()
    probs = torch.sigmoid(logits)
    m = MultiLabelMetrics()
    batch = m(probs[:20], t[:20])  # forward: this batch's numbers, and it is kept
    _same(batch, evaluate(probs[:20], t[:20]).to_dict())
    m.update(probs[20:], t[20:])
    _same(m.compute(), evaluate(probs, t).to_dict())
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"), \
            pytest.raises(ValueError, match="no batch was given"):
        m.compute()
    with pytest.raises(ValueError, match="value 2 at row 0, column 1"):
        m.update(probs[:2], torch.tensor([[1, 2, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="targets have shape"):
        m.update(probs[:2], t[:3])
    with pytest.raises(ValueError, match="expected 6 classes, got 5"):
        MultiLabelMetrics(num_classes=6).update(probs[:2, :5], t[:2, :5])
    with pytest.raises(ValueError, match="ap_mode"):
        MultiLabelMetrics(ap_mode="coco")
    with pytest.raises(ValueError, match="one per class"):
        MultiLabelMetrics(num_classes=6, threshold=[0.5, 0.5])


def _rank(rank: int, world: int, init: str, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
        logits, t = _data(n=41)
        rows = slice(0, 25) if rank == 0 else slice(25, 41)  # halves of unequal size
        sizes = [4, 9, 12] if rank == 0 else [16]
        m = MultiLabelMetrics(scores_are="logits", top_k=2, num_classes=6)
        _feed(m, logits[rows], t[rows], sizes)
        queue.put((rank, m.compute(), m.report.num_images))
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - handed to the parent to fail the test
        queue.put((rank, repr(e), -1))


def test_two_gloo_processes_compute_on_all_rows(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_rank, args=(r, 2, init, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r, (out, n)) for r, out, n in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    logits, t = _data(n=41)
    want = evaluate(logits, t, scores_are="logits", top_k=2).to_dict()
    for rank in (0, 1):
        out, n = results[rank]
        assert isinstance(out, dict), out
        assert n == 41  # both ranks scored all rows, not their half
        _same(out, want)
    half = evaluate(logits[:25], t[:25], scores_are="logits", top_k=2).to_dict()
    assert half["mAP"] != want["mAP"]  # so a rank that skipped the sync would be caught
