"""K-fold cross-validation with an inner validation split: numbers that do not flatter.

For fold ``k`` of ``K`` (a split of the config's training images by image id) and each seed:
the run trains on the other folds minus an inner hold-out (``fold: val``, 25 % by default),
which alone picks the checkpoint and drives the schedule; fold ``k`` is scored once, at the
end, with the chosen checkpoint. The summary is the mean and standard deviation over
folds x seeds; ``pooled`` puts each seed's outer folds together (every image scored once by
a model that never trained on it) and gives the mean and deviation over seeds. Zero-shot
configs add the ZSL / GZSL metrics to both.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, config_from_dict, deep_merge, load_config
from ..io import atomic_write_text
from .builders import SUBSET_KEYS

METRICS = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")


def fold_configs(base: Config, folds: int, index: int, seed: int) -> tuple[Config, dict[str, Any]]:
    """The training config of fold ``index`` with ``seed``, and the data spec of its test part.

    The image pool is ``data.train`` without its own ``fold`` / ``cv_*`` keys (for coco128:
    all 128 photos); ``data.val`` of the base config is not used.
    """
    if folds < 2:
        raise ConfigError(f"cv: --folds must be >= 2, got {folds}")
    pool = {k: v for k, v in base.data.train.items() if k not in SUBSET_KEYS}
    if "name" not in pool:
        raise ConfigError("data.train.name: missing (the dataset to cross-validate)")
    cv = {"cv_folds": folds, "cv_index": index}
    train = {**pool, **cv, "cv_part": "train", "fold": "train"}
    val = {**pool, **cv, "cv_part": "train", "fold": "val"}
    test = {**pool, **cv, "cv_part": "test", "fold": None}
    data = base.to_dict()
    data = deep_merge(data, {"name": f"{base.name}_cv{index}_s{seed}", "seed": seed})
    data["data"]["train"], data["data"]["val"] = train, val
    return config_from_dict(data), test


def summarize(rows: Sequence[dict[str, Any]],
              metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation and count of each metric over the runs."""
    out = {}
    for m in metrics:
        vals = [float(r[m]) for r in rows if r.get(m) is not None and not math.isnan(r[m])]
        if vals:
            out[m] = {"mean": statistics.fmean(vals),
                      "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
    return out


def pooled_metrics(parts: Sequence[Any]) -> dict[str, float]:
    """The metrics of one seed's K outer folds put together: every image scored once, by
    the model that did not train on it (``CheckpointPredictions`` of each fold). On small
    data this ranks over all images instead of one fold's few."""
    import torch

    from ..metrics import evaluate, zero_shot_metrics

    logits = torch.cat([p.logits for p in parts])
    targets = torch.cat([p.targets for p in parts])
    first = parts[0]
    report = evaluate(logits, targets, scores_are="logits", zero_means="unknown",
                      threshold=first.config.eval.threshold,
                      top_k=first.config.eval.top_k or None, ap_mode=first.config.eval.ap_mode)
    out = {m: report.summary.get(m) for m in METRICS}
    if first.zero_shot is not None:
        unseen = torch.tensor([n in set(first.meta["zero_shot"]["unseen"]) for n in first.names])
        zs = zero_shot_metrics(logits, targets, unseen, ap_mode=first.config.eval.ap_mode,
                               zero_means="unknown",
                               zsl_scores=torch.cat([p.zsl_logits for p in parts]))
        out.update(zs.to_dict())
    if first.config.eval.spml:
        from .evaluation import spml_report

        out.update(_spml_keys(spml_report(logits, targets, first.config)))
    return out


def _spml_keys(report: Any) -> dict[str, float]:
    """``eval.spml`` metrics as ``SPML_mAP``, ``SPML_P@3``, ... (empty when not asked)."""
    return {} if report is None else {f"SPML_{k}": v for k, v in report.to_dict().items()}


def format_summary(summary: dict[str, dict[str, float]], title: str) -> str:
    lines = [title, "", "| metric | mean ± std (%) | runs |", "| --- | --- | --- |"]
    for m, s in summary.items():
        lines.append(f"| {m} | {100 * s['mean']:.1f} ± {100 * s['std']:.1f} | {s['n']} |")
    return "\n".join(lines)


def cross_validate(config: str | Path, folds: int = 4, seeds: Sequence[int] = (0,),
                   overrides: Sequence[str] = (), output_dir: str | Path | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Train and score every (fold, seed); return and write ``<output_dir>/<name>_cv.json``.

    A run whose folder already holds ``metrics.json`` is not trained again, only scored.
    """
    from .evaluation import predict_checkpoint
    from .trainer import train

    base = load_config(config, list(overrides))
    if output_dir is not None:
        base.output_dir = str(output_dir)
    base.train.progress = progress and base.train.progress
    rows: list[dict[str, Any]] = []
    pooled: dict[int, list[Any]] = {}  # seed -> the folds' predictions
    t0 = time.perf_counter()
    for k in range(folds):
        for seed in seeds:
            cfg, test = fold_configs(base, folds, k, int(seed))
            run = cfg.run_dir
            start = time.perf_counter()
            if not (run / "metrics.json").exists():
                train(cfg)
            res = predict_checkpoint(run, [f"data.val={json.dumps(test)}"])
            report = res.report
            pooled.setdefault(int(seed), []).append(res)
            meta = json.loads((run / "best.json").read_text())
            row = {"fold": k, "seed": int(seed), "run": str(run),
                   "best_epoch": meta.get("epoch"), "test_images": report.num_images,
                   "seconds": time.perf_counter() - start,
                   **{m: report.summary.get(m) for m in METRICS},
                   **(res.zero_shot.to_dict() if res.zero_shot is not None else {}),
                   **_spml_keys(getattr(report, "spml", None))}
            rows.append(row)
            print(f"fold {k} seed {seed}: test mAP {100 * row['mAP']:.1f} "
                  f"(best epoch {row['best_epoch']}, {row['test_images']} test images)",
                  flush=True)
    keys = [m for m in rows[0] if m in METRICS or m.startswith(("ZSL_", "GZSL_", "SPML_"))]
    summary = summarize(rows, keys)
    pooled_rows = [pooled_metrics(parts) for parts in pooled.values()]
    result = {"config": str(config), "overrides": list(overrides), "folds": folds,
              "seeds": [int(s) for s in seeds], "name": base.name, "summary": summary,
              "pooled": summarize(pooled_rows, keys),
              "runs": rows, "seconds": time.perf_counter() - t0,
              "protocol": "K-fold by image id; inner 25 % hold-out of the training folds "
                          "picks the checkpoint and drives the schedule; the outer fold is "
                          "scored once with the best checkpoint"}
    out = Path(base.output_dir) / f"{base.name}_cv.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    result["path"] = str(out)
    return result
