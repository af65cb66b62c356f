"""Chance level of the zero-shot metrics on a zero-shot config's images.

Scores every image of the config's training pool (``data.train`` without its fold: for
coco128 all 128 photos, the pool ``mlrkit cv`` deals into folds) with i.i.d. uniform random
numbers, ``--draws`` times, and prints the mean and standard deviation of
``zero_shot_metrics`` (ZSL on the ``data.unseen`` labels, GZSL on all) over the draws: the
numbers a model that has learnt nothing scores, to read next to ``mlrkit cv``'s pooled ones.

    python benchmarks/zero_shot_chance.py --config configs/sigrl_coco128_zsl.yaml --draws 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from mlrkit.config import load_config
from mlrkit.engine import builders
from mlrkit.metrics import zero_shot_metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()

    cfg = load_config(args.config, args.set)
    cfg.data.train = {k: v for k, v in cfg.data.train.items() if k != "fold"}
    ds = builders.load_split(cfg, "train")
    names = list(ds.labels.names)
    unseen = builders.unseen_mask(cfg, names)
    if unseen is None:
        raise SystemExit(f"{args.config}: not a zero-shot config (no data.unseen)")
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    rows = []
    for _ in range(args.draws):
        gzsl = torch.from_numpy(rng.random(ds.targets.shape))
        zsl = torch.from_numpy(rng.random((len(ds), int(unseen.sum()))))
        rows.append(zero_shot_metrics(gzsl, ds.targets, unseen, zsl_scores=zsl,
                                      zero_means="unknown").to_dict())
    out = {k: {"mean": statistics.fmean(r[k] for r in rows),
               "std": statistics.stdev(r[k] for r in rows)} for k in rows[0]}
    print(f"# chance on {args.config}: {len(ds)} images, {int(unseen.sum())} unseen of "
          f"{len(names)} labels, {args.draws} draws of uniform scores "
          f"({time.perf_counter() - t0:.1f} s; {platform.machine()}, torch {torch.__version__})")
    print("| metric | mean ± std (%) |\n| --- | --- |")
    for k, v in out.items():
        print(f"| {k} | {100 * v['mean']:.1f} ± {100 * v['std']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "draws": args.draws, "images": len(ds),
                       "metrics": out}, f, indent=2)


if __name__ == "__main__":
    main()
