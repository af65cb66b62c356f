"""SSGRL head cost on CPU, at the coco128 config's shapes (configs/ssgrl_coco128_effl0.yaml).

One training step of the head (forward, BCE loss, backward) on cached-size maps
16 x 1280 x 14 x 14, C = 80, 50-d label embeddings (glove50), inter_dim = 256, steps = 3,
proj_dim = 512, float32 (the config trains without autocast):

* ``before``: the head's forward as it was written before the blocked decoupling (kept
  below as ``former_forward``: the ``(B, C, HW, d)`` tanh tensor formed whole, the autograd
  graph keeping it and its gradients), on the same weights;
* ``after``: the head as it is now;
* the parts of ``after``: the decoupling scores (SSGRL eq. 1-2) and the GGNN (eq. 4-6), each
  forward + backward on its own;
* for comparison, the DLSA head of configs/dlsa_coco128_effl0.yaml (d1 = 256, d2 = 512,
  4 heads) in float32 and under bfloat16 autocast (what that config trains with).

Each case, and the check below, runs in its own process (so that its peak resident memory,
``ru_maxrss``, is its own): one warm-up step, then ``--runs`` timed steps; the median and the
minimum of the wall time and the median process CPU time per step are printed. On a machine
shared with other jobs the wall time of a 2-thread run swings widely (an op waits whenever
its second thread is not scheduled); the minimum and the CPU time are the steadier numbers,
and ``--threads 1`` the steadiest. Before the timings, ``before`` and ``after`` are checked to
give the same logits, attention maps and parameter gradients (float32 tolerance).

    python benchmarks/bench_ssgrl.py [--runs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

B, C, D_IN, E_DIM, HW = 16, 80, 1280, 50, 14
SSGRL_OPTS = {"inter_dim": 256, "steps": 3, "proj_dim": 512}


def _semantics() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(C, E_DIM, generator=g)
    targets = torch.where(torch.rand(500, C, generator=g) < 0.05, 1, -1)
    return emb, targets


def ssgrl_head() -> torch.nn.Module:
    from mlrkit.methods.ssgrl import SSGRL
    from mlrkit.semantics import label_graph

    emb, targets = _semantics()
    torch.manual_seed(0)
    return SSGRL(D_IN, C, emb, label_graph("conditional", targets), **SSGRL_OPTS)


def dlsa_head() -> torch.nn.Module:
    from mlrkit.methods.dlsa import DLSA
    from mlrkit.semantics import cooccurrence_graph

    emb, targets = _semantics()
    torch.manual_seed(0)
    return DLSA(D_IN, C, emb, cooccurrence_graph(targets), lspl=True, sd=True, sar=True,
                d1=256, d2=512, heads=4)


def former_forward(head: torch.nn.Module, fmap: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The SSGRL head's forward before the blocked decoupling, on ``head``'s weights:
    logits ``(B, C)`` and attention ``(B, C, H, W)``."""
    x = head.proj(fmap) if head.proj is not None else fmap
    dec, gg = head.decouple, head.ggnn
    b, _, h, w = x.shape
    uf = dec.u(x.flatten(2).transpose(1, 2))  # (B, HW, d)
    vx = dec.v(head.embeddings)  # (C, d)
    z = torch.tanh(uf[:, None, :, :] * vx[None, :, None, :])  # (B, C, HW, d), whole
    s = (z @ (dec.p.weight.T @ dec.fa.weight.T)).squeeze(-1) + dec.fa(dec.p.bias)
    a = torch.softmax(s, dim=-1)
    f = torch.bmm(a, x.flatten(2).transpose(1, 2))  # (B, C, D)
    hid, d = f, gg.dim
    for _ in range(gg.steps):
        wa = gg.w(torch.cat([head.adj @ hid, head.adj.transpose(0, 1) @ hid], dim=-1))
        zr = torch.sigmoid(wa[..., :2 * d] + gg.u_zr(hid))
        zg, r = zr[..., :d], zr[..., d:]
        cand = torch.tanh(wa[..., 2 * d:] + gg.u_h(r * hid))
        hid = (1 - zg) * hid + zg * cand
    o = torch.tanh(head.fo(torch.cat([hid, f], dim=-1)))
    logits = torch.einsum("bcd,cd->bc", o, head.classifier.weight) + head.classifier.bias
    return logits, a.view(b, -1, h, w)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # ReLU6-like maps as EfficientNet-Lite0 gives: non-negative, mostly zero
    fmap = (torch.randn(B, D_IN, HW, HW, generator=g) * 2 - 2).clamp(0, 6)
    y = (torch.rand(B, C, generator=g) < 0.05).float()
    return fmap, y


def check_equal() -> str:
    """``before`` and ``after`` on the same weights and inputs: largest differences."""
    from mlrkit.structures import Features

    head = ssgrl_head()
    fmap, y = _inputs()
    grads = []
    for fn in (lambda: former_forward(head, fmap),
               lambda: (lambda o: (o.logits, o.attention))(head(Features(map=fmap)))):
        head.zero_grad(set_to_none=True)
        logits, attn = fn()
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
        grads.append((logits.detach(), attn.detach(),
                      [p.grad.clone() for p in head.parameters()]))
    (l0, a0, g0), (l1, a1, g1) = grads
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(a1, a0)
    for p0, p1 in zip(g0, g1, strict=True):
        torch.testing.assert_close(p1, p0, rtol=1e-4, atol=1e-6)
    rel = max(((p1 - p0).norm() / p0.norm().clamp_min(1e-30)).item()
              for p0, p1 in zip(g0, g1, strict=True))
    return (f"before == after: logits max |diff| {(l1 - l0).abs().max().item():.1e}, "
            f"attention {(a1 - a0).abs().max().item():.1e}, parameter gradients max relative "
            f"(norm) diff {rel:.1e}")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time(step, runs: int) -> dict:
    wall, cpu = [], []
    for i in range(runs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if i:  # the first run is warm-up
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"median_s": statistics.median(wall), "min_s": min(wall),
            "cpu_s": statistics.median(cpu), "runs": runs}


def run_case(kind: str, runs: int) -> dict:
    from mlrkit.structures import Features

    fmap, y = _inputs()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if kind.startswith("dlsa"):
        head, bf16 = dlsa_head().train(), kind == "dlsa_bf16"

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = head(Features(map=fmap))
            head.zero_grad(set_to_none=True)
            bce(out.logits.float(), y).backward()
    else:
        head = ssgrl_head().train()
        fm = head.proj(fmap).detach().requires_grad_()  # input of the parts
        if kind == "before":
            def step() -> None:
                head.zero_grad(set_to_none=True)
                bce(former_forward(head, fmap)[0], y).backward()
        elif kind == "after":
            def step() -> None:
                head.zero_grad(set_to_none=True)
                bce(head(Features(map=fmap)).logits, y).backward()
        elif kind == "decoupling":
            def step() -> None:
                head.decouple.scores(fm, head.embeddings).sum().backward()
        elif kind == "ggnn":
            f = head.decouple(fm, head.embeddings)[0].detach().requires_grad_()

            def step() -> None:
                head.ggnn(f, head.adj).sum().backward()
        else:
            raise ValueError(kind)
    return {"case": kind, **_time(step, runs), "peak_rss_mib": _peak_mib()}


LABELS = {
    "before": "SSGRL step before (former forward, whole (B, C, HW, d) tensor)",
    "after": "SSGRL step after (blocked decoupling)",
    "decoupling": "  part of after: decoupling scores fwd+bwd",
    "ggnn": "  part of after: GGNN (3 steps) fwd+bwd",
    "dlsa_fp32": "DLSA step (coco128 config dims), float32",
    "dlsa_bf16": "DLSA step (coco128 config dims), bf16 autocast (its config)",
}


def _run(case: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--runs", str(a.runs)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--case", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        res = {"check": check_equal()} if a.case == "check" else run_case(a.case, a.runs)
        print(json.dumps(res))
        return
    print(f"bench_ssgrl: torch {torch.__version__}, {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} cpus, torch threads {a.threads or torch.get_num_threads()}, "
          f"runs per case {a.runs} (median), load average {os.getloadavg()[0]:.2f}")
    print(f"shapes: maps {B} x {D_IN} x {HW} x {HW}, C = {C}, embeddings {E_DIM}-d, "
          f"{SSGRL_OPTS}, float32 unless said")
    print(_run("check", a)["check"])
    for case in LABELS:
        r = _run(case, a)
        print(f"{LABELS[case]}: median {r['median_s']:.3f} s (min {r['min_s']:.3f}), CPU "
              f"{r['cpu_s']:.3f} s per step; peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
