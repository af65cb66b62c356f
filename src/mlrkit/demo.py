"""The embedded demo: multi-label Fashion-MNIST mosaics, frozen EfficientNet-Lite0 features,
the baseline head compared with DLSA and CMSG heads, all without a download."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .config import deep_merge, load_config, parse_overrides
from .io import atomic_write_text

# One shared base; each method adds its own model section.
DEMO_BASE: dict[str, Any] = {
    "seed": 0,
    "model": {"backbone": "efficientnet_lite0", "pretrained": True, "freeze_backbone": True},
    "data": {
        "train": {"name": "fashion_mosaic", "split": "train", "num_images": 1500,
                  "image_size": 160, "seed": 0},
        "val": {"name": "fashion_mosaic", "split": "test", "num_images": 500,
                "image_size": 160, "seed": 1},
        "image_size": 160, "batch_size": 64, "num_workers": 0, "cache": True,
    },
    "loss": {"name": "bce"},
    "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 1.0e-4},
    "sched": {"name": "cosine", "warmup_epochs": 1},
    "train": {"epochs": 12},
    "eval": {"threshold": 0.5},
}

DEMO_METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"model": {"name": "baseline"}},
    "dlsa": {"model": {"name": "dlsa", "label_embeddings": "glove50",
                       "label_graph": "cooccurrence",
                       "options": {"d1": 256, "d2": 512}}},
    "cmsg": {"model": {"name": "cmsg", "label_embeddings": "glove50",
                       "options": {"hidden_dim": 256, "heads": 4, "layers": 1, "tau": 0.5}},
             "loss": {"name": "asl", "options": {"gamma_pos": 0, "gamma_neg": 4, "clip": 0.05}}},
}


def available_methods() -> list[str]:
    from .model import list_models

    known = set(list_models())
    return [m for m in DEMO_METHODS if m in known]


def demo_config(method: str, output_dir: str | Path, overrides: list[str] | None = None):
    data = deep_merge(DEMO_BASE, DEMO_METHODS[method])
    data = deep_merge(data, {"name": method, "output_dir": str(Path(output_dir) / "demo"),
                             "data": {"cache_dir": str(Path(output_dir) / "demo" / "cache")}})
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return load_config(None, base=data)


def run_demo(methods: list[str] | None = None, output_dir: str | Path = "runs",
             overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train each demo method from one shared feature cache; print and save the comparison."""
    from .engine.trainer import Trainer
    from .viz import plot_per_class_ap, plot_pr_curves

    methods = methods or available_methods()
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"demo: unknown method(s) {unknown}; choose from "
                         f"{', '.join(DEMO_METHODS)}")
    results: dict[str, dict[str, Any]] = {}
    t_start = time.perf_counter()
    for method in methods:
        cfg = demo_config(method, output_dir, overrides)
        run_dir = cfg.run_dir
        if (run_dir / "train_state.pt").exists():  # a fresh demo every time
            for f in run_dir.iterdir():
                if f.is_file():
                    f.unlink()
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        trainer.fit()
        names = list(trainer.labels.names)
        report = trainer.report
        plot_pr_curves(trainer.last_scores, trainer.val_targets, names,
                       run_dir / "pr_curves.png", title=f"{method}: precision-recall per class")
        plot_per_class_ap([100 * float(v) for v in report.per_class_ap], names,
                          run_dir / "per_class_ap.png",
                          title=f"{method}: average precision per class")
        d = report.to_dict()
        results[method] = {"mAP": 100 * d["mAP"], "CF1": 100 * d["CF1"],
                           "OF1": 100 * d["OF1"], "seconds": time.perf_counter() - t0,
                           "per_class_ap": [100 * float(v) for v in report.per_class_ap]}
        print(f"\n== {method} ==")
        print(report.format_table(names))
    total = time.perf_counter() - t_start
    print("\n" + format_comparison(results, names))
    print(f"\ndemo finished in {total:.0f} s; runs, PR curves and per-class AP figures are in "
          f"{Path(output_dir) / 'demo'}/<method>/")
    atomic_write_text(Path(output_dir) / "demo" / "comparison.json", json.dumps(
        {"seconds": total, "results": results}, indent=2, default=str))
    return results


def format_comparison(results: dict[str, dict[str, Any]], names: list[str]) -> str:
    methods = list(results)
    head = f"{'':14s}" + "".join(f"{m:>10s}" for m in methods)
    lines = ["Fashion-MNIST mosaics, test split (%)", head]
    for key in ("mAP", "CF1", "OF1"):
        lines.append(f"{key:14s}" + "".join(f"{results[m][key]:10.2f}" for m in methods))
    lines.append("AP per class")
    for c, name in enumerate(names):
        vals = [results[m]["per_class_ap"][c] for m in methods]
        lines.append(f"  {name:12s}" + "".join(
            f"{v:10.2f}" if not math.isnan(v) else f"{'n/a':>10s}" for v in vals))
    lines.append(f"{'seconds':14s}" + "".join(f"{results[m]['seconds']:10.1f}" for m in methods))
    return "\n".join(lines)
