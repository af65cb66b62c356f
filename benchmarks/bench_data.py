"""Data-loading throughput: JPEG decode + 448 train augmentation with a 2-worker DataLoader.

Runs on the coco128 photos (``$MLRKIT_DATA/coco128``); prints images/s for several full
passes and their median. Usage: ``python benchmarks/bench_data.py [--passes 5]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mlrkit.data import load_dataset
from mlrkit.data.transforms import build_transform

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def run_pass(loader: DataLoader) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for images, _ in loader:
        n += images.shape[0]
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--randaugment", action="store_true")
    args = ap.parse_args()
    root = DATA / "coco128"
    ds = load_dataset("yolo", root=str(root), split="train2017")
    torch.set_num_threads(1)
    print(f"mlrkit data benchmark: {len(ds)} coco128 photos, train transform "
          f"(random resized crop {args.image_size}, flip"
          f"{', RandAugment' if args.randaugment else ''}), batch {args.batch_size}, "
          f"{args.workers} workers, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    for crop in ("random_resized", "resize_crop"):
        ds.transform = build_transform(True, image_size=args.image_size, crop=crop,
                                       randaugment=args.randaugment)
        loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                            shuffle=True, persistent_workers=args.workers > 0)
        run_pass(loader)  # warm-up: worker start, page cache
        rates = []
        for _ in range(args.passes):
            dt, n = run_pass(loader)
            rates.append(n / dt)
        print(f"crop={crop:<15} images/s per pass: "
              f"{', '.join(f'{r:.1f}' for r in rates)}; median {statistics.median(rates):.1f} "
              f"({args.passes} passes after 1 warm-up)")


if __name__ == "__main__":
    main()
