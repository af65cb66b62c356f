"""SD-CSP training-step cost on CPU, against the CoOp row.

One step = forward + P-ASL loss + backward + SGD step of the head on 64 cached 448 px maps
(64 x 2048 x 7 x 7, CLIP RN101 layer 4 pooled 2x2), C = 80 classes (the COCO names), 16
context tokens. Random CLIP RN101 towers (``pretrained=none``; the cost does not depend on
the weights). Cases, each in its own process so that its peak resident memory is its own:

* ``sdcsp``: the full head (semantic decoupling, inter_dim 1024, 80 class-specific prompts
  through the text tower);
* ``coop``: CoOp (one generic prompt, the 80 prompts still go through the text tower; image
  feature = the tower's attention pool of the cached map);
* with ``--all-rows`` also ``sdcsp`` without class-specific prompts ("CoOp w/ sd") and
  ``coop`` with them ("CoOp w/ csp").

Reported per case: median (and min) step time over ``--runs`` timed steps after one warm-up
step; the text tower's part (forward + backward of the 80 prompts alone, same median) and the
decoupling's part (``sdcsp``: forward + backward of the decoupling alone); peak RSS of the
process (``ru_maxrss``, includes the 120 M-parameter towers) and its rise during the steps.
Target: SD-CSP step <= 3x the CoOp step.

    python benchmarks/bench_sdcsp.py [--runs 3] [--threads N] [--all-rows] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from _common import run_case

C, B, N_CTX = 80, 64, 16
COCO_NAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128" / \
    "config.yaml"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _names() -> list[str]:
    try:
        import yaml

        names = yaml.safe_load(COCO_NAMES.read_text())["names"]
        return [str(names[i]) for i in range(C)]
    except (OSError, KeyError):
        return [f"class {i}" for i in range(C)]  # same token count order of magnitude


def _median_time(fn, runs: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def case(method: str, class_specific: int, runs: int, bf16: int = 0) -> dict:
    from mlrkit import create_model
    from mlrkit.losses import create_loss
    from mlrkit.structures import Features

    torch.manual_seed(0)
    names = _names()
    opts = {"n_ctx": N_CTX, "class_specific": bool(class_specific)}
    emb = torch.randn(C, 300) if method == "sdcsp" else None
    model = create_model(method, backbone="clip_rn101", pretrained="none", num_classes=C,
                         label_embeddings=emb, class_names=names, freeze_backbone=True,
                         **opts).train()
    head = model.head
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    loss_fn = create_loss("partial_asl")
    g = torch.Generator().manual_seed(0)
    fmap = torch.rand(B, 2048, 7, 7, generator=g)
    y = torch.where(torch.rand(B, C, generator=g) < 0.05, 1, -1)
    y[torch.rand(B, C, generator=g) < 0.9] = 0  # 10 % known
    rss_built = _peak_mib()

    def amp():  # the trainer's amp: bf16 autocast for the forward, loss in float32
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16))

    def step() -> None:
        with amp():
            out = model(Features(map=fmap))
        loss = loss_fn(out.logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def text_only() -> None:
        with amp():
            t = head.scorer.prompts()
        t.float().sum().backward()
        opt.zero_grad(set_to_none=True)

    def decouple_only() -> None:
        with amp():
            fv, _ = head.decouple(fmap)
        fv.float().sum().backward()
        opt.zero_grad(set_to_none=True)

    step_s, step_min = _median_time(step, runs)
    rss_step = _peak_mib()
    text_s, _ = _median_time(text_only, runs)
    dec_s = _median_time(decouple_only, runs)[0] if method == "sdcsp" else None
    row = {("sdcsp", 1): "SD-CSP", ("sdcsp", 0): "CoOp w/ sd", ("coop", 0): "CoOp",
           ("coop", 1): "CoOp w/ csp"}[(method, int(class_specific))]
    return {"case": row, "method": method, "class_specific": bool(class_specific),
            "step_s": step_s, "step_min_s": step_min, "text_s": text_s, "decouple_s": dec_s,
            "trainable_M": sum(p.numel() for p in params) / 1e6,
            "prompt_tokens": int(head.scorer.prompts.eot_index.max()) + 1,
            "peak_rss_mib": rss_step, "rss_after_build_mib": rss_built, "runs": runs,
            "bf16": bool(bf16)}


def _run(args: list[str], threads: int | None) -> dict:
    return run_case(__file__, args, threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--all-rows", action="store_true", help="also CoOp w/ sd and CoOp w/ csp")
    p.add_argument("--bf16", action="store_true",
                   help="forward under bfloat16 autocast (what train.amp: auto picks on a CPU "
                        "with AMX / AVX512-BF16; the decoupling's tanh block stays float32)")
    p.add_argument("--case", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        method, cs, runs, bf16 = a.case
        print(json.dumps(case(method, int(cs), int(runs), int(bf16))))
        return
    load = os.getloadavg()
    print(f"bench_sdcsp: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, torch threads {a.threads or torch.get_num_threads()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"{a.runs} timed steps per case after 1 warm-up (median); batch {B} cached "
          f"2048 x 7 x 7 maps, C = {C}, {N_CTX} context tokens, "
          f"{'bf16 autocast' if a.bf16 else 'float32'}")
    cases = [["sdcsp", "1"], ["coop", "0"]]
    if a.all_rows:
        cases += [["sdcsp", "0"], ["coop", "1"]]
    results = {}
    for args in cases:
        r = _run([*args, str(a.runs), str(int(a.bf16))], a.threads)
        results[r["case"]] = r
        dec = f", decoupling fwd+bwd {r['decouple_s']:.2f} s" if r["decouple_s"] else ""
        print(f"{r['case']:12s} step median {r['step_s']:.2f} s (min {r['step_min_s']:.2f}); "
              f"text tower fwd+bwd ({C} prompts x {r['prompt_tokens']} tokens) "
              f"{r['text_s']:.2f} s = {100 * r['text_s'] / r['step_s']:.0f} % of the step{dec}; "
              f"{r['trainable_M']:.2f} M trainable; peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(+{r['peak_rss_mib'] - r['rss_after_build_mib']:.0f} MiB over the built model)")
    ratio = results["SD-CSP"]["step_s"] / results["CoOp"]["step_s"]
    print(f"SD-CSP / CoOp step: {ratio:.2f}x (target <= 3x); load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
