"""Evaluate a saved checkpoint, on its own validation data or on other data (``--set``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, ConfigError, config_from_dict, deep_merge, parse_overrides
from ..metrics import EvaluationReport, ZeroShotReport, spml_metrics, zero_shot_metrics
from ..metrics import evaluate as evaluate_scores
from ..predict import load_model
from . import builders
from .distributed import DistInfo
from .precision import resolve_amp
from .trainer import predict_logits


@dataclass
class CheckpointPredictions:
    """What :func:`predict_checkpoint` computed on a split: the report, the raw scores, the
    targets and the split itself, plus the loaded model for attention maps of a few rows."""

    report: EvaluationReport
    names: list[str]
    logits: torch.Tensor  # (N, C) float32, in dataset order
    targets: torch.Tensor  # (N, C) int8: 1 / -1 / 0
    dataset: Any  # the evaluated split (``MultiLabelDataset``): ids, paths, load_image
    threshold: float | np.ndarray  # what the report used: one number or one per class
    checkpoint: Path  # the resolved weights file
    split: str  # a short description of data.val (name, split, fold, file)
    config: Config
    meta: dict[str, Any]
    model: torch.nn.Module = field(repr=False)
    device: torch.device = field(repr=False)
    inputs: Any = field(repr=False)  # what the model was fed: images or cached features
    cached: bool = False
    batch_size: int = 16
    zero_shot: ZeroShotReport | None = None  # zero-shot runs: ZSL and GZSL metrics
    label_embeddings: torch.Tensor | None = field(default=None, repr=False)  # scored set
    zsl_logits: torch.Tensor | None = None  # zero-shot runs: the unseen labels scored alone

    @property
    def probs(self) -> torch.Tensor:
        """(N, C) probabilities (sigmoid of the logits)."""
        return torch.sigmoid(self.logits)

    @property
    def ids(self) -> list[str]:
        return list(self.dataset.ids)

    @property
    def paths(self) -> list[Path] | None:
        return getattr(self.dataset, "paths", None)

    def image(self, i: int) -> Any:
        """Row ``i``'s picture as a PIL image (untransformed)."""
        return self.dataset.load_image(int(i))

    @torch.no_grad()
    def attention(self, rows: Sequence[int]) -> torch.Tensor | None:
        """Class maps ``(len(rows), C, h, w)`` of those rows (float32, CPU), or ``None`` when
        the model's head returns no attention. Runs the model again on just these rows."""
        rows = [int(r) for r in rows]
        if not rows:
            return None
        self.model.eval()
        out: list[torch.Tensor] = []
        for start in range(0, len(rows), self.batch_size):
            xs = torch.stack([self.inputs[i][0] for i in rows[start:start + self.batch_size]])
            kw = ({} if self.label_embeddings is None
                  else {"label_embeddings": self.label_embeddings.to(self.device)})
            res = self.model(builders.as_model_input(xs.to(self.device), self.cached), **kw)
            if res.attention is None:
                return None
            out.append(res.attention.float().cpu())
        return torch.cat(out)


def spml_report(logits: torch.Tensor, targets: torch.Tensor, cfg: Config) -> Any:
    """``eval.spml``: the SPML metrics at k = 3 and 5 (those not above the class count)."""
    c = int(targets.shape[1])
    ks = tuple(k for k in (3, 5) if k <= c) or (c,)
    return spml_metrics(logits, targets, ks=ks, ap_mode=cfg.eval.ap_mode, zero_means="unknown")


def _tail(path: Any) -> str:
    return "/".join(Path(str(path)).parts[-2:])


def describe_split(spec: dict[str, Any]) -> str:
    """``data.val`` in a few words, e.g. ``voc2007 test (root /data/VOC2007)``."""
    spec = dict(spec)
    words = [str(spec.pop("name", "?"))]
    if spec.get("split") not in (None, ""):
        words.append(str(spec["split"]))
    if spec.get("fold") not in (None, ""):
        words.append(f"fold={spec['fold']}")
    where = spec.get("labels_file") or spec.get("root")
    if where:
        words.append(f"({_tail(where) if spec.get('labels_file') else where})")
    return " ".join(words)


def predict_checkpoint(checkpoint: str | Path, overrides: list[str] | None = None
                       ) -> CheckpointPredictions:
    """Score a checkpoint on ``data.val`` of its config (after ``overrides`` such as
    ``data.val.root=/elsewhere``) and keep everything a report needs: the metrics report,
    logits, targets, the split, and the model for attention maps (``.attention(rows)``)."""
    from .checkpoint import resolve_checkpoint

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
    zs = meta.get("zero_shot")
    if zs:  # zero-shot run: scored on every label, seen and unseen
        names = list(zs["names"])
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
    amp = resolve_amp(cfg.train.amp, device)

    def scores(bank: torch.Tensor | None) -> torch.Tensor:
        return predict_logits(model, loader, device, amp, cfg.data.cache, info, len(val_in),
                              progress=cfg.train.progress, label_embeddings=bank)

    unseen = bank = None
    if zs:
        unseen = torch.tensor([n in set(zs["unseen"]) for n in names])
        bank = meta["label_bank"]
        logits = scores(bank)  # GZSL: one forward over all labels
    else:
        logits = scores(None)
    threshold: Any = cfg.eval.threshold
    explicit = any(o.split("=", 1)[0].strip() == "eval.threshold" for o in overrides or [])
    if cfg.eval.thresholds == "per_class" and not explicit and "thresholds" in meta:
        threshold = np.asarray(meta["thresholds"], dtype=np.float64)  # chosen on validation
        if unseen is not None:  # chosen for the seen labels; the unseen get eval.threshold
            full = np.full(len(names), cfg.eval.threshold)
            full[~unseen.numpy()] = threshold
            threshold = full
    report = evaluate_scores(logits, val.targets, scores_are="logits", zero_means="unknown",
                             threshold=threshold, top_k=cfg.eval.top_k or None,
                             ap_mode=cfg.eval.ap_mode)
    report.skipped = list(val.info.get("skipped", []))  # type: ignore[attr-defined]
    zero_shot = report.zero_shot = zsl_logits = None  # type: ignore[attr-defined]
    if unseen is not None:
        # ZSL: a second forward with the unseen labels alone (the GAT, the attention sums and
        # the score normalization of an open-vocabulary head depend on the scored set)
        zsl_logits = scores(bank[unseen])
        zero_shot = zero_shot_metrics(logits, val.targets, unseen, zsl_scores=zsl_logits,
                                      ap_mode=cfg.eval.ap_mode, zero_means="unknown")
        report.zero_shot = zero_shot  # type: ignore[attr-defined]
    report.spml = (spml_report(logits, val.targets, cfg)  # type: ignore[attr-defined]
                   if cfg.eval.spml else None)
    return CheckpointPredictions(
        report=report, names=names, logits=logits.float(), targets=val.targets,
        dataset=val, threshold=threshold, checkpoint=resolve_checkpoint(checkpoint),
        split=describe_split(cfg.data.val), config=cfg, meta=meta, model=model,
        device=device, inputs=val_in, cached=bool(cfg.data.cache), batch_size=bs,
        zero_shot=zero_shot, label_embeddings=bank, zsl_logits=zsl_logits)


def evaluate_checkpoint(checkpoint: str | Path, overrides: list[str] | None = None
                        ) -> tuple[Any, list[str]]:
    """Return (metrics report, class names) of a checkpoint on ``data.val`` of its config,
    after ``overrides`` such as ``data.val.root=/elsewhere``. For a zero-shot run the report
    covers all labels and carries the ZSL / GZSL metrics as ``report.zero_shot``."""
    res = predict_checkpoint(checkpoint, overrides)
    return res.report, res.names


__all__ = ["CheckpointPredictions", "describe_split", "evaluate_checkpoint",
           "predict_checkpoint"]
