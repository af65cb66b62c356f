"""The training loop: one engine for every method, on one process or under ``torchrun``."""

from __future__ import annotations

import contextlib
import copy
import csv
import inspect
import io
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config, ConfigError
from ..io import FileLock, atomic_write_text, remove_stale_temps
from ..losses import create_loss
from ..metrics import choose_thresholds
from ..metrics import evaluate as evaluate_scores
from . import builders
from .checkpoint import (
    load_train_state,
    rng_state,
    save_checkpoint,
    save_train_state,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    all_reduce_sum,
    cleanup_distributed,
    gather_predictions,
    init_distributed,
)
from .ema import ModelEMA
from .optim import build_optimizer, build_scheduler
from .precision import amp_note, resolve_amp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: str):
    """The autocast context of a resolved ``amp`` (none | bf16 | fp16; see ``resolve_amp``)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and amp == "fp16":
        raise ConfigError("train.amp: fp16 autocast needs a GPU; use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader, device: torch.device, amp: str, cached: bool,
                   info: DistInfo, total: int, progress: bool = False,
                   label_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (N, C) over a loader's dataset, gathered across ranks, in dataset order;
    ``label_embeddings`` (C', E): an open-vocabulary model scores that label set instead."""
    kw = {} if label_embeddings is None else {"label_embeddings": label_embeddings.to(device)}
    model.eval()
    idx_all, out_all = [], []
    for x, _, idx, real in tqdm(loader, desc="eval", leave=False, disable=not progress):
        with autocast(device, amp):
            out = model(builders.as_model_input(x.to(device), cached), **kw)
        out_all.append(out.logits.float().cpu()[real])  # padding rows left out
        idx_all.append(idx[real])
    logits = torch.cat(out_all) if out_all else torch.empty(0, 0)
    return gather_predictions(torch.cat(idx_all), logits, info, total)


class Trainer:
    """Builds everything a config names and trains it; ``fit()`` returns the final metrics."""

    def __init__(self, cfg: Config, resume: str | Path | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(resume) if resume else cfg.run_dir
        self.resume = resume is not None
        device_type = "cuda" if (cfg.train.device in ("auto", "cuda")
                                 and torch.cuda.is_available()) else "cpu"
        self.info = init_distributed(device_type)
        self.device = builders.resolve_device(cfg.train.device, self.info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = cfg.train.progress and self.info.is_main
        self._run_lock: FileLock | None = None
        self._tb: Any = None  # TensorBoard writer (rank 0, train.log: tensorboard)
        self.best_report: Any = None  # the report of the best epoch (this process's run)

    def _claim_run_dir(self) -> None:
        """Lock the run directory for the whole run (rank 0), so a second run with the same
        name fails at once instead of mixing its files in; clear temp files of killed
        writes."""
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._run_lock = FileLock(self.run_dir / ".lock", blocking=False,
                                  what=f"run directory {self.run_dir}").acquire()
        remove_stale_temps(self.run_dir)
        if not self.resume and (self.run_dir / "train_state.pt").exists():
            raise ConfigError(f"{self.run_dir}: a run with this name exists; resume it with "
                              f"--resume {self.run_dir} or choose another --set name=...")

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.amp = resolve_amp(cfg.train.amp, self.device)
        note = amp_note(cfg.train.amp, self.amp, self.device)
        if note and self.info.is_main:
            print(note, file=sys.stderr)
        train_ds = builders.load_train_split(cfg)  # protocol drawn on the whole split
        val_ds = builders.load_split(cfg, "val")
        if val_ds.labels.names != train_ds.labels.names:
            raise ConfigError("data.val: its class names differ from data.train's")
        all_names = list(train_ds.labels.names)
        unseen = builders.unseen_mask(cfg, all_names)
        self.zero_shot: dict[str, Any] | None = None
        if unseen is not None:  # train and validate on the seen labels only
            from ..data.protocols import select_labels

            train_ds, val_ds = select_labels(train_ds, ~unseen), select_labels(val_ds, ~unseen)
            self.zero_shot = {"names": all_names,
                              "unseen": [n for n, u in zip(all_names, unseen.tolist()) if u]}
        self.labels = train_ds.labels
        self.val_targets = val_ds.targets
        self.skipped = list(train_ds.info.get("skipped", [])) + list(
            val_ds.info.get("skipped", []))
        self.semantics = builders.build_semantics(
            cfg, train_ds, all_names=all_names if unseen is not None else None)
        model = builders.build_model(cfg, len(self.labels), self.semantics,
                                     class_names=list(self.labels.names)).to(self.device)
        if cfg.model.prior_bias:  # from the training labels; --resume then loads the trained one
            model.init_prior_bias(train_ds.targets)
        # further loss terms; a teacher is the model as built, before any training step
        self.terms = [(t, create_loss(t.name, **t.options)) for t in cfg.loss.terms]
        self.teacher = None
        if any(t.teacher_model == "initial" for t, _ in self.terms):
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
        self.cached = cfg.data.cache
        if self.cached:
            train_in = builders.cached_dataset(cfg, model, train_ds, self.device, self.info)
            val_in = builders.cached_dataset(cfg, model, val_ds, self.device, self.info)
        else:
            train_ds.transform = builders.image_transform(cfg, model, train=True)
            val_ds.transform = builders.image_transform(cfg, model, train=False)
            train_in, val_in = train_ds, val_ds
        self.n_val = len(val_in)
        eval_bs = cfg.data.eval_batch_size or cfg.data.batch_size
        self.train_loader, self.train_sampler = builders.make_loader(
            train_in, cfg.data.batch_size, True, self.info, cfg.seed, cfg.data.num_workers)
        self.val_loader, _ = builders.make_loader(
            val_in, eval_bs - eval_bs % self.info.world_size or self.info.world_size, False,
            self.info, cfg.seed, cfg.data.num_workers)
        self.model = model
        self.ddp = (DistributedDataParallel(model, device_ids=[self.device.index]
                                            if self.device.type == "cuda" else None)
                    if self.info.enabled else model)
        self.loss_fn = create_loss(cfg.loss.name, **cfg.loss.options)
        # losses with state across epochs (EM-APL pseudo-labels) see dataset rows and the
        # epoch's predictions on the whole training set
        self.loss_takes_index = "index" in inspect.signature(self.loss_fn.forward).parameters
        self.loss_tracks_epochs = hasattr(self.loss_fn, "update_pseudo_labels")
        self.train_targets = train_ds.targets
        self.n_train = len(train_in)
        self.opt = build_optimizer(model, cfg.optim)
        self.sched = build_scheduler(self.opt, cfg.sched, cfg.train.epochs,
                                     len(self.train_loader))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(
            self.amp == "fp16" and self.device.type == "cuda"))
        self.ema = (ModelEMA(model, cfg.train.ema, warmup=cfg.train.ema_warmup)
                    if cfg.train.ema > 0 else None)
        self.eval_weights = "raw"  # which weights the last validation scored best: raw | ema
        self.epoch = 0  # epochs completed
        self.best = {"mAP": -math.inf, "epoch": -1}
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        if self.resume:
            self._load_state()

    # ----------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "epoch": self.epoch,
            "loss": self.loss_fn.state_dict(),
            "best": self.best, "bad_epochs": self.bad_epochs, "rng": rng_state(),
            "history": json.dumps(self.history), "config": json.dumps(self.cfg.to_dict()),
        }

    def _load_state(self) -> None:
        st = load_train_state(self.run_dir / "train_state.pt")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        if self.ema is not None and st["ema"] is not None:
            self.ema.load_state_dict(st["ema"])
        self.loss_fn.load_state_dict(st["loss"])
        self.epoch, self.best, self.bad_epochs = st["epoch"], st["best"], st["bad_epochs"]
        self.history = json.loads(st["history"])
        set_rng_state(st["rng"])

    def _meta(self, metrics: dict[str, Any]) -> dict[str, Any]:
        c = len(self.labels)
        return {
            "mlrkit_version": __version__, "version": __version__, "method": self.cfg.model.name,
            "config": self.cfg.to_dict(), "label_names": list(self.labels.names),
            "thresholds": getattr(self, "thresholds", [self.cfg.eval.threshold] * c),
            "thresholds_from": ("F1 per class on the validation split"
                                if self.cfg.eval.thresholds == "per_class" else "eval.threshold"),
            "epoch": self.epoch,
            "metrics": metrics,
            **({"zero_shot": self.zero_shot} if self.zero_shot else {}),
        }

    # ----------------------------------------------------------------- loop
    def train_epoch(self) -> float:
        cfg, dev = self.cfg, self.device
        self.ddp.train()
        self.train_sampler.set_epoch(self.epoch)
        total, count = 0.0, 0
        seen_idx, seen_probs = [], []
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                   leave=False, disable=not self.progress)
        for x, y, idx, real in bar:
            x, y = x.to(dev), y.to(dev)
            with autocast(dev, self.amp):
                out = self.ddp(builders.as_model_input(x, self.cached))
            loss, n_real = self._batch_loss(out.logits.float(), y, idx, real)
            if self.terms:
                loss = loss + self._term_loss(out, x, real)
            if self.loss_tracks_epochs:
                seen_idx.append(idx[real])
                seen_probs.append(torch.sigmoid(out.logits.detach().float()).cpu()[real])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {self.epoch + 1}: the loss became {loss.item()}"
                                         "; lower optim.lr or enable train.grad_clip")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step_batch()
            if self.ema is not None:
                self.ema.update(self.model)
            total += loss.item() * n_real
            count += n_real
            bar.set_postfix(loss=f"{total / count:.4f}")
        if self.loss_tracks_epochs:
            probs = gather_predictions(torch.cat(seen_idx), torch.cat(seen_probs), self.info,
                                       self.n_train)
            self.loss_fn.update_pseudo_labels(probs, self.train_targets, epoch=self.epoch + 1)
        return total / max(count, 1)

    def _batch_loss(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                    real: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The loss to back-propagate and the number of real rows in this rank's batch.

        One process: the loss of the batch. N ranks: each rank's share of the loss of the
        whole global batch, so that DDP's gradient average equals one process's gradient:
        padding rows are left out, and a ``mean`` loss is divided by its unit count summed
        over the ranks (known entries, images, ... as the loss defines it) instead of the
        rank's own count.
        """
        def extra(rows: torch.Tensor) -> dict[str, Any]:
            return {"index": rows} if self.loss_takes_index else {}

        if not self.info.enabled:
            return self.loss_fn(logits, y, **extra(idx)), len(y)
        keep = real.nonzero().squeeze(1)
        mean = getattr(self.loss_fn, "reduction", "mean") == "mean"
        if len(keep):
            loss = self.loss_fn(logits[keep.to(logits.device)], y[keep.to(y.device)],
                                **extra(idx[keep]))
            count = float(getattr(self.loss_fn, "last_count", len(keep)))
            total = loss * max(count, 1.0) if mean else loss
        else:  # only padding here: take part in the step with a zero loss
            loss = total = logits.sum() * 0.0
            count = 0.0
        world = self.info.world_size
        scale = world / max(all_reduce_sum(count, self.info), 1.0) if mean else float(world)
        return total * scale, len(keep)

    def _term_loss(self, out: Any, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The weighted sum of ``loss.terms`` on this batch's real rows. Under N ranks each
        rank's term is scaled by its share of the global batch's real rows, so DDP's average
        equals one process's mean over the whole batch."""
        teacher_out = None
        keep = real.nonzero().squeeze(1).to(out.logits.device)
        scale = 1.0
        if self.info.enabled:
            scale = self.info.world_size * len(keep) / max(
                all_reduce_sum(float(len(keep)), self.info), 1.0)
        total = out.logits.sum() * 0.0
        for i, (term, fn) in enumerate(self.terms):
            student = _output_part(out, term.student, f"loss.terms[{i}].student")
            if term.teacher_model == "initial":
                if teacher_out is None:
                    with torch.no_grad(), autocast(self.device, self.amp):
                        teacher_out = self.teacher(builders.as_model_input(x, self.cached))
                teacher = _output_part(teacher_out, term.teacher, f"loss.terms[{i}].teacher")
            else:
                teacher = _output_part(out, term.teacher, f"loss.terms[{i}].teacher")
            if len(keep) == 0:
                continue  # only padding on this rank: no term, the zero keeps it in the step
            if self.info.enabled:
                student, teacher = student[keep], teacher[keep]
            total = total + term.weight * scale * fn(student.float(), teacher.float())
        return total

    def _score(self, model: torch.nn.Module) -> tuple[Any, torch.Tensor]:
        logits = predict_logits(model, self.val_loader, self.device, self.amp,
                                self.cached, self.info, self.n_val, progress=self.progress)
        report = evaluate_scores(logits, self.val_targets, scores_are="logits",
                                 zero_means="unknown",
                                 threshold=self.cfg.eval.threshold,
                                 top_k=self.cfg.eval.top_k or None,
                                 ap_mode=self.cfg.eval.ap_mode)
        return report, logits

    def validate(self) -> tuple[dict[str, Any], Any]:
        """Score the validation split. With a weight EMA both the trained and the averaged
        weights are scored; the better mAP is the epoch's result (its weights are the
        ones saved), and both mAPs go to the log as ``mAP_raw`` / ``mAP_ema``."""
        report, logits = self._score(self.model)
        self.eval_weights = "raw"
        extra: dict[str, Any] = {}
        if self.ema is not None:
            ema_report, ema_logits = self._score(self.ema.module)
            extra = {"mAP_raw": report.summary["mAP"], "mAP_ema": ema_report.summary["mAP"]}
            if ema_report.summary["mAP"] >= report.summary["mAP"]:
                report, logits, self.eval_weights = ema_report, ema_logits, "ema"
        self.last_scores = torch.sigmoid(logits)
        c = len(self.labels)
        self.thresholds = [self.cfg.eval.threshold] * c
        if self.cfg.eval.thresholds == "per_class":
            self.thresholds = choose_thresholds(
                self.last_scores, self.val_targets, default=self.cfg.eval.threshold,
                zero_means="unknown").tolist()
        return {**report.to_dict(), **extra}, report

    def fit(self) -> dict[str, Any]:
        try:
            self._claim_run_dir()
            self.setup()
            return self._fit()
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
            cleanup_distributed()

    def _fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.info.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
            if self.skipped:
                atomic_write_text(self.run_dir / "skipped.txt", "\n".join(self.skipped) + "\n")
        report = None
        while self.epoch < cfg.train.epochs:
            t0 = time.perf_counter()
            loss = self.train_epoch()
            metrics, report = self.validate()
            self.epoch += 1
            self.sched.step_epoch(metrics["mAP"])
            row = {"epoch": self.epoch, "train_loss": loss,
                   "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                   **{k: v for k, v in metrics.items() if isinstance(v, int | float)}}
            self.history.append(row)
            improved = metrics["mAP"] > self.best["mAP"]
            if improved:
                self.best = {"mAP": metrics["mAP"], "epoch": self.epoch,
                             "metrics": {k: v for k, v in metrics.items()
                                         if isinstance(v, int | float)}}
                self.best_report = report
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            if main:
                self._write_epoch(metrics, improved)
                self._log_epoch(row)
            if cfg.train.early_stop and self.bad_epochs >= cfg.train.early_stop:
                break
        return self._finish(report)

    def _write_epoch(self, metrics: dict[str, Any], improved: bool) -> None:
        weights = self.ema.module if self.eval_weights == "ema" else self.model
        meta = {**self._meta(metrics), "weights": self.eval_weights}
        save_checkpoint(self.run_dir / "last", weights, meta, self.semantics)
        if improved:
            save_checkpoint(self.run_dir / "best", weights, meta, self.semantics)
        self._write_log()
        # written last: a run killed before this line resumes from the previous epoch
        save_train_state(self.run_dir / "train_state.pt", self._state())

    def _log_epoch(self, row: dict[str, Any]) -> None:
        """One line per epoch that stays on screen (under the progress bars), and the same
        numbers to TensorBoard when ``train.log: tensorboard``."""
        if self.progress:
            done = self.history
            mean_s = sum(r["seconds"] for r in done) / len(done)
            eta = mean_s * (self.cfg.train.epochs - self.epoch)
            tqdm.write(f"epoch {self.epoch}/{self.cfg.train.epochs}  loss {row['train_loss']:.4f}"
                       f"  val mAP {100 * row['mAP']:.2f}  best {100 * self.best['mAP']:.2f} "
                       f"(epoch {self.best['epoch']})  lr {row['lr']:.2e}  "
                       f"{row['seconds']:.1f} s  ETA {_duration(eta)}")
        if self.cfg.train.log == "tensorboard":
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ConfigError("train.log: tensorboard needs the tensorboard package "
                                      "(pip install tensorboard)") from None
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            for k, v in row.items():
                if k != "epoch":
                    self._tb.add_scalar(k if k in ("train_loss", "lr", "seconds")
                                        else f"val/{k}", v, self.epoch)
            self._tb.flush()

    def _write_log(self) -> None:
        buf = io.StringIO()
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.run_dir / "log.csv", buf.getvalue())

    def _finish(self, report: Any) -> dict[str, Any]:
        if report is None:  # resumed a run that had already finished
            _, report = self.validate()
        if self._tb is not None:
            self._tb.close()
        result = {"final": report.to_dict(), "best": self.best, "epochs": self.epoch,
                  "per_class_ap": dict(zip(self.labels.names, [  # NaN: no positive (not JSON)
                      None if math.isnan(float(v)) else float(v) for v in report.per_class_ap])),
                  "choices": getattr(report, "choices", {})}
        if self.info.is_main:
            atomic_write_text(self.run_dir / "metrics.json",
                              json.dumps(result, indent=2, default=str))
        self.report = report
        return result


def _output_part(out: Any, key: str, setting: str) -> torch.Tensor:
    """``logits`` or ``Output.extras[key]`` of a head's output."""
    if key == "logits":
        return out.logits
    extras = out.extras or {}
    if key not in extras or not isinstance(extras[key], torch.Tensor):
        have = ", ".join(["logits", *sorted(k for k, v in extras.items()
                                            if isinstance(v, torch.Tensor))])
        raise ConfigError(f"{setting}: the head's output has no {key!r}; it has: {have}")
    return extras[key]


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def train(cfg: Config, resume: str | Path | None = None) -> Trainer:
    """Train the run a config describes (or resume the run in ``resume``); returns the trainer."""
    trainer = Trainer(cfg, resume)
    trainer.fit()
    return trainer
