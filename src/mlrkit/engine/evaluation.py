"""Evaluate a saved checkpoint, on its own validation data or on other data (``--set``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, config_from_dict, deep_merge, parse_overrides
from ..metrics import evaluate as evaluate_scores
from ..predict import load_model
from . import builders
from .distributed import DistInfo
from .precision import resolve_amp
from .trainer import predict_logits


def evaluate_checkpoint(checkpoint: str | Path, overrides: list[str] | None = None
                        ) -> tuple[Any, list[str]]:
    """Return (metrics report, class names) of a checkpoint on ``data.val`` of its config,
    after ``overrides`` such as ``data.val.root=/elsewhere``."""
    model, cfg, meta = load_model(checkpoint)
    if overrides:
        try:
            cfg = config_from_dict(deep_merge(cfg.to_dict(), parse_overrides(overrides)))
        except ConfigError as e:
            raise ConfigError(f"--set: {e}") from None
    info = DistInfo()
    device = builders.resolve_device(cfg.train.device, info)
    model.to(device)
    val = builders.load_split(cfg, "val")
    names = list(meta["label_names"])
    if list(val.labels.names) != names:
        raise ConfigError(f"data.val: its classes ({len(val.labels)}) differ from the "
                          f"checkpoint's ({len(names)})")
    if cfg.data.cache:
        val_in = builders.cached_dataset(cfg, model, val, device, info)
    else:
        val.transform = builders.image_transform(cfg, model, train=False)
        val_in = val
    bs = cfg.data.eval_batch_size or cfg.data.batch_size
    loader, _ = builders.make_loader(val_in, bs, False, info, cfg.seed, cfg.data.num_workers)
    logits = predict_logits(model, loader, device, resolve_amp(cfg.train.amp, device),
                            cfg.data.cache, info, len(val_in), progress=cfg.train.progress)
    threshold: Any = cfg.eval.threshold
    explicit = any(o.split("=", 1)[0].strip() == "eval.threshold" for o in overrides or [])
    if cfg.eval.thresholds == "per_class" and not explicit and "thresholds" in meta:
        threshold = np.asarray(meta["thresholds"], dtype=np.float64)  # chosen on validation
    report = evaluate_scores(logits, val.targets, scores_are="logits", zero_means="unknown",
                             threshold=threshold, top_k=cfg.eval.top_k or None,
                             ap_mode=cfg.eval.ap_mode)
    report.skipped = list(val.info.get("skipped", []))  # type: ignore[attr-defined]
    return report, names
