"""COCO JSON and YOLO loaders on coco128: same label matrix, both checked against raw files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mlrkit.data import DataError, load_dataset

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
C128 = DATA / "coco128"
needs_coco128 = pytest.mark.skipif(not (C128 / "instances_train2017.json").is_file(),
                                   reason=f"coco128 not found under {C128} (set MLRKIT_DATA)")


def _coco() -> object:
    return load_dataset("coco", root=str(C128), annotations=str(C128 / "instances_train2017.json"),
                        split="train2017")


@needs_coco128
def test_coco_json_and_yolo_give_the_same_matrix() -> None:
    a = _coco()
    b = load_dataset("yolo", root=str(C128), split="train2017")
    assert tuple(a.targets.shape) == (128, 80) == tuple(b.targets.shape)
    assert sorted(a.ids) == b.ids
    order = [a.ids.index(i) for i in b.ids]
    assert torch.equal(a.targets[order], b.targets)
    names = yaml.safe_load((C128 / "config.yaml").read_text())["names"]
    assert list(a.labels.names) == [names[i] for i in range(80)] == list(b.labels.names)
    assert all(p.is_file() for p in a.paths) and all(p.is_file() for p in b.paths)


@needs_coco128
def test_yolo_matches_label_files_read_directly() -> None:
    b = load_dataset("yolo", root=str(C128), split="train2017")
    for r, stem in enumerate(b.ids):
        f = C128 / "labels" / "train2017" / f"{stem}.txt"
        classes = {int(ln.split()[0]) for ln in f.read_text().splitlines()} if f.exists() else set()
        assert set((b.targets[r] == 1).nonzero().flatten().tolist()) == classes
    # label files without an image are left out, images without labels are background
    assert b.info["labels_without_image"] == ["000000000656", "000000000659"]
    assert b.info["num_background"] == 2


@needs_coco128
def test_coco_matches_json_read_directly_and_drop_empty() -> None:
    a = _coco()
    data = json.loads((C128 / "instances_train2017.json").read_text())
    cat_ids = sorted(c["id"] for c in data["categories"])
    by_file = {im["id"]: im["file_name"] for im in data["images"]}
    truth: dict[str, set[int]] = {Path(f).stem: set() for f in by_file.values()}
    for ann in data["annotations"]:
        truth[Path(by_file[ann["image_id"]]).stem].add(cat_ids.index(ann["category_id"]))
    for r, i in enumerate(a.ids):
        assert set((a.targets[r] == 1).nonzero().flatten().tolist()) == truth[i]
    assert bool((a.targets != 0).all())  # full labels
    empty = sorted(i for i, s in truth.items() if not s)
    assert empty == ["000000000250", "000000000508"]
    d = load_dataset("coco", root=str(C128), annotations=str(C128 / "instances_train2017.json"),
                     split="train2017", drop_empty=True)
    assert len(d) == 126 and not set(empty) & set(d.ids)


def _mini_json(tmp: Path) -> Path:
    data = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"}],
            "categories": [{"id": 90, "name": "z"}, {"id": 3, "name": "a"}],
            "annotations": [{"image_id": 1, "category_id": 90, "iscrowd": 1},
                            {"image_id": 2, "category_id": 3},
                            {"image_id": 2, "category_id": 7}]}
    p = tmp / "inst.json"
    p.write_text(json.dumps(data))
    return p


def test_coco_sorted_category_ids_crowd_and_bad_annotation(tmp_path: Path) -> None:
    p = _mini_json(tmp_path)
    with pytest.raises(DataError, match=r"inst.json: annotations\[2\]: category_id 7"):
        load_dataset("coco", annotations=str(p))
    ds = load_dataset("coco", annotations=str(p), skip_bad=True)
    assert ds.labels.names == ("a", "z")  # category id 3 before 90
    assert ds.targets.tolist() == [[-1, 1], [1, -1]]
    assert len(ds.info["skipped"]) == 1 and ds.info["category_ids"] == [3, 90]
    ds = load_dataset("coco", annotations=str(p), skip_bad=True, crowd="ignore")
    assert ds.targets.tolist() == [[-1, -1], [1, -1]]
    (tmp_path / "broken.json").write_text('{"images": [,]}')
    with pytest.raises(DataError, match="broken.json:1: not valid JSON"):
        load_dataset("coco", annotations=str(tmp_path / "broken.json"))


def test_yolo_bad_lines_names_and_labels_only(tmp_path: Path) -> None:
    lab = tmp_path / "labels" / "val"
    lab.mkdir(parents=True)
    (lab / "p.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    (lab / "q.txt").write_text("1 0.5 0.5 0.1 0.1\n93 0.1 0.1 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("names: [cat, dog, bird]\n")
    with pytest.raises(DataError, match=r"q.txt:2: class index 93 out of range 0..2"):
        load_dataset("yolo", root=str(tmp_path), split="val")
    ds = load_dataset("yolo", root=str(tmp_path), split="val", skip_bad=True)
    assert ds.ids == ["p", "q"] and ds.labels.names == ("cat", "dog", "bird")
    assert ds.targets.tolist() == [[1, -1, 1], [-1, 1, -1]]
    assert ds.info["skipped"][0].endswith("q.txt:2: class index 93 out of range 0..2")
    (lab / "q.txt").write_text("x 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="q.txt:1: class index 'x' is not an integer"):
        load_dataset("yolo", root=str(tmp_path), split="val")
    ds = load_dataset("yolo", root=str(tmp_path), split="val", names=["a", "b", "c"],
                      skip_bad=True)
    assert ds.labels.names == ("a", "b", "c")
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(DataError, match="pass names="):
        load_dataset("yolo", root=str(tmp_path), split="val")


@needs_coco128
def test_yolo_image_rows_and_coco_image_paths(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "images" / "s").mkdir(parents=True)
    (root / "labels" / "s").mkdir(parents=True)
    src = C128 / "images" / "train2017" / "000000000009.jpg"
    shutil.copy(src, root / "images" / "s" / "a.jpg")
    shutil.copy(src, root / "images" / "s" / "b.jpg")
    (root / "labels" / "s" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    ds = load_dataset("yolo", root=str(root), split="s", names=["u", "v"])
    assert ds.ids == ["a", "b"] and ds.targets.tolist() == [[-1, 1], [-1, -1]]
    img, _ = ds[1]
    assert img.size == (640, 480)
