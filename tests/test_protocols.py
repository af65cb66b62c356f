"""Label protocols: partial, single positive, zero-shot, published files, saved files."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit.data import load_dataset
from mlrkit.data.protocols import (
    Protocol,
    ProtocolError,
    apply_protocol,
    load_list_protocol,
    load_voc_partial,
    partial,
    select_labels,
    single_positive,
    zero_shot_split,
)
from mlrkit.labels import LabelSpace

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
COCO = DATA / "coco2014"
VOC = DATA / "voc2007"
needs_coco = pytest.mark.skipif(not (COCO / "coco_train_full.txt").is_file(),
                                reason=f"COCO-2014 label lists not found under {COCO}")
needs_voc = pytest.mark.skipif(not (VOC / "partial").is_dir(),
                               reason=f"VOC2007 label files not found under {VOC}")


@pytest.fixture(scope="module")
def coco_full():
    return load_dataset("list", labels_file=str(COCO / "coco_train_full.txt"), num_classes=80)


@needs_coco
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_partial_keeps_p_of_the_coco_labels(coco_full, p: float) -> None:
    prot = partial(coco_full, keep=p, seed=3)
    t, full = prot.targets, coco_full.targets
    known = t != 0
    assert abs(float(known.double().mean()) - p) < 0.005
    assert torch.equal(t[known], full[known])  # kept labels are unchanged
    # positives and negatives are kept alike
    for v in (1, -1):
        assert abs(float(known[full == v].double().mean()) - p) < 0.005
    assert prot.meta["seed"] == 3 and prot.meta["params"] == {"keep": p}
    assert prot.ids == coco_full.ids
    assert torch.equal(partial(coco_full, keep=p, seed=3).targets, t)
    assert not torch.equal(partial(coco_full, keep=p, seed=4).targets, t)


@needs_coco
def test_saved_protocol_reloads_bit_identically(coco_full, tmp_path: Path) -> None:
    prot = partial(coco_full, keep=0.3, seed=0)
    path = prot.save(tmp_path / "sub" / "coco_partial_0.3.npz")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    back = Protocol.load(path)
    assert back == prot
    assert back.targets.numpy().tobytes() == prot.targets.numpy().tobytes()
    assert back.sha256 == hashlib.sha256(prot.targets.numpy().tobytes()).hexdigest()
    d = apply_protocol(coco_full, back)
    assert torch.equal(d.targets, prot.targets)
    assert d.info["protocol"]["seed"] == 0


def test_altered_protocol_file_is_refused(tmp_path: Path) -> None:
    t = torch.tensor([[1, -1], [-1, 1]], dtype=torch.int8)
    path = partial(t, keep=1.0, seed=0).save(tmp_path / "p.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["targets"] = arrays["targets"].copy()
    arrays["targets"][0, 0] = 0
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ProtocolError, match=r"p.npz: SHA-256 of the targets"):
        Protocol.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ProtocolError, match=r"p.npz: not a readable mlrkit protocol"):
        Protocol.load(path)
    with pytest.raises(ProtocolError, match="protocol file not found"):
        Protocol.load(tmp_path / "none.npz")


def test_single_positive_is_uniform_and_documents_empty_rows() -> None:
    n = 40000
    t = torch.tensor([[1, -1, 1, 1, 0, 1]] * n + [[-1, -1, 0, -1, -1, -1]], dtype=torch.int8)
    prot = single_positive(t, seed=1)
    s = prot.targets
    assert bool(((s == 1).sum(1)[:n] == 1).all())
    assert bool((s[n] == 0).all()) and prot.meta["num_without_positive"] == 1
    assert bool((s[(s != 0)] == 1).all()) and bool((t[s == 1] == 1).all())
    freq = (s[:n] == 1).double().mean(0)
    assert torch.allclose(freq[[0, 2, 3, 5]], torch.full((4,), 0.25, dtype=torch.float64),
                          atol=0.01)  # 4 sd of a binomial(40000, 0.25) fraction is 0.0087
    assert float(freq[[1, 4]].sum()) == 0.0


def test_zero_shot_split_and_select_labels() -> None:
    names = ("a", "b", "c", "d")
    z = zero_shot_split(names, unseen=["b", "d"])
    assert z.unseen.tolist() == [False, True, False, True] and z.seen.tolist() == [
        True, False, True, False]
    assert zero_shot_split(LabelSpace(names), unseen=[1, 3]) == z
    assert zero_shot_split(names, unseen=torch.tensor([0, 1, 0, 1], dtype=torch.bool)) == z
    r = zero_shot_split(names, num_unseen=2, seed=5)
    assert int(r.unseen.sum()) == 2 and r == zero_shot_split(names, num_unseen=2, seed=5)
    with pytest.raises(KeyError, match="unknown class name 'e'"):
        zero_shot_split(names, unseen=["e"])
    from mlrkit.data import MultiLabelDataset

    ds = MultiLabelDataset(None, torch.tensor([[1, -1, 1, -1]], dtype=torch.int8), z, ids=["x"])
    seen = select_labels(ds, z.seen)
    assert seen.labels.names == ("a", "c") and seen.targets.tolist() == [[1, 1]]


@needs_coco
def test_published_coco_files_are_kept_positives(coco_full) -> None:
    # label counts published with the files (robust-loss-mlml README)
    published = {"0.75left": 181422, "0.4left": 96251, "singlelabel": 82081}
    full = coco_full.targets
    for key, n_pos in published.items():
        prot = load_list_protocol(COCO / f"coco_train_{key}.txt", num_classes=80)
        t = prot.targets
        assert int((t == 1).sum()) == n_pos
        assert bool((t != -1).all())  # unlisted classes are unknown, never negative
        d = apply_protocol(coco_full, prot)  # every kept positive is a full positive
        assert d.info["protocol_conflicts"] == 0
        assert bool((full[t == 1] == 1).all())
        assert bool(((t == 1).sum(1) >= 1).all())  # each image keeps one positive or more
    single = load_list_protocol(COCO / "coco_train_singlelabel.txt", num_classes=80)
    assert bool(((single.targets == 1).sum(1) == 1).all())
    neg = load_list_protocol(COCO / "coco_train_0.4left.txt", num_classes=80,
                             unlisted="negative")
    assert bool((neg.targets != 0).all())


@needs_voc
def test_published_voc_partial_files() -> None:
    voc = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="negative")
    for k in range(1, 10):
        prot = load_voc_partial(VOC / "partial" / f"train_proportion_0.{k}.txt", voc)
        known = prot.targets != 0
        assert abs(float(known.double().mean()) - k / 10) < 0.01
        assert torch.equal(prot.targets[known], voc.targets[known])
        assert prot.meta["params"]["keep"] == k / 10
    d = apply_protocol(voc, prot)
    assert torch.equal(d.targets, prot.targets)
    # the files count difficult-only objects as negatives: a conflict with "positive"
    pos = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="positive")
    with pytest.raises(ProtocolError, match="disagree with the dataset"):
        apply_protocol(pos, prot)
    d = apply_protocol(pos, prot, on_conflict="protocol")
    assert d.info["protocol_conflicts"] > 0


def test_apply_protocol_aligns_by_id_and_refuses_others(tmp_path: Path) -> None:
    from mlrkit.data import MultiLabelDataset

    labels = LabelSpace(("x", "y"))
    t = torch.tensor([[1, -1], [-1, 1], [1, 1]], dtype=torch.int8)
    ds = MultiLabelDataset(None, t, labels, ids=["a", "b", "c"])
    prot = partial(ds, keep=1.0, seed=0)
    shuffled = Protocol(prot.targets[[2, 0, 1]], {"name": "p"}, ["c", "a", "b"])
    assert torch.equal(apply_protocol(ds, shuffled).targets, t)
    other = Protocol(prot.targets, {"name": "p"}, ["a", "b", "z"])
    with pytest.raises(ProtocolError, match="image ids differ"):
        apply_protocol(ds, other)
    bare = partial(t, keep=1.0, seed=0)  # no ids known
    assert bare.ids is None and "source_ids_sha256" not in bare.meta
    assert torch.equal(apply_protocol(ds, bare).targets, t)
    with pytest.raises(ProtocolError, match="2 rows but the dataset has 3"):
        apply_protocol(ds, partial(t[:2], keep=1.0, seed=0))
    meta = json.loads(json.dumps(prot.meta))
    assert Protocol.load(prot.save(tmp_path / "x.npz")).meta == meta
