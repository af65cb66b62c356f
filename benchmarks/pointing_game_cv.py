"""Pointing game over the outer folds of ``mlrkit cv`` runs: every photo scored once.

The single-split benchmark (``pointing_game.py``) scores one 32-photo fold of coco128, about
90 (image, class) pairs and 5 points of binomial standard error. Here each checkpoint that
``mlrkit cv`` chose scores the class maps (``Output.attention``) of its own outer fold, so one
seed's K folds together cover the whole pool (for coco128 all 128 photos, about 370 pairs;
for the mosaics' 2,000 training mosaics, their grid cells as boxes) and no map comes from a
model that trained on its image. Rows per head: hit rate over the
pooled pairs of each seed (mean ± std over seeds), the mean of per-class rates, and the share
of pairs whose peak is the peak of the image's mean map (class-blind pointing); the centre
prior and the uniform map are scored on the same pairs.

    python benchmarks/pointing_game_cv.py --cv /tmp/cv/dlsa_coco128_effl0_cv.json \\
        /tmp/cv/cmsg_coco128_effl0_cv.json [--cache-dir /tmp/cv_cache] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.config import load_config
from mlrkit.data.yolo import load_yolo_boxes
from mlrkit.engine import builders
from mlrkit.engine.crossval import fold_configs
from mlrkit.engine.distributed import DistInfo
from mlrkit.metrics import pointing_baselines, pointing_game
from mlrkit.predict import load_model
from pointing_game import head_outputs, peak_stats


def outer_fold(run: Path, cache_dir: str | None) -> tuple[Any, Any, list[np.ndarray]]:
    """(model, cached features, boxes) of the outer fold a cv run was scored on."""
    model, _, _ = load_model(run)
    cfg = load_config(run / "config.yaml")
    train = cfg.data.train
    _, cfg.data.val = fold_configs(cfg, train["cv_folds"], train["cv_index"], cfg.seed)
    if cache_dir:
        cfg.data.cache_dir = cache_dir
    cfg.data.num_workers = 0
    cfg.train.progress = False
    ds = builders.load_split(cfg, "val")
    # YOLO boxes (coco128), or the grid cells that hold each item (Fashion-MNIST mosaics)
    boxes = ds.boxes("cell") if hasattr(ds, "boxes") else load_yolo_boxes(ds)
    feats = builders.cached_dataset(cfg, model, ds, torch.device("cpu"), DistInfo())
    return model, feats, boxes


def score_cv(path: Path, cache_dir: str | None) -> dict[str, Any]:
    """Per seed: the pooled pointing game of the head's maps and of the two reference maps."""
    cv = json.loads(path.read_text())
    per_seed: dict[int, dict[str, list[Any]]] = {}
    for row in cv["runs"]:
        model, feats, boxes = outer_fold(Path(row["run"]), cache_dir)
        att = head_outputs(model, feats)["attention"]
        if att is None or att.ndim != 4:
            raise SystemExit(f"{row['run']}: the head returns no class maps")
        got = per_seed.setdefault(int(row["seed"]), {"att": [], "boxes": []})
        got["att"].append(att)
        got["boxes"].extend(boxes)
    seeds = {}
    for seed, got in sorted(per_seed.items()):
        att = np.concatenate(got["att"])
        rep = pointing_game(att, got["boxes"])
        base = pointing_baselines(got["boxes"], att.shape[1], att.shape[-2:])
        seeds[seed] = {"head": rep, "centre": base["centre prior"], "uniform": base["uniform"],
                       "same_peak": peak_stats(att, rep)["same_peak"],
                       "images": att.shape[0],
                       "by_frequency": by_frequency(rep, base["centre prior"])}
    return {"name": cv["name"], "config": cv["config"], "overrides": cv["overrides"],
            "seeds": seeds}


FREQUENT = 16  # photos of the pool holding the class (about 9 training photos per run)


def by_frequency(head: Any, centre: Any) -> dict[str, dict[str, float]]:
    """Hit rates of the head and of the centre prior over the pairs of frequent classes (in
    >= FREQUENT photos of the pool) and of the other classes: can a head learn to point
    where it saw the class often?"""
    frequent = head.pairs_per_class >= FREQUENT
    out = {}
    for name, keep in (("frequent", frequent[head.pair_class]),
                       ("rare", ~frequent[head.pair_class])):
        out[name] = {"pairs": int(keep.sum()),
                     "classes": int(((head.pairs_per_class > 0)
                                     & (frequent if name == "frequent" else ~frequent)).sum()),
                     "head": float(head.pair_hit[keep].mean()) if keep.any() else float("nan"),
                     "centre": float(centre.pair_hit[keep].mean()) if keep.any()
                     else float("nan")}
    return out


def pct(v: float) -> str:
    return "-" if np.isnan(v) else f"{100 * v:.1f}"


def paired_ci(seeds: list[dict[str, Any]], draws: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """Head minus centre prior hit rate (the head's hits averaged over seeds, pair by pair;
    every seed scores the same pairs in the same order) with a 95 % bootstrap interval
    that resamples images, since the pairs of one image are not independent."""
    head = np.mean([x["head"].pair_hit for x in seeds], axis=0)
    diff = head - seeds[0]["centre"].pair_hit
    img = seeds[0]["head"].pair_image
    _, inv = np.unique(img, return_inverse=True)
    per_img = np.bincount(inv, weights=diff)  # summed difference and pair count per image
    n_img = np.bincount(inv).astype(float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(per_img), size=(draws, len(per_img)))
    boot = per_img[pick].sum(1) / n_img[pick].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if not np.isnan(v)]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.fmean(vals):.1f} ± {100 * sd:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", nargs="+", required=True, help="<name>_cv.json files of mlrkit cv")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: the runs')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = [score_cv(Path(p), args.cache_dir) for p in args.cv]
    print(f"\nPointing game over cross-validation outer folds (hit = the peak cell of the class "
          f"map inside a box of the class, ties split); {time.perf_counter() - t0:.0f} s on "
          f"{os.cpu_count()} CPU cores ({platform.machine()}, torch {torch.__version__}).\n")
    print("| maps | seeds | images / seed | pairs / seed | hit rate | mean of per-class "
          "rates | class-blind peaks | centre prior | uniform | head - centre (95 % CI) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    out = []
    for r in results:
        s = list(r["seeds"].values())
        print(f"| {r['name']} | {len(s)} | {s[0]['images']} | {s[0]['head'].num_pairs} | "
              f"{mean_std([x['head'].hit_rate for x in s])} | "
              f"{mean_std([x['head'].class_mean for x in s])} | "
              f"{mean_std([x['same_peak'] for x in s])} | "
              f"{100 * s[0]['centre'].hit_rate:.1f} | {100 * s[0]['uniform'].hit_rate:.1f} | "
              + "{:+.1f} ({:+.1f} .. {:+.1f}) |".format(*(100 * v for v in paired_ci(s))))
        out.append({"name": r["name"], "config": r["config"], "overrides": r["overrides"],
                    "seeds": {k: {"head": v["head"].to_dict(), "centre": v["centre"].to_dict(),
                                  "uniform": v["uniform"].to_dict(),
                                  "same_peak": v["same_peak"], "images": v["images"],
                                  "by_frequency": v["by_frequency"]}
                              for k, v in r["seeds"].items()}})
    print(f"\nBy class frequency (frequent: a class in >= {FREQUENT} photos of the pool); "
          "hit rates, mean ± std over seeds:\n")
    print("| maps | frequent classes | their pairs | head | centre prior | other classes | "
          "their pairs | head | centre prior |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        s = list(r["seeds"].values())
        f = [x["by_frequency"]["frequent"] for x in s]
        o = [x["by_frequency"]["rare"] for x in s]
        print(f"| {r['name']} | {f[0]['classes']} | {f[0]['pairs']} | "
              f"{mean_std([x['head'] for x in f])} | {pct(f[0]['centre'])} | "
              f"{o[0]['classes']} | {o[0]['pairs']} | {mean_std([x['head'] for x in o])} | "
              f"{pct(o[0]['centre'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
