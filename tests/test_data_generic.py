"""CSV and JSON Lines label files (bring your own data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrkit.data import DataError, load_dataset


def test_csv_header_names_from_data_and_unknown_column(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_text("image,labels,unknown\nimgs/a.jpg,cat;dog,\nimgs/b.jpg,,dog\n"
                 "imgs/c.jpg,bird,cat;dog\n")
    ds = load_dataset("csv", labels_file=str(f))
    assert ds.labels.names == ("bird", "cat", "dog")
    assert ds.targets.tolist() == [[-1, 1, 1], [-1, -1, 0], [1, 0, 0]]
    assert ds.ids == ["imgs/a", "imgs/b", "imgs/c"]
    assert ds.paths[0] == tmp_path / "imgs" / "a.jpg"
    ds = load_dataset("csv", root=str(tmp_path), labels_file="labels.csv",
                      names=["dog", "cat", "bird", "fish"], image_dir="/data")
    assert ds.targets.tolist()[0] == [1, 1, -1, -1]
    assert ds.paths[2] == Path("/data/imgs/c.jpg")


def test_csv_without_header_and_bad_rows(tmp_path: Path) -> None:
    f = tmp_path / "l.csv"
    f.write_text("a.jpg,cat\nb.jpg,cat;cow\nc.jpg,dog,dog\na.jpg,dog\nd.jpg,dog\n")
    with pytest.raises(DataError, match=r"l.csv:2: unknown class name 'cow'"):
        load_dataset("csv", labels_file=str(f), names=["cat", "dog"])
    ds = load_dataset("csv", labels_file=str(f), names=["cat", "dog"], skip_bad=True)
    assert ds.ids == ["a", "d"]
    assert ds.targets.tolist() == [[1, -1], [-1, 1]]
    assert ds.info["skipped"] == [
        "l.csv:2: unknown class name 'cow'; known names are set by names=",
        "l.csv:3: class 'dog' is both a label and unknown",
        "l.csv:4: duplicate image 'a.jpg' (first on line 1)"]
    g = tmp_path / "m.csv"
    g.write_text("path,labels\na.jpg,x,y,z\n")
    with pytest.raises(DataError, match="m.csv:2: malformed row"):
        load_dataset("csv", labels_file=str(g))


def test_jsonl_names_indices_unknown_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "l.jsonl"
    f.write_text('{"image": "a.jpg", "labels": ["cat"]}\n'
                 '\n'
                 '{"image": "b.jpg", "labels": [1], "unknown": ["cat"]}\n')
    ds = load_dataset("jsonl", labels_file=str(f), names=["cat", "dog"])
    assert ds.targets.tolist() == [[1, -1], [0, 1]]
    with pytest.raises(DataError, match="l.jsonl:3: 'labels': class index 1 needs names="):
        load_dataset("jsonl", labels_file=str(f))
    f.write_text('{"image": "a.jpg", "labels": ["cat"]}\n{"image": "b.jpg", "labels": [5]}\n'
                 '{"image": "c.jpg", "labels": "cat"}\n{"img": "d.jpg"}\nnot json\n')
    with pytest.raises(DataError, match=r"l.jsonl:2: 'labels': class index 5 out of range"):
        load_dataset("jsonl", labels_file=str(f), names=["cat", "dog"])
    ds = load_dataset("jsonl", labels_file=str(f), names=["cat", "dog"], skip_bad=True)
    assert ds.ids == ["a"] and len(ds.info["skipped"]) == 4
    assert ds.info["skipped"][3] == "l.jsonl:5: not valid JSON (Expecting value)"
