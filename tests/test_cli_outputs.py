"""What the command line hands a user: the best checkpoint's table after training, HTML
reports from train and eval, predictions for a folder as CSV, attention overlays."""

from __future__ import annotations

import csv
import io

import yaml
from PIL import Image

from conftest import make_color_images
from mlrkit import cli


def _dlsa_config(tmp):
    tr = make_color_images(tmp / "imgs", 24, size=64)
    va = make_color_images(tmp / "val", 12, size=64, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {
        "name": "dlsa", "seed": 0, "output_dir": str(tmp / "runs"),
        "model": {"name": "dlsa", "backbone": "efficientnet_lite0", "pretrained": True,
                  "freeze_backbone": True, "label_embeddings": "glove50",
                  "label_graph": "cooccurrence", "options": {"d1": 16, "d2": 32, "heads": 2}},
        "data": {"train": {"name": "list", "labels_file": str(tr), "names": names},
                 "val": {"name": "list", "labels_file": str(va), "names": names},
                 "image_size": 64, "batch_size": 8, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp / "cache")},
        "optim": {"name": "adam", "lr": 1e-2},
        "train": {"epochs": 2, "progress": False, "amp": "none"},
    }
    p = tmp / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_train_eval_predict_outputs(tmp_path, capsys):
    cfg = _dlsa_config(tmp_path)
    assert cli.main(["train", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "dlsa"
    assert "best checkpoint: epoch" in out and "of 2" in out
    assert (run / "report" / "index.html").exists() and f"report: {run / 'report'}" in out

    assert cli.main(["eval", "--checkpoint", str(run), "--report", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "mAP" in html and "<img" in html
    capsys.readouterr()

    assert cli.main(["predict", "--checkpoint", str(run), "--csv", "--top-k", "2",
                     str(tmp_path / "val")]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["image", "labels", "red", "green", "blue"]
    assert len(rows) == 13 and all(1 <= len(r[1].split(";")) <= 2 for r in rows[1:])
    assert [r[0] for r in rows[1:]] == sorted(str(p) for p in (tmp_path / "val").glob("*.png"))

    over = tmp_path / "over"
    assert cli.main(["predict", "--checkpoint", str(run), "--overlay", str(over),
                     str(tmp_path / "val" / "img0000.png"),
                     str(tmp_path / "val" / "img0001.png")]) == 0
    files = sorted(over.glob("*.png"))
    assert [f.name for f in files] == ["00000_img0000.png", "00001_img0001.png"]
    w, h = Image.open(files[0]).size
    assert w > h  # the image and one panel per top class, side by side


def test_predict_folder_without_images_is_an_error(tmp_path, capsys):
    cfg = _dlsa_config(tmp_path)
    assert cli.main(["train", "--config", str(cfg), "--no-report",
                     "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "runs" / "dlsa"),
                     str(empty)]) == 1
    assert "no image files in this folder" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "dlsa" / "report").exists()
