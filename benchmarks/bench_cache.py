"""Head training from the feature cache vs recomputing frozen EfficientNet-Lite0 features.

    python benchmarks/bench_cache.py [--num-images 96] [--size 448] [--runs 3]

One epoch of the baseline head (average pooling + linear, BCE, Adam; forward, backward and
step) over ``--num-images`` Fashion-MNIST mosaics composed at ``--size``:
(a) reading float16 maps from the feature cache, (b) composing the images and running the
frozen backbone every epoch. The one-off extraction is timed too. Cached and recomputed
epochs are interleaved so a load change on a shared machine hits both; the best (minimum) and
median of the timed epochs are reported, after one warm-up epoch each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from mlrkit import create_model
from mlrkit.backbones import create_backbone
from mlrkit.data import load_dataset
from mlrkit.data.cache import FeatureCacheDataset, default_transform, extract_features
from mlrkit.structures import Features


def epoch(head, opt, loader, backbone=None) -> float:
    """One training epoch of ``head``; images go through the frozen ``backbone`` if given."""
    t = time.perf_counter()
    for x, y in loader:
        if backbone is not None:
            x = backbone(x).map  # frozen: no_grad inside
        out = head(Features(map=x.float()))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits,
                                                                    (y == 1).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-images", type=int, default=96)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    bb = create_backbone("efficientnet_lite0", pretrained=True, image_size=args.size).freeze()
    ds = load_dataset("fashion_mosaic", split="train", num_images=args.num_images,
                      image_size=args.size)
    tf = default_transform(bb)
    print(f"EfficientNet-Lite0 (ImageNet), {args.num_images} mosaics at {args.size}px, "
          f"batch {args.batch_size}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = extract_features(bb, ds, os.path.join(tmp, "cache"),
                                 batch_size=args.batch_size, transform=tf, progress=False)
        extract_s = time.perf_counter() - t
        print(f"extraction (once): {extract_s:.1f} s, maps {cache.shape} float16, "
              f"{cache.features.nbytes / 2**20:.0f} MiB")

        g = torch.Generator().manual_seed(0)
        cached_loader = DataLoader(FeatureCacheDataset(cache), batch_size=args.batch_size,
                                   shuffle=True, generator=g)
        img_ds = load_dataset("fashion_mosaic", split="train", num_images=args.num_images,
                              image_size=args.size)
        img_ds.transform = tf
        image_loader = DataLoader(img_ds, batch_size=args.batch_size, shuffle=True, generator=g)
        model_c = create_model("baseline", backbone="cached", in_dim=bb.out_dim, num_classes=10)
        model_r = create_model("baseline", backbone="cached", in_dim=bb.out_dim, num_classes=10)
        opt_c = torch.optim.Adam(model_c.head.parameters(), lr=1e-3)
        opt_r = torch.optim.Adam(model_r.head.parameters(), lr=1e-3)

        epoch(model_c.head, opt_c, cached_loader)  # warm-up
        cached, recomputed = [], []
        for _ in range(args.runs):
            cached.append(epoch(model_c.head, opt_c, cached_loader))
            recomputed.append(epoch(model_r.head, opt_r, image_loader, backbone=bb))
            print(f"  epoch: cache {cached[-1]:.3f} s, recompute {recomputed[-1]:.1f} s")
    c_min, r_min = min(cached), min(recomputed)
    c_med, r_med = statistics.median(cached), statistics.median(recomputed)
    print(f"head epoch from cache:      min {c_min:.3f} s, median {c_med:.3f} s "
          f"({args.runs} runs)")
    print(f"head epoch recomputing:     min {r_min:.1f} s, median {r_med:.1f} s "
          f"({args.runs} runs)")
    print(f"speedup: {r_min / c_min:.0f}x (min), {r_med / c_med:.0f}x (median); "
          f"extraction pays for itself after {extract_s / max(r_med - c_med, 1e-9):.1f} epochs")


if __name__ == "__main__":
    main()
