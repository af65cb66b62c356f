"""NUS-WIDE label spaces (81 concepts; 925 seen + 81 unseen) and both file layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mlrkit.data import DataError, load_dataset
from mlrkit.data.nuswide import nuswide_label_space

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
NUS = DATA / "nuswide"
needs_nus = pytest.mark.skipif(not (NUS / "Concepts81.txt").is_file(),
                               reason=f"NUS-WIDE label files not found under {NUS}")


def _names(f: Path) -> list[str]:
    return [x.strip() for x in f.read_text().splitlines() if x.strip()]


@needs_nus
def test_label_spaces_81_and_925_plus_81() -> None:
    concepts, tags = _names(NUS / "Concepts81.txt"), _names(NUS / "TagList1k.txt")
    assert len(concepts) == 81 and len(tags) == 1000
    assert _names(NUS / "labels81.txt") == concepts
    space, cols = nuswide_label_space(concepts, tags)
    assert len(space) == 1006
    assert int(space.seen.sum()) == 925 and int(space.unseen.sum()) == 81
    seen = [n for n, s in zip(space.names, space.seen.tolist()) if s]
    unseen = [n for n, u in zip(space.names, space.unseen.tolist()) if u]
    assert unseen == concepts
    assert not set(seen) & set(concepts)
    assert seen == [tags[i] for i in cols.tolist()]
    assert cols.tolist() == sorted(cols.tolist())  # tag-list order
    # 1000 - 925 = 75 concepts are tags; the other six are not
    assert sorted(set(concepts) - set(tags)) == ["computer", "fire", "map", "swimmers",
                                                 "tattoo", "whales"]


@needs_nus
def test_nus_val_list_layout() -> None:
    lines = [ln for ln in (NUS / "nus_val.txt").read_text().splitlines() if ln.strip()]
    ds = load_dataset("nuswide", root=str(NUS), labels_file="nus_val.txt")
    assert tuple(ds.targets.shape) == (len(lines), 81) == (50720, 81)
    counts = np.zeros(81, int)
    for ln in lines:
        for j in ln.split(",")[1].split():
            counts[int(j)] += 1
    np.testing.assert_array_equal((ds.targets == 1).sum(0).numpy(), counts)
    assert ds.labels.names == tuple(_names(NUS / "Concepts81.txt"))
    z = load_dataset("nuswide", root=str(NUS), labels_file="nus_val.txt", label_space="1006")
    assert tuple(z.targets.shape) == (50720, 1006)
    assert bool((z.targets[:, z.labels.seen] == 0).all())  # tags unknown in a concept list
    assert np.array_equal(z.targets[:, z.labels.unseen].numpy(), ds.targets.numpy())
    with pytest.raises(DataError, match="925 seen tags need"):
        load_dataset("nuswide", root=str(NUS), labels_file="nus_val.txt", label_space="925")


def _official(tmp: Path, concepts: list[str], tags: list[str]) -> Path:
    root = tmp / "NUS-WIDE"
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "TestImagelist.txt").write_text(
        "actor\\0001_11.jpg\r\nairport\\0002_22.jpg\r\nbeach\\0003_33.jpg\r\n")
    gt = root / "Groundtruth" / "TrainTestLabels"
    gt.mkdir(parents=True)
    pos = {"airport": [0], "animal": [0, 2], "whales": [2]}  # concept -> image rows
    for c in concepts:
        (gt / f"Labels_{c}_Test.txt").write_text(
            "".join(f"{int(r in pos.get(c, []))}\n" for r in range(3)))
    # "sky" and "airport" are concepts and tags: as tags they are not seen labels
    tagged = {0: ["nature", "sky", "airport"], 1: [], 2: ["blue"]}
    rows = ["\t".join("1" if t in tagged[r] else "0" for t in tags) for r in range(3)]
    (root / "NUS_WID_Tags").mkdir()
    (root / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text("\n".join(rows) + "\n")
    return root


@needs_nus
def test_official_layout_by_hand(tmp_path: Path) -> None:
    concepts, tags = _names(NUS / "Concepts81.txt"), _names(NUS / "TagList1k.txt")
    root = _official(tmp_path, concepts, tags)
    kw = dict(root=str(root), split="test", concepts=str(NUS / "Concepts81.txt"),
              tags=str(NUS / "TagList1k.txt"))
    ds = load_dataset("nuswide", label_space="81", **kw)
    assert ds.ids == ["0001_11", "0002_22", "0003_33"]
    assert ds.paths[0] == root / "Flickr" / "actor" / "0001_11.jpg"
    expect = -np.ones((3, 81), int)
    for c, rs in {"airport": [0], "animal": [0, 2], "whales": [2]}.items():
        expect[rs, concepts.index(c)] = 1
    np.testing.assert_array_equal(ds.targets.numpy(), expect)
    assert ds.info["num_no_label"] == 1
    z = load_dataset("nuswide", label_space="1006", **kw)
    names = list(z.labels.names)
    t = z.targets.numpy()
    assert t[0, names.index("nature")] == 1 and t[2, names.index("blue")] == 1
    assert int((t[:, :925] == 1).sum()) == 2
    assert names.index("sky") >= 925 and names.count("sky") == 1
    np.testing.assert_array_equal(t[:, 925:], expect)
    s = load_dataset("nuswide", label_space="925", no_label="drop", **kw)
    assert len(s.labels) == 925 and s.ids == ["0001_11", "0003_33"]
    assert s.info["num_dropped"] == 1
    d = load_dataset("nuswide", label_space="81", no_label="drop", **kw)
    assert d.ids == ["0001_11", "0003_33"]


@needs_nus
def test_official_layout_bad_rows(tmp_path: Path) -> None:
    concepts, tags = _names(NUS / "Concepts81.txt"), _names(NUS / "TagList1k.txt")
    root = _official(tmp_path, concepts, tags)
    f = root / "NUS_WID_Tags" / "Test_Tags1k.dat"
    lines = f.read_text().splitlines()
    lines[1] = lines[1][:-1] + "2"
    f.write_text("\n".join(lines) + "\n")
    kw = dict(root=str(root), split="test", concepts=str(NUS / "Concepts81.txt"),
              tags=str(NUS / "TagList1k.txt"), label_space="1006")
    with pytest.raises(DataError, match=r"Test_Tags1k.dat:2: expected 1000 values 0/1"):
        load_dataset("nuswide", **kw)
    z = load_dataset("nuswide", skip_bad=True, **kw)
    assert bool((z.targets[1, :925] == 0).all()) and len(z.info["skipped"]) == 1
    (root / "Groundtruth" / "TrainTestLabels" / "Labels_beach_Test.txt").write_text("0\n1\n")
    with pytest.raises(DataError, match="Labels_beach_Test.txt: 2 lines but TestImagelist.txt "
                       "lists 3 images"):
        load_dataset("nuswide", **kw)
    with pytest.raises(DataError, match="label_space="):
        load_dataset("nuswide", root=str(root), label_space="1000")
