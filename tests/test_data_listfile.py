"""Label-list files (``file, idx idx ...``) on the COCO-2014 training labels."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlrkit.data import DataError, load_dataset
from mlrkit.io import safe_load_pickle
from mlrkit.semantics.cooccurrence import cooccurrence

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
FULL = DATA / "coco2014" / "coco_train_full.txt"
needs_coco2014 = pytest.mark.skipif(not FULL.is_file(),
                                    reason=f"{FULL} not found (set MLRKIT_DATA)")


@needs_coco2014
def test_coco_train_full_matches_mlgcn_adj_in_alphabetical_order() -> None:
    t0 = time.perf_counter()
    ds = load_dataset("list", labels_file=str(FULL), num_classes=80)
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, f"loading took {elapsed:.2f} s"
    assert tuple(ds.targets.shape) == (82081, 80)
    # 241,035 labels: the count published with these files (robust-loss-mlml README)
    assert int((ds.targets == 1).sum()) == 241035
    assert bool((ds.targets != 0).all())
    names = yaml.safe_load((DATA / "coco128" / "config.yaml").read_text())["names"]
    names = [names[i] for i in range(80)]
    perm = sorted(range(80), key=lambda i: names[i])
    counts, pairs = cooccurrence(ds.targets[:, perm])
    ref = safe_load_pickle(DATA / "label_semantics" / "coco_adj.pkl")
    np.testing.assert_array_equal(counts.numpy(), ref["nums"])
    np.testing.assert_array_equal(pairs.numpy(), ref["adj"])
    first = FULL.read_text().split("\n", 1)[0]  # "COCO_train2014_000000480023.jpg, 0 52"
    assert ds.ids[0] == first.split(",")[0][:-4]
    assert set((ds.targets[0] == 1).nonzero().flatten().tolist()) == {
        int(x) for x in first.split(",")[1].split()}


@needs_coco2014
def test_names_from_a_yaml_file_and_image_dir() -> None:
    ds = load_dataset("list", labels_file=str(FULL), names=str(DATA / "coco128" / "config.yaml"),
                      image_dir="/images", split="train2014")
    assert ds.labels.names[0] == "person" and len(ds.labels) == 80
    assert ds.paths[0] == Path("/images/train2014/COCO_train2014_000000480023.jpg")


def test_list_formats_unlisted_and_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "coco_train.txt"
    f.write_text("a.jpg, 0 2\nb.jpg,1\nc.jpg,\n\nd.jpg, 2 1 0\n")
    ds = load_dataset("list", labels_file=str(f), names=["x", "y", "z"])
    assert ds.ids == ["a", "b", "c", "d"]
    assert ds.targets.tolist() == [[1, -1, 1], [-1, 1, -1], [-1, -1, -1], [1, 1, 1]]
    ds = load_dataset("list", labels_file=str(f), num_classes=3, unlisted="unknown")
    assert ds.targets.tolist()[1] == [0, 1, 0] and ds.labels.names == ("0", "1", "2")
    lines = [f"img{i}.jpg, 1 {i % 80}" for i in range(16)] + ["img16.jpg, 5 93",
                                                               "img17.jpg 3 4", "img0.jpg, 2",
                                                               "img19.jpg, 1 x"]
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"coco_train.txt:17: class index 93 out of range 0..79"):
        load_dataset("list", labels_file=str(f), num_classes=80)
    ds = load_dataset("list", labels_file=str(f), num_classes=80, skip_bad=True)
    assert len(ds) == 16
    assert ds.info["skipped"] == [
        "coco_train.txt:17: class index 93 out of range 0..79",
        "coco_train.txt:18: malformed line 'img17.jpg 3 4'; expected 'file, idx idx ...'",
        "coco_train.txt:19: duplicate image 'img0.jpg' (first on line 1)",
        "coco_train.txt:20: class index 'x' is not an integer"]


def test_list_needs_class_information(tmp_path: Path) -> None:
    f = tmp_path / "l.txt"
    f.write_text("a.jpg,0\n")
    with pytest.raises(DataError, match="pass names="):
        load_dataset("list", labels_file=str(f))
    with pytest.raises(DataError, match="2 names given but num_classes=3"):
        load_dataset("list", labels_file=str(f), names=["a", "b"], num_classes=3)
    with pytest.raises(DataError, match="labels file not found"):
        load_dataset("list", labels_file=str(tmp_path / "none.txt"), num_classes=2)
    with pytest.raises(ValueError, match="unlisted="):
        load_dataset("list", labels_file=str(f), num_classes=2, unlisted="maybe")
    ds = load_dataset("list", root=str(tmp_path), labels_file="l.txt", num_classes=2)
    assert ds.paths[0] == tmp_path / "a.jpg"
