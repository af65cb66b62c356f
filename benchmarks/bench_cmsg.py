"""CMSG head overhead: ResNet-101 + CMSG vs ResNet-101 alone (inference, CPU by default).

    python benchmarks/bench_cmsg.py [--batch-sizes 2 8] [--runs 3] [--size 448] [--classes 80]

Random-init weights (no download). Backbone-alone and full-model passes are interleaved so a
load change on the machine hits both; after one warm-up pass, the best (minimum) and the
median of ``--runs`` timed passes are reported (on a shared machine other processes only
ever add time, so the minimum is the steadier estimate). The head is also timed alone on the
backbone's feature map.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mlrkit import create_model
from mlrkit.backbones import create_backbone
from mlrkit.structures import Features


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--backbone", default="resnet101")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--hidden-dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dev = torch.device(args.device)
    bb = create_backbone(args.backbone, pretrained=False)
    emb = torch.randn(args.classes, 50)
    model = create_model("cmsg", backbone=bb, num_classes=args.classes, label_embeddings=emb,
                         heads=args.heads, layers=args.layers, hidden_dim=args.hidden_dim,
                         tau=0.1).to(dev).eval()
    n_head = sum(p.numel() for p in model.head.parameters())
    print(f"CMSG overhead: {args.backbone} (random init) + CMSG head (hidden_dim "
          f"{args.hidden_dim}, heads {args.heads}, layers {args.layers}, C={args.classes}, "
          f"{n_head / 1e6:.2f} M head params), inference, {args.size}x{args.size}, "
          f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.runs} runs after 1 warm-up")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_bb(x: torch.Tensor) -> None:
        model.backbone(x)
        sync()

    def run_full(x: torch.Tensor) -> None:
        model(x)
        sync()

    def run_head(f: Features) -> None:
        model.head(f)
        sync()

    with torch.inference_mode():
        for b in args.batch_sizes:
            x = torch.randn(b, 3, args.size, args.size, device=dev)
            feats = model.backbone(x)
            run_bb(x), run_full(x), run_head(feats)  # warm-up
            t_bb, t_full, t_head = [], [], []
            for _ in range(args.runs):
                t_bb.append(timed(run_bb, x))
                t_full.append(timed(run_full, x))
                t_head.append(timed(run_head, feats))
            for stat, fn in (("min", min), ("median", statistics.median)):
                mb, mf, mh = (fn(t) for t in (t_bb, t_full, t_head))
                print(f"batch {b} {stat:>6}: backbone {mb * 1e3:8.1f} ms | backbone+CMSG "
                      f"{mf * 1e3:8.1f} ms | ratio {mf / mb:.3f} | head alone {mh * 1e3:7.1f} ms "
                      f"(backbone + head = {1 + mh / mb:.3f}x the backbone)")
            print(f"  feature map {tuple(feats.map.shape[1:])}")


if __name__ == "__main__":
    main()
