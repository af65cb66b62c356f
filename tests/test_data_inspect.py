"""Label statistics: co-occurrence (against explicit loops) and the text summary."""

from __future__ import annotations

import numpy as np
import torch

from mlrkit.data import MultiLabelDataset
from mlrkit.data.inspect import label_stats, summarize
from mlrkit.labels import LabelSpace
from mlrkit.semantics.cooccurrence import conditional_probability, cooccurrence


def test_cooccurrence_equals_explicit_loops() -> None:
    g = torch.Generator().manual_seed(0)
    t = (torch.randint(0, 3, (200, 7), generator=g) - 1).to(torch.int8)
    counts, pairs = cooccurrence(t)
    a = t.numpy()
    for i in range(7):
        assert counts[i] == sum(1 for n in range(200) if a[n, i] == 1)
        for j in range(7):
            expect = 0 if i == j else sum(1 for n in range(200) if a[n, i] == 1 and a[n, j] == 1)
            assert pairs[i, j] == expect
    assert counts.dtype == torch.int64 and pairs.dtype == torch.int64
    p = conditional_probability(t)
    assert torch.allclose(p, pairs.double() / counts.double()[:, None])


def test_label_stats_and_summary_text() -> None:
    t = torch.tensor([[1, -1, 0], [1, 1, -1], [-1, -1, -1], [1, 0, 0]], dtype=torch.int8)
    seen = torch.tensor([True, True, False])
    ds = MultiLabelDataset(None, t, LabelSpace(("cat", "dog", "emu"), seen=seen),
                           ids=list("abcd"), info={"dataset": "toy", "skipped": ["x:1: bad"]})
    s = label_stats(ds.targets)
    assert s["labels_per_image_mean"] == 1.0  # (1 + 2 + 0 + 1) / 4
    assert (s["labels_per_image_min"], s["labels_per_image_max"]) == (0, 2)
    assert s["positives_per_class"] == [3, 1, 0]
    assert s["unknown_per_class"] == [0, 1, 2]
    assert np.isclose(s["unknown_fraction"], 3 / 12)
    text = summarize(ds)
    assert "images: 4" in text and "classes: 3 (2 seen, 1 unseen)" in text
    assert "positives per image: mean 1.000, min 0, max 2" in text
    assert "unknown fraction: 0.2500" in text
    assert "skipped bad lines: 1 (first: x:1: bad)" in text
    rows = [ln.split() for ln in text.splitlines()[-3:]]
    assert rows == [["cat", "3", "1", "0"], ["dog", "1", "2", "1"], ["emu", "0", "2", "2"]]
    assert len(summarize(ds, max_classes=1).splitlines()) == len(text.splitlines()) - 2
