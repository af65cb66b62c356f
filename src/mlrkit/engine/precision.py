"""Which autocast precision a run uses: ``train.amp`` (auto | none | bf16 | fp16) resolved
for the device at hand.

bfloat16 autocast pays off on GPUs and on CPUs with native bf16 matrix instructions
(x86 AVX512-BF16 or AMX, Arm BF16). Elsewhere (e.g. AVX2-only x86) PyTorch emulates the
bf16 matmuls and a step runs many times slower than in float32, so ``auto`` stays in
float32 there.
"""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

import torch

AMP_CHOICES = ("auto", "none", "bf16", "fp16")

# /proc/cpuinfo flags that mean native bf16 matmuls: x86 "flags" / Arm "Features" lines
_X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_ARM_BF16_FLAGS = frozenset({"bf16"})


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU does bf16 matmuls natively, read from the flags in ``cpuinfo``.

    True when a ``flags`` line holds ``avx512_bf16`` or ``amx_bf16`` (x86) or a
    ``Features`` line holds ``bf16`` (aarch64). False when the file cannot be read, which
    includes every platform other than Linux.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        words = set(value.split())
        if key == "flags" and words & _X86_BF16_FLAGS:
            return True
        if key == "features" and words & _ARM_BF16_FLAGS:
            return True
    return False


@functools.lru_cache(maxsize=1)
def _native_bf16_cpu() -> bool:
    """This machine's answer (Linux only), read once."""
    return sys.platform.startswith("linux") and cpu_has_bf16()


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast precision to run with: ``"none"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` gives, on CUDA, bf16 where the GPU supports it and fp16 otherwise; on a CPU,
    bf16 only with native bf16 matmuls (:func:`cpu_has_bf16`), else none (float32); on
    other devices, none. Explicit choices are returned as they are.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp: {amp!r} is not one of {', '.join(AMP_CHOICES)}")
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if _native_bf16_cpu() else "none"
    return "none"


def amp_note(requested: str, resolved: str, device: torch.device,
             native_bf16: bool | None = None) -> str | None:
    """One line to print about the chosen precision, or None when there is nothing to say.

    Said when ``auto`` falls back to float32 on a CPU, and when bf16 was asked for
    explicitly on a CPU without native bf16 (honoured, but slow). ``native_bf16`` overrides
    the CPU detection (for tests).
    """
    device = torch.device(device)
    if device.type != "cpu":
        return None
    if requested == "auto" and resolved == "none":
        return ("train.amp: auto -> float32 (none): this CPU has no native bf16 matmuls "
                "(AVX512-BF16, AMX or Arm BF16), where bf16 autocast would run much slower")
    if requested == "bf16":
        native = _native_bf16_cpu() if native_bf16 is None else native_bf16
        if not native:
            cpu = platform.processor() or platform.machine() or "this CPU"
            return (f"train.amp: bf16 on a CPU without native bf16 matmuls ({cpu}); it runs, "
                    "but can be over 10x slower than float32 (use train.amp=auto or none)")
    return None
