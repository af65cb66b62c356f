"""SigRL head cost: time and peak memory of the head's forward (and backward) on
CLIP ViT-B/16-shaped inputs (512-d projected patch tokens 14 x 14 and class token, 512-d label
embeddings), for label sets of C = 81 (NUS-WIDE unseen), 925 (seen) and 1006 (all), chunked
(``class_chunk`` automatic, the default) and unchunked (``class_chunk=0``, the equations as
written) where the unchunked form fits in memory.

SDA and VFR each form (B, 196, C, 512) tensors; unchunked, forward + backward keeps about
nine such tensors alive at its peak (measured 8.3 at batch 4, C = 81; the estimate is
4 bytes x 9 x B x 196 x C x 512 in float32, 4 tensors for a no_grad forward), so an
unchunked case is skipped, and its estimate printed, when that exceeds ``--max-gib``.

Each case runs in its own process: on CPU its peak resident memory (``ru_maxrss``) is its
own, and the increase over the resident memory just before the first forward is the head's
share; on CUDA ``torch.cuda.max_memory_allocated`` minus the inputs. Times are the median of
``--runs`` runs after one warm-up run (``--runs 1``: the warm-up itself is not repeated;
the one timed run follows it).

    python benchmarks/bench_sigrl.py [--batch 32] [--classes 81 925 1006] [--runs 1]
        [--mode train|eval] [--loss ranking|sum] [--dtype fp32|bf16] [--device cpu|cuda]
        [--threads N] [--no-unchunked] [--max-gib G]
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

E, GRID = 512, 14
BYTES = {"fp32": 4, "bf16": 2}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def unchunked_estimate_gib(batch: int, classes: int, mode: str, dtype: str) -> float:
    n = batch * GRID * GRID * classes * E
    return n * (9 if mode == "train" else 4) * BYTES[dtype] / 2**30


def case(batch: int, classes: int, chunk: str, mode: str, dtype: str, runs: int,
         device: str, loss_name: str = "ranking") -> dict:
    from mlrkit.methods.sigrl import SigRL
    from mlrkit.structures import Features

    torch.manual_seed(0)
    dev = torch.device(device)
    emb = torch.randn(classes, E)
    head = SigRL(E, classes, emb, class_chunk=None if chunk == "auto" else int(chunk))
    head = head.to(dev).train(mode == "train")
    fmap = torch.randn(batch, E, GRID, GRID, device=dev, requires_grad=mode == "train")
    pooled = torch.randn(batch, E, device=dev, requires_grad=mode == "train")
    targets = torch.where(torch.rand(batch, classes, device=dev) < 0.02, 1, -1)
    targets[:, 0] = 1
    from mlrkit.losses import create_loss

    if loss_name == "ranking":
        loss_fn = create_loss("ranking")  # its (B, C, C) pair tensors count in the peak
    else:  # a loss with no memory of its own: the head's share alone
        weights = torch.randn(batch, classes, device=dev)
        loss_fn = lambda x, _t: (x * weights).sum()  # noqa: E731
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mib()
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"), \
                torch.set_grad_enabled(mode == "train"):
            out = head(Features(map=fmap, pooled=pooled))
        if mode == "train":
            loss = loss_fn(out.logits, targets)
            head.zero_grad(set_to_none=True)
            loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del out
        if runs == 1 and i == 0 and dev.type == "cpu" and classes > 100:
            break  # one slow CPU run: the warm-up is the measurement
    timed = times[1:] or times
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        head_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_mib()
        head_mib = peak - base
    return {"batch": batch, "classes": classes, "chunk": chunk, "mode": mode, "dtype": dtype,
            "median_s": statistics.median(timed), "runs": len(timed),
            "peak_mib": peak, "head_mib": head_mib, "step": head._step(batch, GRID * GRID, E,
                                                                        classes)}


def _run(args: list[str], threads: int | None) -> dict:
    return run_case(__file__, args, threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, nargs="+", default=[81, 925, 1006])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-gib", type=float, default=None,
                   help="skip unchunked cases estimated above this (default: 50%% of "
                        "available memory)")
    p.add_argument("--no-unchunked", action="store_true")
    p.add_argument("--loss", choices=["ranking", "sum"], default="ranking",
                   help="train mode: the ranking loss (SigRL eq. 15; its B x C x C pair "
                        "tensors add to the peak) or a weighted sum of the logits (the head "
                        "alone)")
    p.add_argument("--case", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        b, c, chunk, mode, dtype, runs, device, loss_name = a.case
        print(json.dumps(case(int(b), int(c), chunk, mode, dtype, int(runs), device,
                              loss_name)))
        return
    if a.max_gib is None:
        if a.device.startswith("cuda"):
            a.max_gib = 0.8 * torch.cuda.mem_get_info()[0] / 2**30
        else:
            avail = next(int(line.split()[1]) for line in open("/proc/meminfo")
                         if line.startswith("MemAvailable"))
            a.max_gib = 0.5 * avail / 2**20
    what = torch.cuda.get_device_name() if a.device.startswith("cuda") else (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{a.threads or torch.get_num_threads()}")
    print(f"bench_sigrl: torch {torch.__version__}, {a.device}: {what}; head "
          f"forward{f' + {a.loss} loss + backward' if a.mode == 'train' else ' (no_grad)'}, "
          f"{a.dtype}, batch {a.batch}, map {E} x {GRID} x {GRID}, E = {E}; load average "
          f"{os.getloadavg()[0]:.1f}; median of {a.runs} run(s) after a warm-up "
          f"(single CPU runs above C = 100: the first run)")
    for c in a.classes:
        for chunk in ("auto", "0"):
            if chunk == "0":
                est = unchunked_estimate_gib(a.batch, c, a.mode, a.dtype)
                if a.no_unchunked or est > a.max_gib:
                    print(f"C = {c:5d} unchunked: skipped (estimated {est:.1f} GiB > "
                          f"{a.max_gib:.1f} GiB)")
                    continue
            r = _run([str(a.batch), str(c), chunk, a.mode, a.dtype, str(a.runs), a.device,
                      a.loss], a.threads)
            label = "unchunked" if chunk == "0" else f"chunked ({r['step']} classes/chunk)"
            print(f"C = {c:5d} {label}: {r['median_s']:.2f} s ({r['runs']} run(s)); peak "
                  f"{r['peak_mib']:.0f} MiB, head's share {r['head_mib']:.0f} MiB; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
