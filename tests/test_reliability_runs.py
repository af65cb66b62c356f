"""Runs under real use: cache keys that name the weights, shared caches, locked run
directories, unreadable images."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import make_color_images, write_config
from mlrkit import cli
from mlrkit.config import load_config
from mlrkit.data.base import DataError, check_image
from mlrkit.data.cache import FeatureCache, cache_key, default_transform, extract_features
from mlrkit.engine.distributed import GlobalBatchSampler
from mlrkit.engine.evaluation import evaluate_checkpoint
from mlrkit.engine.trainer import train
from mlrkit.io import FileLock, LockedError, open_rgb
from mlrkit.predict import Predictor
from test_cache import Pictures, Tiny


def _config(tmp: Path, n_train: int = 24, **over) -> Path:
    labels = make_color_images(tmp / "imgs", n_train, size=32)
    val = make_color_images(tmp / "val", 12, size=32, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {
        "name": "run", "seed": 0, "output_dir": str(tmp / "runs"),
        "model": {"name": "baseline", "backbone": "efficientnet_lite0", "pretrained": True,
                  "freeze_backbone": True},
        "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                 "val": {"name": "list", "labels_file": str(val), "names": names},
                 "image_size": 32, "batch_size": 8, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp / "cache")},
        "optim": {"name": "adam", "lr": 1e-2},
        "train": {"epochs": 2, "progress": False, "amp": "none"},
    }
    return write_config(tmp / "config.yaml", cfg, over)


def _caches(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


# ------------------------------------------------------------- 1. the key names the weights
def test_eval_never_reports_another_checkpoints_numbers(tmp_path, monkeypatch):
    cfg = load_config(_config(tmp_path))
    train(cfg)
    run = tmp_path / "runs" / "run"
    assert len(_caches(tmp_path / "cache")) == 2  # train and val
    own, _ = evaluate_checkpoint(run)

    # evaluating the same checkpoint again reads the cache: nothing is extracted
    import mlrkit.data.cache as fc

    def no_extraction(*a, **k):
        raise AssertionError("re-extracted features although nothing changed")

    monkeypatch.setattr(fc, "_extract", no_extraction)
    again, _ = evaluate_checkpoint(run)
    assert again.summary == own.summary
    monkeypatch.undo()

    # a copy of the checkpoint with its stem convolution zeroed: other weights, other cache
    other = tmp_path / "other"
    other.mkdir()
    state = load_file(run / "best.safetensors")
    stem = [k for k in state if "conv_stem" in k and k.endswith("weight")]
    assert stem
    for k in stem:
        state[k] = torch.zeros_like(state[k])
    save_file(state, other / "best.safetensors")
    shutil.copy(run / "best.json", other / "best.json")
    cached, _ = evaluate_checkpoint(other)
    assert len(_caches(tmp_path / "cache")) == 3  # the copy's val features are its own
    direct, _ = evaluate_checkpoint(other, ["data.cache=false"])
    assert cached.summary["mAP"] == pytest.approx(direct.summary["mAP"], abs=1e-6)
    assert cached.summary["mAP"] != pytest.approx(own.summary["mAP"], abs=1e-3)


# ------------------------------------------------------------- 2. a cache shared by two runs
class SlowTiny(Tiny):
    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return super().forward_map(images)


def _extract_child(path: str, queue) -> None:
    bb, ds = SlowTiny(), Pictures(12)
    try:
        extract_features(bb, ds, path, batch_size=2, progress=False)
        queue.put(("ok", bb.seen))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(e)))


def test_two_writers_of_one_new_cache(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_extract_child, args=(str(tmp_path / "c"), queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [queue.get(timeout=5) for _ in procs]
    assert all(r[0] == "ok" for r in results), results
    assert sorted(r[1] for r in results) == [0, 12]  # extracted once, reused once
    bb, ds = SlowTiny(), Pictures(12)
    cache = FeatureCache.open(tmp_path / "c", expected_key=cache_key(bb, ds,
                                                                     default_transform(bb)))
    with torch.no_grad():
        ref = bb.forward_map(default_transform(bb)(ds.load_image(7))[None])[0]
    torch.testing.assert_close(cache.get(7), ref.half().float())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c.lock"]


def test_broken_published_cache_is_rebuilt(tmp_path):
    bb, ds = Tiny(), Pictures(6)
    extract_features(bb, ds, tmp_path / "c", progress=False)
    (tmp_path / "c" / "targets.npy").unlink()  # what a second writer once left behind
    (tmp_path / "c" / "features.npy").unlink()
    cache = extract_features(bb, ds, tmp_path / "c", progress=False)
    assert bb.seen == 12 and len(cache) == 6
    assert FeatureCache.open(tmp_path / "c").get(5).shape == (8, 4, 4)


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    bb, ds = Tiny(), Pictures(10, fail_at=6)
    with pytest.raises(RuntimeError):
        extract_features(bb, ds, tmp_path / "c", batch_size=3, progress=False)
    stale = tmp_path / "c.partial" / ".progress.json.x1y2.tmp"
    stale.write_text("half")
    ds.fail_at = None
    extract_features(bb, ds, tmp_path / "c", batch_size=3, progress=False)
    assert not stale.exists() and not (tmp_path / "c.partial").exists()


# ------------------------------------------------------------- 3. one run per run directory
def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    cfg_path = _config(tmp_path, n_train=8, **{"train.epochs": 1})
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    stale = run / ".log.csv.abc123.tmp"
    stale.write_text("torn")
    with FileLock(run / ".lock"):  # another process's run
        with pytest.raises(LockedError, match="run directory .*in use by another"):
            train(load_config(cfg_path))
        assert cli.main(["train", "--config", str(cfg_path)]) == 1
        err = capsys.readouterr().err
        assert "in use by another mlrkit process (pid" in err
        assert not (run / "config.yaml").exists() and stale.exists()  # nothing touched
    train(load_config(cfg_path))  # once it is free
    assert (run / "best.safetensors").exists() and not stale.exists()


# ------------------------------------------------------------- 4. unreadable images
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header for a 1-bit image of the given size, with no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def _spoil(labels: Path) -> list[str]:
    """Make three of the listed images unreadable in the ways users meet; their names."""
    folder = labels.parent
    good = (folder / "img0003.png").read_bytes()
    Image.open(folder / "img0003.png").convert("RGB").save(folder / "img0003.jpg", quality=95)
    jpg = (folder / "img0003.jpg").read_bytes()
    (folder / "img0003.jpg").write_bytes(jpg[: len(jpg) // 2])  # truncated JPEG
    (folder / "img0005.png").write_bytes(b"")  # zero bytes
    (folder / "img0007.jpg").write_text("not an image\n")  # text named .jpg
    text = labels.read_text().replace("img0003.png", "img0003.jpg").replace(
        "img0007.png", "img0007.jpg")
    labels.write_text(text)
    assert good
    return ["img0003.jpg", "img0005.png", "img0007.jpg"]


def test_check_image_names_each_kind_of_bad_file(tmp_path):
    labels = make_color_images(tmp_path / "imgs", 8, size=32)
    bad = _spoil(labels)
    for name in bad:
        reason = check_image(tmp_path / "imgs" / name)
        assert reason is not None and name in reason
    assert check_image(tmp_path / "imgs" / "img0001.png") is None
    bomb = tmp_path / "imgs" / "huge.png"
    bomb.write_bytes(_png_claiming(20000, 20000))
    with pytest.raises(ValueError, match=r"huge\.png.*data\.max_image_pixels"):
        open_rgb(bomb)
    # the limit is a setting: 32 x 32 = 1024 pixels is over twice a limit of 100
    small = tmp_path / "imgs" / "img0001.png"
    with pytest.raises(ValueError, match=r"img0001\.png.*max_image_pixels"):
        open_rgb(small, max_pixels=100)
    before = Image.MAX_IMAGE_PIXELS
    assert open_rgb(small, max_pixels=0).size == (32, 32)
    assert Image.MAX_IMAGE_PIXELS == before  # the limit applies to the call, not the process


def test_skip_bad_images_in_train_extract_eval_and_predict(tmp_path, capsys):
    cfg_path = _config(tmp_path, n_train=16, **{"data.num_workers": 2, "data.cache": False,
                                                "model.freeze_backbone": False,
                                                "train.epochs": 1})
    labels = tmp_path / "imgs" / "labels.txt"
    bad = _spoil(labels)

    # without --skip-bad: one line naming a bad file, also from a DataLoader worker
    assert cli.main(["train", "--config", str(cfg_path)]) == 1
    err = capsys.readouterr().err.splitlines()[0]
    assert any(name in err for name in bad) and "cannot decode image" in err, err
    assert "DataLoader worker" not in err

    assert cli.main(["train", "--config", str(cfg_path), "--skip-bad",
                     "--set", "name=skipping"]) == 0
    skipped = (tmp_path / "runs" / "skipping" / "skipped.txt").read_text().splitlines()
    assert sorted(Path(s.split(":")[0]).name for s in skipped) == bad
    capsys.readouterr()

    assert cli.main(["extract-features", "--config", str(cfg_path), "--skip-bad"]) == 0
    out = capsys.readouterr()
    assert "train: 13 feature maps" in out.out and all(n in out.err for n in bad)

    run = tmp_path / "runs" / "skipping"
    assert cli.main(["eval", "--checkpoint", str(run), "--skip-bad", "--json",
                     "--set", f"data.val.labels_file={labels}"]) == 0
    out = capsys.readouterr()
    assert "mAP" in json.loads(out.out) and all(n in out.err for n in bad)
    report, _ = evaluate_checkpoint(run, ["data.skip_bad=true",
                                          f"data.val.labels_file={labels}"])
    assert report.num_images == 13 and len(report.skipped) == 3

    images = [str(tmp_path / "imgs" / n) for n in ("img0001.png", bad[0], "img0002.png")]
    pred = Predictor.from_checkpoint(run, device="cpu")
    with pytest.raises(DataError, match=bad[0]):
        pred.predict(images)
    res = pred.predict(images, skip_bad=True)
    assert [r.error is None for r in res] == [True, False, True] and bad[0] in res[1].error
    # one path = one image (a batch of 2 and of 1 may differ in the last float bits)
    assert res[0].scores == pytest.approx(pred.predict(images[0])[0].scores, rel=1e-5)
    assert cli.main(["predict", "--checkpoint", str(run), "--json", "--skip-bad",
                     *images]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [("error" in x) for x in lines] == [False, True, False]


def test_max_image_pixels_setting(tmp_path, capsys):
    cfg_path = _config(tmp_path, n_train=8, **{"train.epochs": 1, "data.cache": False,
                                               "data.max_image_pixels": 100})
    assert cli.main(["train", "--config", str(cfg_path)]) == 1
    err = capsys.readouterr().err.splitlines()[0]
    assert ".png" in err and "data.max_image_pixels" in err


def test_cli_error_line_of_a_worker_error():
    e = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                  "(most recent call last):\n  File \"x.py\", line 1, in f\n"
                  "mlrkit.data.base.DataError: /d/a.jpg: cannot decode image (truncated)\n")
    assert cli.error_line(e) == "/d/a.jpg: cannot decode image (truncated)"
    assert cli.error_line(ValueError("first\nsecond")) == "first"


# ------------------------------------------------------------- 6. one process = N ranks
@pytest.mark.parametrize("n,batch,world", [(11, 5, 2), (9, 4, 2), (7, 8, 3), (12, 4, 4)])
def test_global_batches_are_shared_out_without_loss(n, batch, world):
    single = list(GlobalBatchSampler(n, batch, shuffle=True, seed=5))
    ranks = [list(GlobalBatchSampler(n, batch, world, r, shuffle=True, seed=5))
             for r in range(world)]
    assert all(len(r) == len(single) == -(-n // batch) for r in ranks)
    for step, one in enumerate(single):
        assert all(real for _, real in one)
        real = sorted(i for r in ranks for i, ok in r[step] if ok)
        assert real == sorted(i for i, _ in one)  # the same global batch, each row once
        assert all(len(r[step]) >= 1 for r in ranks)  # every rank takes part in the step
    torch_order = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert [i for b in single for i, _ in b] == torch_order
    assert np.unique([i for b in single for i, _ in b]).size == n
