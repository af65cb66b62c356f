"""VOC loaders against the official split files and ML-GCN's published label statistics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit.data import DataError, load_dataset
from mlrkit.data.voc import VOC_CLASSES
from mlrkit.io import safe_load_pickle
from mlrkit.semantics.cooccurrence import cooccurrence

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
VOC = DATA / "voc2007"
needs_voc = pytest.mark.skipif(not (VOC / "ImageSets" / "Main").is_dir(),
                               reason=f"VOC2007 label files not found under {VOC} "
                               "(set MLRKIT_DATA)")


def _raw_counts(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per class: number of 1 and of 0 (difficult-only) values, by reading the files."""
    ones, zeros = np.zeros(20, int), np.zeros(20, int)
    for c, cls in enumerate(VOC_CLASSES):
        for line in (VOC / "ImageSets" / "Main" / f"{cls}_{split}.txt").read_text().split("\n"):
            if line.strip():
                v = line.split()[1]
                ones[c] += v == "1"
                zeros[c] += v == "0"
    return ones, zeros


@needs_voc
def test_voc2007_sizes_ids_and_names() -> None:
    tv = load_dataset("voc2007", root=str(VOC), split="trainval")
    te = load_dataset("voc2007", root=str(VOC), split="test")
    assert tuple(tv.targets.shape) == (5011, 20)
    assert tuple(te.targets.shape) == (4952, 20)
    assert tv.targets.dtype == torch.int8
    ids = (VOC / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert tv.ids == ids
    assert list(tv.labels.names) == (VOC / "labels.txt").read_text().split()
    assert tv.paths[0] == VOC / "JPEGImages" / f"{ids[0]}.jpg"
    assert tv.info["difficult"] == "ignore"


@needs_voc
@pytest.mark.parametrize("split", ["trainval", "test"])
def test_difficult_policies_match_file_counts(split: str) -> None:
    ones, zeros = _raw_counts(split)
    for policy, pos, unk in [("ignore", ones, zeros), ("positive", ones + zeros, 0 * zeros),
                             ("negative", ones, 0 * zeros)]:
        t = load_dataset("voc2007", root=str(VOC), split=split, difficult=policy).targets
        np.testing.assert_array_equal((t == 1).sum(0).numpy(), pos)
        np.testing.assert_array_equal((t == 0).sum(0).numpy(), unk)


@needs_voc
def test_cooccurrence_equals_mlgcn_voc_adj() -> None:
    # ML-GCN's voc_adj.pkl counts difficult-only objects as absent (checked against the
    # split files: "positive" would give 240 aeroplanes, the file has 238).
    ref = safe_load_pickle(DATA / "label_semantics" / "voc_adj.pkl")
    for policy in ("negative", "ignore"):
        t = load_dataset("voc2007", root=str(VOC), split="trainval", difficult=policy).targets
        counts, pairs = cooccurrence(t)
        np.testing.assert_array_equal(counts.numpy(), ref["nums"])
        np.testing.assert_array_equal(pairs.numpy(), ref["adj"])
    t = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="positive").targets
    counts, _ = cooccurrence(t)
    ones, zeros = _raw_counts("trainval")
    np.testing.assert_array_equal(counts.numpy(), ref["nums"] + zeros)


@needs_voc
def test_images_load_and_empty_file_is_a_clear_error() -> None:
    te = load_dataset("voc2007", root=str(VOC), split="test")
    img, target = te[te.ids.index("000342")]
    assert img.size == (500, 375)
    assert target.dtype == torch.int8
    tv = load_dataset("voc2007", root=str(VOC), split="trainval")
    bad = VOC / "JPEGImages" / "000005.jpg"
    if bad.is_file() and bad.stat().st_size == 0:
        with pytest.raises(DataError, match="000005.jpg: cannot decode"):
            tv[tv.ids.index("000005")]
    with pytest.raises(DataError, match="000007.jpg: image file not found"):
        tv[tv.ids.index("000007")]


def _xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>"
                   for n, d in objects)
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def _fake_voc(tmp: Path, with_class_files: bool) -> Path:
    root = tmp / "VOC2012"
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("a\nb\nc\n")
    ann = root / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(_xml([("dog", 0), ("person", 1)]))
    (ann / "b.xml").write_text(_xml([("dog", 1), ("dog", 0), ("cat", 1)]))
    (ann / "c.xml").write_text(_xml([("car", 0)]))
    if with_class_files:
        truth = {"a": {"dog": 1, "person": 0}, "b": {"dog": 1, "cat": 0}, "c": {"car": 1}}
        for cls in VOC_CLASSES:
            lines = [f"{i} {truth[i].get(cls, -1):>2}" for i in "abc"]
            (main / f"{cls}_train.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("with_class_files", [True, False])
def test_split_files_and_xml_give_the_hand_made_truth(tmp_path: Path,
                                                      with_class_files: bool) -> None:
    root = _fake_voc(tmp_path, with_class_files)
    ds = load_dataset("voc2012", root=str(root), split="train", difficult="ignore")
    assert ds.info["label_source"] == ("ImageSets/Main" if with_class_files else "Annotations")
    expect = torch.full((3, 20), -1, dtype=torch.int8)
    c = VOC_CLASSES.index
    expect[0, c("dog")], expect[0, c("person")] = 1, 0  # difficult-only person: unknown
    expect[1, c("dog")], expect[1, c("cat")] = 1, 0  # one non-difficult dog suffices
    expect[2, c("car")] = 1
    assert torch.equal(ds.targets, expect)
    pos = load_dataset("voc2012", root=str(root), split="train", difficult="positive")
    assert pos.targets[0, c("person")] == 1 and pos.targets[1, c("cat")] == 1


def test_bad_voc_input(tmp_path: Path) -> None:
    root = _fake_voc(tmp_path, True)
    f = root / "ImageSets" / "Main" / "cat_train.txt"
    f.write_text("a -1\nb 7\nc -1\n")
    with pytest.raises(DataError, match=r"cat_train.txt:2: malformed line"):
        load_dataset("voc2012", root=str(root), split="train")
    ds = load_dataset("voc2012", root=str(root), split="train", skip_bad=True)
    assert len(ds.info["skipped"]) == 2  # the bad line, then the missing value it leaves
    assert ds.targets[1, VOC_CLASSES.index("cat")] == 0
    with pytest.raises(DataError, match="unknown split 'test'"):
        load_dataset("voc2012", root=str(root), split="test")
    with pytest.raises(DataError, match="difficult="):
        load_dataset("voc2012", root=str(root), split="train", difficult="maybe")
    with pytest.raises(DataError, match="pass root="):
        load_dataset("voc2007")
