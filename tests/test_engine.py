"""Training engine: resume after SIGKILL, 2-process DDP, checkpoints, schedules, EMA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_color_images, write_config
from mlrkit.config import load_config
from mlrkit.engine.optim import build_optimizer, build_scheduler

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _config(tmp: Path, n_train: int = 48, **over) -> Path:
    labels = make_color_images(tmp / "imgs", n_train, size=32)
    val = make_color_images(tmp / "val", 16, size=32, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {
        "name": "run", "seed": 3, "output_dir": str(tmp / "runs"),
        "model": {"name": "baseline", "backbone": "efficientnet_lite0", "pretrained": False,
                  "options": {"dropout": 0.2}},
        "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                 "val": {"name": "list", "labels_file": str(val), "names": names},
                 "image_size": 32, "batch_size": 8, "num_workers": 0,
                 "cache_dir": str(tmp / "cache")},
        "optim": {"name": "adamw", "lr": 1e-3, "backbone_lr_mult": 0.1},
        "sched": {"name": "cosine", "warmup_epochs": 1},
        # float32: the comparisons below are exact (amp auto picks bf16 on AMX CPUs)
        "train": {"epochs": 3, "progress": False, "ema": 0.9, "amp": "none"},
    }
    return write_config(tmp / "config.yaml", cfg, over)


def _mlrkit(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlrkit", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _epoch_of(run: Path) -> int:
    st = torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)
    return int(st["epoch"])


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    cfg = _config(tmp_path)
    full = _mlrkit("train", "--config", str(cfg), "--set", "name=full")
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out

    killed = _mlrkit("train", "--config", str(cfg), "--set", "name=killed")
    state = tmp_path / "runs" / "killed" / "train_state.pt"
    deadline = time.time() + 300
    while not state.exists():  # written at the very end of epoch 1
        assert killed.poll() is None, killed.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert _epoch_of(tmp_path / "runs" / "killed") == 1, "the kill must land in epoch 2"

    resumed = _mlrkit("train", "--resume", str(tmp_path / "runs" / "killed"))
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out

    a = load_file(tmp_path / "runs" / "full" / "last.safetensors")
    b = load_file(tmp_path / "runs" / "killed" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a = (tmp_path / "runs" / "full" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "runs" / "killed" / "log.csv").read_text().splitlines()
    strip = [lambda rows: [",".join(r.split(",")[:3]) for r in rows]][0]  # epoch, loss, lr
    assert strip(log_a) == strip(log_b) and len(log_a) == 4


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    # 11 images in global batches of 5: each batch of 5 gets a padding row, the last one (1
    # image) leaves rank 1 only padding, and partial labels give the ranks different
    # counts of known entries
    cfg = _config(tmp_path, n_train=11, **{
        "model.options": {}, "model.freeze_backbone": True, "model.pretrained": True,
        "data.cache": True,
        "data.batch_size": 5, "data.protocol": "partial:0.5", "train.epochs": 2,
        "train.ema": 0.0, "sched.name": "none", "optim.name": "sgd"})
    single = _mlrkit("train", "--config", str(cfg), "--set", "name=single")
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mlrkit", "train", "--config", str(cfg), "--set", "name=ddp"],
        env=ENV, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    a = load_file(tmp_path / "runs" / "single" / "last.safetensors")
    b = load_file(tmp_path / "runs" / "ddp" / "last.safetensors")
    before = load_file(tmp_path / "runs" / "single" / "last.safetensors")
    assert not torch.equal(a["head.fc.weight"], torch.zeros_like(before["head.fc.weight"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # the metrics were computed on all 16 validation images, gathered from both ranks
    m_single = yaml.safe_load((tmp_path / "runs" / "single" / "metrics.json").read_text())
    m_ddp = yaml.safe_load((tmp_path / "runs" / "ddp" / "metrics.json").read_text())
    assert m_single["final"]["mAP"] == pytest.approx(m_ddp["final"]["mAP"], abs=1e-4)


def test_train_eval_predict_in_process(tmp_path):
    from mlrkit import Predictor
    from mlrkit.engine.evaluation import evaluate_checkpoint
    from mlrkit.engine.trainer import train

    cfg = load_config(_config(tmp_path, **{"train.epochs": 2}))
    trainer = train(cfg)
    run = tmp_path / "runs" / "run"
    for f in ("config.yaml", "metrics.json", "log.csv", "last.safetensors", "last.json",
              "best.safetensors", "best.json", "train_state.pt"):
        assert (run / f).exists(), f
    report, names = evaluate_checkpoint(run / "last.safetensors")
    assert names == ["red", "green", "blue"]
    # the weights saved in `last` (raw or EMA, whichever scored better) give exactly the
    # scores of the final validation
    assert report.to_dict()["mAP"] == pytest.approx(trainer.report.to_dict()["mAP"], abs=1e-4)
    import csv
    import json

    rows = list(csv.DictReader((run / "log.csv").read_text().splitlines()))
    last = json.loads((run / "last.json").read_text())
    for row in rows:  # both weights were scored; the epoch's mAP is the better one
        assert float(row["mAP"]) == max(float(row["mAP_raw"]), float(row["mAP_ema"]))
    assert last["weights"] == ("ema" if float(rows[-1]["mAP_ema"]) >= float(rows[-1]["mAP_raw"])
                               else "raw")
    pred = Predictor.from_checkpoint(run / "last.safetensors", device="cpu")
    res = pred.predict([tmp_path / "val" / "img0000.png"], threshold=0.0)
    assert set(res[0].labels) == {"red", "green", "blue"}
    assert all(0.0 <= v <= 1.0 for v in res[0].scores.values())


def _toy_model():
    from mlrkit import create_model

    return create_model("baseline", backbone="cached", in_dim=4, num_classes=3)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_backbone_lr_multiplier(name):
    from mlrkit import create_model

    m = create_model("baseline", backbone="efficientnet_lite0", num_classes=3)
    opt = build_optimizer(m, load_config(None, [f"optim.name={name}", "optim.lr=0.1",
                                                "optim.backbone_lr_mult=0.01"]).optim)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"head": pytest.approx(0.1), "backbone": pytest.approx(0.001)}
    n_bb = sum(p.numel() for p in m.backbone.parameters())
    assert sum(p.numel() for g in opt.param_groups if g["name"] == "backbone"
               for p in g["params"]) == n_bb


def test_cosine_warmup_schedule_values():
    m = _toy_model()
    cfg = load_config(None, ["optim.lr=1.0", "sched.name=cosine", "sched.warmup_epochs=1"])
    opt = build_optimizer(m, cfg.optim)
    sched = build_scheduler(opt, cfg.sched, epochs=3, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_batch()
    # warm-up: (k+1)/4 for k < 4; then 0.5 (1 + cos(pi (k-4)/8))
    import math
    expect = [(k + 1) / 4 for k in range(4)] + [
        0.5 * (1 + math.cos(math.pi * (k - 4) / 8)) for k in range(4, 12)]
    assert lrs == pytest.approx(expect)


def test_plateau_and_step_schedules():
    m = _toy_model()
    cfg = load_config(None, ["optim.lr=1.0", "sched.name=plateau", "sched.patience=1"])
    opt = build_optimizer(m, cfg.optim)
    s = build_scheduler(opt, cfg.sched, 10, 1)
    for metric in [50, 60, 60, 60]:  # one improvement, then 2 flat epochs > patience 1
        s.step_epoch(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    cfg = load_config(None, ["optim.lr=1.0", "sched.name=step", "sched.step_size=2"])
    opt = build_optimizer(m, cfg.optim)
    s = build_scheduler(opt, cfg.sched, 10, 1)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step_epoch(None)
    assert seen == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_ema_update_rule():
    from mlrkit.engine.ema import ModelEMA

    m = _toy_model()
    ema = ModelEMA(m, 0.9, warmup=False)
    w0 = m.head.fc.weight.detach().clone()
    with torch.no_grad():
        m.head.fc.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.module.head.fc.weight, 0.9 * w0 + 0.1 * (w0 + 1.0))


def test_ema_warmup_follows_the_trained_weights():
    from mlrkit.engine.ema import ModelEMA

    m = _toy_model()
    ema = ModelEMA(m, 0.9997)
    w0 = m.head.fc.weight.detach().clone()
    ref = w0.clone()
    for t in range(200):  # the weights move by +1 per step
        with torch.no_grad():
            m.head.fc.weight.add_(1.0)
        d = min(0.9997, (1 + t) / (10 + t))
        ref = d * ref + (1 - d) * m.head.fc.weight.detach()
        ema.update(m)
    torch.testing.assert_close(ema.module.head.fc.weight, ref)
    # the initial weights keep almost no share of the average (0.9997^200 = 94 % without
    # the warm-up): weights that jump once by +1 and stay are followed within 1e-3
    for warmup, expect in ((True, 1e-3), (False, 0.94)):
        jump = _toy_model()
        avg = ModelEMA(jump, 0.9997, warmup=warmup)
        w = jump.head.fc.weight.detach().clone()
        with torch.no_grad():
            jump.head.fc.weight.add_(1.0)
        for _ in range(200):
            avg.update(jump)
        share = 1.0 - float((avg.module.head.fc.weight - w).mean())
        assert (share < expect) if warmup else share == pytest.approx(expect, abs=0.01)
    again = ModelEMA(m, 0.9997)
    again.load_state_dict(ema.state_dict())  # the update count survives a resume
    assert again.updates == 200 and again.current_decay() == ema.current_decay()


def test_checkpoint_is_atomic_on_failure(tmp_path, monkeypatch):
    from mlrkit.engine import checkpoint as ck

    m = _toy_model()
    ck.save_checkpoint(tmp_path / "best", m, {"version": "x"})
    before = (tmp_path / "best.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os if hasattr(ck, "os") else __import__("os"), "replace", boom)
    with torch.no_grad():
        m.head.fc.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path / "best", m, {"version": "x"})
    assert (tmp_path / "best.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_em_apl_pseudo_labels_driven_by_the_trainer(tmp_path):
    """The trainer feeds EM-APL every epoch's training predictions: after epoch 1 (its
    warm-up) each class gets floor(0.9 U_c / (num_epochs - warmup)) pseudo-negatives."""
    from mlrkit.engine.trainer import train

    cfg = load_config(_config(tmp_path, **{
        "train.epochs": 2, "train.ema": 0.0, "model.freeze_backbone": True,
        "model.options": {}, "data.cache": True, "data.protocol": "single_positive",
        "loss": {"name": "em_apl", "options": {"warmup_epochs": 1, "num_epochs": 3}}}))
    trainer = train(cfg)
    t = trainer.train_targets
    unobserved = (t == 0).sum(0)
    quota = torch.floor(0.9 * unobserved.double() / 2).long()
    chosen = trainer.loss_fn.pseudo_mask
    assert chosen is not None
    # epochs 1 and 2 both select (epoch >= warmup), never an observed entry
    torch.testing.assert_close(chosen.sum(0), torch.minimum(2 * quota, unobserved))
    assert not bool((chosen & (t != 0)).any())


def test_cli_extract_train_eval_predict(tmp_path, capsys):
    import json

    from mlrkit.cli import main

    cfg = _config(tmp_path, **{"train.epochs": 1, "train.ema": 0.0, "data.cache": True,
                               "model.freeze_backbone": True, "model.options": {}})
    assert main(["extract-features", "--config", str(cfg)]) == 0
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(caches) == 2  # train and val caches (beside their .lock files)
    assert main(["train", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "mAP" in out and "red" in out
    run = tmp_path / "runs" / "run"
    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(saved["final"]["mAP"], abs=1e-6)
    img = tmp_path / "val" / "img0001.png"
    assert main(["predict", "--checkpoint", str(run), str(img), "--json",
                 "--threshold", "0"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert line["labels"] and set(line["scores"]) == {"red", "green", "blue"}
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    assert main(["predict", "--checkpoint", str(run), str(broken)]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "cannot decode" in err and "Traceback" not in err


def test_backbone_trainable_prefixes():
    from conftest import REPO
    from mlrkit.engine.builders import build_model

    cfg = load_config(REPO / "configs" / "ssgrl_voc07_r101.yaml",
                      ["model.pretrained=false", "model.backbone=resnet50",
                       "model.label_embeddings=null", "model.label_graph=null"])
    C = 20
    sem = {"embeddings": torch.randn(C, 300), "graph": torch.eye(C)}
    model = build_model(cfg, C, sem)
    for n, p in model.backbone.named_parameters():
        assert p.requires_grad == n.startswith("body.layer4"), n
    assert all(p.requires_grad for p in model.head.parameters())
    cfg.model.backbone_trainable = ["body.layer9"]
    with pytest.raises(ValueError, match="backbone_trainable.*body.layer9.*body.layer4"):
        build_model(cfg, C, sem)
    cfg.data.cache = True  # a cached (frozen) backbone stays frozen
    cfg.model.backbone_trainable = ["body.layer4"]
    assert not any(p.requires_grad for p in build_model(cfg, C, sem).backbone.parameters())


def test_one_line_per_epoch_and_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from mlrkit.engine.trainer import train

    cfg = load_config(_config(tmp_path, n_train=16, **{
        "train.epochs": 2, "train.progress": True, "train.log": "tensorboard",
        "model.freeze_backbone": True, "data.cache": True, "train.ema": 0.0}))
    trainer = train(cfg)
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.startswith("epoch ")
             and "val mAP" in ln]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    assert all("ETA" in ln and "best" in ln for ln in lines) and lines[-1].endswith("ETA 0s")
    assert trainer.best_report is not None
    assert trainer.best_report.summary["mAP"] == pytest.approx(trainer.best["mAP"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "runs" / "run" / "tensorboard"))
    acc.Reload()
    maps = [e.value for e in acc.Scalars("val/mAP")]
    import csv

    rows = list(csv.DictReader((tmp_path / "runs" / "run" / "log.csv").open()))
    assert maps == pytest.approx([float(r["mAP"]) for r in rows])
