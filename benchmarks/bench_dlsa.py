"""DLSA head cost on CPU.

1. ResNet-101 (random init) at 448 x 448, batch 2 and 8, C = 80: forward time of the backbone
   alone vs backbone + DLSA head (paper dims d1 = 1024, d2 = 2048, 4 heads), eval mode,
   no_grad; runs interleaved, median of ``--runs``. Target: ratio <= 1.10. The head is also
   timed alone on the backbone's output; (backbone + head alone) / backbone is the estimate
   that stays stable when other processes share the CPU.
2. DLSA head forward + backward on cached-size features, C = 80, median of ``--runs``, in
   float32 and under bfloat16 autocast (AMX / AVX512-BF16 matmuls where the CPU has them):
   paper dims on 128 x 2048 x 14 x 14 ResNet-101 maps, and the CPU configs' setting
   (d1 = 256, d2 = 512, bf16) on 128 x 1280 x 14 x 14 EfficientNet-Lite0 maps.
   Target: <= 1 s.

Each case runs in its own process so that its peak resident memory (``ru_maxrss``) is its own.

    python benchmarks/bench_dlsa.py [--runs 3] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import torch

from _common import run_case

C = 80


def _head(in_dim: int, d1: int, d2: int) -> torch.nn.Module:
    from mlrkit.methods.dlsa import DLSA
    from mlrkit.semantics import cooccurrence_graph

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(C, 300, generator=g)
    targets = torch.where(torch.rand(500, C, generator=g) < 0.05, 1, -1)
    return DLSA(in_dim, C, emb, cooccurrence_graph(targets), d1=d1, d2=d2, heads=4)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def case_backbone(batch: int, runs: int) -> dict:
    from mlrkit.backbones import create_backbone
    from mlrkit.structures import Features

    torch.manual_seed(0)
    bb = create_backbone("resnet101").eval()
    head = _head(2048, 1024, 2048).eval()
    x = torch.randn(batch, 3, 448, 448)
    t_bb, t_full, t_head = [], [], []
    with torch.no_grad():
        fmap = bb(x).map  # warm-up
        head(Features(map=fmap))
        for _ in range(runs):
            t0 = time.perf_counter()
            bb(x)
            t1 = time.perf_counter()
            head(bb(x))
            t2 = time.perf_counter()
            head(Features(map=fmap))
            t3 = time.perf_counter()
            t_bb.append(t1 - t0)
            t_full.append(t2 - t1)
            t_head.append(t3 - t2)
    bb_s, full_s = statistics.median(t_bb), statistics.median(t_full)
    return {"case": f"resnet101 448 batch {batch}: backbone vs backbone+DLSA (C={C})",
            "backbone_s": bb_s, "backbone_plus_head_s": full_s, "ratio": full_s / bb_s,
            "head_alone_s": statistics.median(t_head), "runs": runs, "peak_rss_mib": _peak_mib()}


def case_head(in_dim: int, d1: int, d2: int, batch: int, runs: int, bf16: int = 0) -> dict:
    from mlrkit.structures import Features

    torch.manual_seed(0)
    head = _head(in_dim, d1, d2).train()
    fmap = torch.randn(batch, in_dim, 14, 14)
    y = (torch.rand(batch, C) < 0.05).float()
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16)):
            out = head(Features(map=fmap))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits.float(), y)
        head.zero_grad(set_to_none=True)
        loss.backward()
        if i:  # the first run is warm-up
            times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in head.parameters())
    return {"case": f"DLSA head fwd+bwd, {batch} x {in_dim} x 14 x 14, d1={d1}, d2={d2}, C={C}, "
                    f"{'bf16 autocast' if bf16 else 'float32'}",
            "median_s": statistics.median(times), "min_s": min(times), "runs": runs,
            "head_params_M": n_params / 1e6, "peak_rss_mib": _peak_mib()}


def _run(args: list[str], threads: int | None) -> dict:
    return run_case(__file__, args, threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="batch 2 only, 1 run")
    p.add_argument("--case", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        kind, *rest = a.case
        vals = [int(v) for v in rest]
        res = case_backbone(*vals) if kind == "backbone" else case_head(*vals)
        print(json.dumps(res))
        return
    runs = 1 if a.quick else a.runs
    print(f"bench_dlsa: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, torch threads {a.threads or torch.get_num_threads()}, "
          f"runs per case {runs} (median)")
    cases = [["backbone", "2", str(runs)]]
    if not a.quick:
        cases.append(["backbone", "8", str(runs)])
    for bf16 in ("0", "1"):  # paper dims on ResNet-101 maps; the CPU configs' setting
        cases += [["head", "2048", "1024", "2048", "128", str(runs), bf16],
                  ["head", "1280", "256", "512", "128", str(runs), bf16]]
    cases.append(["head", "1280", "256", "1280", "128", str(runs), "1"])
    for args in cases:
        r = _run(args, a.threads)
        if args[0] == "backbone":
            added = (r["backbone_s"] + r["head_alone_s"]) / r["backbone_s"]
            print(f"{r['case']}: backbone {r['backbone_s']:.3f} s, backbone+head "
                  f"{r['backbone_plus_head_s']:.3f} s (ratio {r['ratio']:.3f}); head alone "
                  f"{r['head_alone_s']:.3f} s -> (backbone + head) / backbone = {added:.3f} "
                  f"(target <= 1.10); peak RSS {r['peak_rss_mib']:.0f} MiB")
        else:
            print(f"{r['case']}: median {r['median_s']:.3f} s (min {r['min_s']:.3f}; target "
                  f"<= 1 s); {r['head_params_M']:.1f} M params; peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
