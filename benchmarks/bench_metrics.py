"""Speed of ``mlrkit.metrics.evaluate`` (mAP + CP, CR, CF1, OP, OR, OF1) at COCO-val size.

Scores and targets are 40,504 x 80 (COCO2014 val), float32 scores; targets are random with
COCO's label density (about 2.9 positives per image), or with ``--real-labels`` the first
40,504 rows of the real ``coco2014/coco_train_full.txt`` label file. The reference is the
usual per-class loop over ``sklearn.metrics.average_precision_score`` (AP only). Prints the
median of ``--runs`` runs of each, their ratio, and the largest AP difference.
Usage: ``python benchmarks/bench_metrics.py [--runs 7] [--real-labels]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from mlrkit.metrics import average_precision, evaluate

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
N, C = 40504, 80


def make_targets(real: bool, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if real:
        path = DATA / "coco2014" / "coco_train_full.txt"
        t = -np.ones((N, C), dtype=np.int8)
        with path.open() as f:
            for r, line in zip(range(N), f):
                _, _, idx = line.partition(",")
                cols = [int(v) for v in idx.split()]
                t[r, cols] = 1
        return t, f"real labels: first {N} rows of {path.name}"
    t = np.where(rng.random((N, C)) < 2.9 / C, 1, -1).astype(np.int8)
    return t, "random targets, P(positive) = 2.9 / 80"


def timed(fn, runs: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def sklearn_loop(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.array([average_precision_score(t[:, c] == 1, s[:, c]) for c in range(C)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sklearn-runs", type=int, default=5)
    ap.add_argument("--real-labels", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    t, what = make_targets(args.real_labels, rng)
    # scores that carry some signal, as a model's would
    s = (1 / (1 + np.exp(-(rng.normal(size=(N, C)) + 1.5 * (t == 1))))).astype(np.float32)
    st, tt = torch.from_numpy(s), torch.from_numpy(t)

    print(f"mlrkit metrics benchmark: {N} x {C} float32 scores, {what}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    evaluate(st, tt)  # warm-up
    med_eval, all_eval, report = timed(lambda: evaluate(st, tt), args.runs)
    med_ap, _, ours = timed(lambda: average_precision(st, tt), args.runs)
    med_sk, all_sk, ref = timed(lambda: sklearn_loop(s, t), args.sklearn_runs)
    diff = float(np.max(np.abs(ours.numpy() - ref)))
    print(f"evaluate (mAP + CP..OF1): median {med_eval:.3f} s over {args.runs} runs "
          f"(min {min(all_eval):.3f}, max {max(all_eval):.3f})")
    print(f"average_precision only:   median {med_ap:.3f} s over {args.runs} runs")
    print(f"sklearn per-class loop:   median {med_sk:.3f} s over {args.sklearn_runs} runs "
          f"(min {min(all_sk):.3f}, max {max(all_sk):.3f})")
    print(f"speedup of evaluate over the sklearn AP loop: {med_sk / med_eval:.1f}x")
    print(f"max |AP(mlrkit) - AP(sklearn)| over {C} classes: {diff:.2e}")
    print(f"mAP {100 * report.mAP:.2f} %, CF1 {100 * report['CF1']:.2f} %, "
          f"OF1 {100 * report['OF1']:.2f} %")


if __name__ == "__main__":
    main()
